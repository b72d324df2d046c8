"""Sans-IO RS256 JSON Web Tokens for OpenZiti one-time enrollment (RFC 7515/7519 compact form).

Only `RS256` (RSASSA-PKCS1-v1_5 with SHA-256) is produced or accepted: libziti 0.29.3 verifies
the enrollment JWT with the controller's RSA TLS key (openziti-protocol.md §1.1, §5.1), and
accepting anything else (`none`, HS256 with the public key as secret, ...) is the classic
JWT confusion attack. Time is a parameter (`now`, seconds since the epoch).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tunneler.errors import EnrollmentError

ALGORITHM = "RS256"
LEEWAY_SECONDS = 60
MAX_TOKEN_BYTES = 16384
ENROLLMENT_CLAIMS = ("em", "iss", "sub", "jti", "exp")


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise EnrollmentError("malformed JWT: bad base64url segment") from exc


def _json_segment(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64url_decode(text))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EnrollmentError(f"malformed JWT: {what} is not JSON") from exc
    if not isinstance(value, dict):
        raise EnrollmentError(f"malformed JWT: {what} is not a JSON object")
    return value


def encode(claims: Mapping[str, Any], key: rsa.RSAPrivateKey) -> str:
    """Sign `claims` and return the compact JWS `header.claims.signature`.

    Args:
        claims: JSON-serialisable claims.
        key: RSA private key (the controller's TLS server key for enrollment tokens).
    """
    header = {"alg": ALGORITHM, "typ": "JWT"}
    signing_input = ".".join(_b64url_encode(json.dumps(part, separators=(",", ":")).encode())
                             for part in (header, claims))
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url_encode(signature)}"


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a token into (header, claims) without checking anything but its syntax.

    Raises:
        EnrollmentError: the token is not a well-formed compact JWS.
    """
    text = token.strip()
    if len(text) > MAX_TOKEN_BYTES:
        raise EnrollmentError("malformed JWT: token too long")
    parts = text.split(".")
    if len(parts) != 3:
        raise EnrollmentError("malformed JWT: expected three dot-separated segments")
    return _json_segment(parts[0], "header"), _json_segment(parts[1], "claims")


def verify(
    token: str,
    key: rsa.RSAPublicKey,
    *,
    now: float,
    required: Iterable[str] = ENROLLMENT_CLAIMS,
    leeway: float = LEEWAY_SECONDS,
) -> dict[str, Any]:
    """Verify an RS256 token and return its claims.

    Args:
        token: compact JWS (surrounding whitespace is ignored).
        key: the RSA public key that must have signed it.
        now: current time, seconds since the epoch.
        required: claims that must be present.
        leeway: clock skew tolerated on `exp` and `nbf`, in seconds.

    Raises:
        EnrollmentError: malformed, wrong algorithm, bad signature, expired, or missing claims.
    """
    header, claims = decode_unverified(token)
    if header.get("alg") != ALGORITHM:
        raise EnrollmentError(f"JWT algorithm {header.get('alg')!r} refused; only RS256 accepted")
    signing_input, _, signature = token.strip().rpartition(".")
    try:
        key.verify(
            _b64url_decode(signature), signing_input.encode("ascii"), padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except (InvalidSignature, UnicodeEncodeError) as exc:
        raise EnrollmentError("JWT signature does not verify") from exc
    missing = [name for name in required if name not in claims]
    if missing:
        raise EnrollmentError(f"JWT lacks required claims: {', '.join(missing)}")
    _check_times(claims, now, leeway)
    return claims


def _check_times(claims: Mapping[str, Any], now: float, leeway: float) -> None:
    for name in ("exp", "nbf"):
        value = claims.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise EnrollmentError(f"JWT claim {name!r} must be a number")
    exp = claims.get("exp")
    if exp is not None and now > exp + leeway:
        raise EnrollmentError("JWT has expired")
    nbf = claims.get("nbf")
    if nbf and now + leeway < nbf:
        raise EnrollmentError("JWT is not valid yet")
