"""RS256 JSON Web Tokens through PyJWT: the one-time enrollment JWT and the OIDC tokens.

Only `RS256` is produced or accepted: libziti verifies the enrollment JWT with the
controller's RSA TLS key (openziti-protocol.md §1.1, §5.1), the OIDC tokens are signed with the
same key, and accepting anything else (`none`, HS256 with the public key as secret, ...) is the
classic JWT confusion attack. PyJWT does the checking: the signature, the `algorithms`
allow-list, required claims (`options["require"]`), audience and issuer.

Time is a parameter (`now`, seconds since the epoch), so that the router, the controller and
the tests decide what "now" is. PyJWT has no clock parameter: it reads the wall clock itself
(`datetime.now()` inside `decode`), and no single `leeway` can stand in for another clock,
because `exp` and `nbf` would need it shifted in opposite directions. So PyJWT's clock checks
are switched off through its options (`verify_exp`, `verify_nbf`, `verify_iat`: False) and
`expired` / `not_yet_valid` apply PyJWT's own rules to `now`, with `LEEWAY_SECONDS` of skew:
expired when ``exp <= now - leeway``, not yet valid when ``nbf > now + leeway`` (both claims
taken as whole seconds, as PyJWT does). tests/unit/test_jwt.py checks them against PyJWT with
its clock frozen. `iat` is not checked (it says when, not from when; `nbf` says that).
Failures raise `error` (EnrollmentError by default) with a message saying what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.types import Options

from tunneler.errors import EnrollmentError, TunnelerError

ALGORITHM = "RS256"
LEEWAY_SECONDS = 60
MAX_TOKEN_BYTES = 16384
ENROLLMENT_CLAIMS = ("em", "iss", "sub", "jti", "exp")
EXPIRED = "JWT has expired"

_NO_CLOCK: Options = {"verify_exp": False, "verify_nbf": False, "verify_iat": False}


def encode(claims: Mapping[str, Any], key: rsa.RSAPrivateKey, *, kid: str | None = None) -> str:
    """Sign `claims` (RS256) and return the compact JWS; `kid` goes into the header."""
    headers = {"typ": "JWT", **({"kid": kid} if kid else {})}
    return pyjwt.encode(dict(claims), key, algorithm=ALGORITHM, headers=headers)


def decode_unverified(token: str, *, error: type[TunnelerError] = EnrollmentError,
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a token into (header, claims) without checking anything but its syntax.

    Raises:
        error: the token is not a well-formed compact JWS.
    """
    text = _checked_length(token, error)
    try:
        header = pyjwt.get_unverified_header(text)
        claims = pyjwt.decode(text, options={**_NO_CLOCK, "verify_signature": False})
    except pyjwt.PyJWTError as exc:
        raise error(f"malformed JWT: {exc}") from exc
    return header, claims


def verify(token: str, key: rsa.RSAPublicKey, *, now: float,
           required: Iterable[str] = ENROLLMENT_CLAIMS, leeway: float = LEEWAY_SECONDS,
           audience: str | Sequence[str] | None = None, issuer: str | None = None,
           error: type[TunnelerError] = EnrollmentError) -> dict[str, Any]:
    """Verify an RS256 token and return its claims.

    Args:
        token: compact JWS (surrounding whitespace is ignored).
        key: the RSA public key that must have signed it.
        now: current time, seconds since the epoch.
        required: claims that must be present.
        leeway: clock skew tolerated on `exp` and `nbf`, in seconds.
        audience: when given, `aud` must contain it (or one of them, for a sequence).
        issuer: when given, `iss` must equal it.
        error: the exception type raised.

    Raises:
        error: malformed, wrong algorithm, bad signature, wrong audience or issuer, expired,
            or missing claims.
    """
    text = _checked_length(token, error)
    header, _ = decode_unverified(text, error=error)  # syntax first: "malformed" says it best
    options: Options = {**_NO_CLOCK, "verify_aud": audience is not None,
                        "require": list(required)}
    try:
        claims: dict[str, Any] = pyjwt.decode(text, key, algorithms=[ALGORITHM],
                                              audience=audience, issuer=issuer, options=options)
    except pyjwt.InvalidAlgorithmError as exc:
        raise error(f"JWT algorithm {header.get('alg')!r} refused; only RS256 accepted") from exc
    except pyjwt.InvalidSignatureError as exc:
        raise error("JWT signature does not verify") from exc
    except pyjwt.MissingRequiredClaimError as exc:
        raise error(f"JWT lacks required claims: {exc.claim}") from exc
    except pyjwt.PyJWTError as exc:
        raise error(f"JWT refused: {exc}") from exc
    _check_times(claims, now, leeway, error)
    return claims


def _checked_length(token: str, error: type[TunnelerError]) -> str:
    text = token.strip()
    if len(text) > MAX_TOKEN_BYTES:
        raise error("malformed JWT: token too long")
    if text.count(".") != 2:
        raise error("malformed JWT: expected three dot-separated segments")
    return text


def numeric_claim(claims: Mapping[str, Any], name: str) -> float | None:
    """The claim `name` as a number; None when it is absent or not a finite number."""
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def expired(exp: float, now: float, leeway: float = LEEWAY_SECONDS) -> bool:
    """PyJWT's rule for `exp` (whole seconds), applied at `now`."""
    return int(exp) <= now - leeway


def not_yet_valid(nbf: float, now: float, leeway: float = LEEWAY_SECONDS) -> bool:
    """PyJWT's rule for `nbf` (whole seconds), applied at `now`."""
    return int(nbf) > now + leeway


def _check_times(claims: Mapping[str, Any], now: float, leeway: float,
                 error: type[TunnelerError]) -> None:
    for name in ("exp", "nbf"):  # stricter than PyJWT, which takes int("123") and True too
        if claims.get(name) is not None and numeric_claim(claims, name) is None:
            raise error(f"JWT claim {name!r} must be a number")
    exp, nbf = numeric_claim(claims, "exp"), numeric_claim(claims, "nbf")
    if nbf is not None and not_yet_valid(nbf, now, leeway):  # nbf first, as PyJWT does
        raise error("JWT is not valid yet")
    if exp is not None and expired(exp, now, leeway):
        raise error(EXPIRED)
