"""OIDC tokens as OpenZiti issues them (ziti `common/oidc_tokens.go`): claims, signing, checks.

Pure functions (time is a parameter) shared by the controller, which issues and checks tokens,
the router, which checks access tokens in channel Hello and UpdateToken, and the client, which
reads their expiry. Tokens are RS256 JWTs signed with the controller's TLS key; `kid` names the
key (base64url SHA-256 of its SubjectPublicKeyInfo) and the JWKS publishes it.

Access tokens (`z_t` = "a") carry the API session (`z_asid`), the config types (`z_ct`) and the
fingerprints of the client certificates allowed to present them (`z_cfs`: lowercase hex SHA-1
of the DER certificate); refresh tokens (`z_t` = "r") carry the same session. Audience
"openziti" (or the legacy "native").
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tunneler import jwt
from tunneler.errors import TokenError

AUDIENCE = "openziti"
AUDIENCES = (AUDIENCE, "native")
CLIENT_IDS = AUDIENCES
TYPE_ACCESS = "a"
TYPE_REFRESH = "r"
SCOPES = ("openid", "offline_access")
LEEWAY_SECONDS = 5.0  # access tokens are short; skew is a controller-router matter, one host


@dataclass(frozen=True)
class SessionClaims:
    """What a checked access or refresh token says."""

    api_session_id: str
    identity_id: str
    fingerprints: frozenset[str]
    config_types: tuple[str, ...]
    expires_at: float
    token_type: str


def key_id(public_key: rsa.RSAPublicKey) -> str:
    """The `kid` of the signing key: base64url SHA-256 of its SubjectPublicKeyInfo."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def jwks(public_key: rsa.RSAPublicKey) -> dict[str, Any]:
    """The JSON Web Key Set that publishes `public_key`."""
    numbers = public_key.public_numbers()

    def b64(value: int) -> str:
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return {"keys": [{"kty": "RSA", "use": "sig", "alg": jwt.ALGORITHM,
                      "kid": key_id(public_key), "n": b64(numbers.n), "e": b64(numbers.e)}]}


def issue(token_type: str, key: rsa.RSAPrivateKey, *, issuer: str, identity_id: str,
          api_session_id: str, fingerprints: Iterable[str], config_types: Iterable[str],
          lifetime: float, now: float, extra: Mapping[str, Any] | None = None) -> str:
    """A signed access (`TYPE_ACCESS`) or refresh (`TYPE_REFRESH`) token."""
    fingerprint_list = sorted(fingerprints)
    claims: dict[str, Any] = {
        "iss": issuer, "sub": identity_id, "aud": [AUDIENCE], "azp": AUDIENCE,
        "client_id": AUDIENCE, "exp": int(now + lifetime), "iat": int(now), "nbf": int(now),
        "jti": str(uuid.uuid4()), "scopes": list(SCOPES), "z_t": token_type,
        "z_asid": api_session_id, "z_ct": list(config_types), "z_cfs": fingerprint_list,
        "z_acf": fingerprint_list[0] if fingerprint_list else "",
        "z_authid": fingerprint_list[0] if fingerprint_list else "",
        "z_ice": True, "z_cer": False, "z_ckrr": False, "z_iccc": False,
        "z_sdk": None, "z_env": None, "z_ra": "",
        **(extra or {}),
    }
    return jwt.encode(claims, key, kid=key_id(key.public_key()))


def verify(token: str, key: rsa.RSAPublicKey, *, token_type: str, now: float,
           issuer: str | None = None, leeway: float = LEEWAY_SECONDS) -> SessionClaims:
    """Check a token's signature, audience, type, expiry (and issuer when given).

    Raises:
        TokenError: with `expired` set when that is the only problem.
    """
    try:
        claims = jwt.verify(token, key, now=now, required=("sub", "exp", "z_t"), leeway=leeway,
                            audience=AUDIENCES, issuer=issuer, error=TokenError)
    except TokenError as exc:
        if str(exc) == jwt.EXPIRED:
            raise TokenError("token expired", expired=True) from exc
        raise TokenError(f"token is invalid: {exc}") from exc
    if claims.get("z_t") != token_type:
        raise TokenError(f"token is invalid: type {claims.get('z_t')!r}, not {token_type!r}")
    session, fingerprints = claims.get("z_asid"), claims.get("z_cfs") or []
    if not isinstance(session, str) or not session or not isinstance(fingerprints, list):
        raise TokenError("token is invalid: no API session or certificate fingerprints")
    expires_at = claims["exp"]
    config_types = claims.get("z_ct") or []
    return SessionClaims(session, str(claims["sub"]), frozenset(str(f) for f in fingerprints),
                         tuple(str(c) for c in config_types) if isinstance(config_types, list)
                         else (), float(expires_at), token_type)


def looks_like_jwt(token: str) -> bool:
    """OpenZiti's rule for a Hello token: JWTs start with "ey"; anything else is legacy."""
    return token.startswith("ey")


def expiry_of(token: str) -> float | None:
    """The `exp` of a token, unverified (the client schedules refreshes from it)."""
    try:
        _, claims = jwt.decode_unverified(token, error=TokenError)
    except TokenError:
        return None
    exp = jwt.numeric_claim(claims, "exp")
    return None if exp is None else float(exp)
