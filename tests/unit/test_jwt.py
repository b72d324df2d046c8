"""RS256 enrollment JWTs: round trip, tampering, expiry, algorithm confusion, bad syntax."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tunneler import jwt
from tunneler.errors import EnrollmentError

NOW = 1_700_000_000.0
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
CLAIMS = {"em": "ott", "iss": "https://ctrl:1280", "sub": "id1", "jti": "tok", "exp": NOW + 600,
          "aud": ""}


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_round_trip_returns_claims() -> None:
    token = jwt.encode(CLAIMS, KEY)
    assert jwt.verify(token, KEY.public_key(), now=NOW) == CLAIMS
    assert jwt.decode_unverified(token)[0] == {"alg": "RS256", "typ": "JWT"}


def test_trailing_newline_is_tolerated() -> None:
    assert jwt.verify(jwt.encode(CLAIMS, KEY) + "\n", KEY.public_key(), now=NOW)["jti"] == "tok"


def test_tampered_claims_are_refused() -> None:
    header, _, signature = jwt.encode(CLAIMS, KEY).split(".")
    forged = f"{header}.{_b64({**CLAIMS, 'sub': 'admin'})}.{signature}"
    with pytest.raises(EnrollmentError, match="signature"):
        jwt.verify(forged, KEY.public_key(), now=NOW)


def test_other_key_is_refused() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(EnrollmentError, match="signature"):
        jwt.verify(jwt.encode(CLAIMS, other), KEY.public_key(), now=NOW)


def test_expiry_with_leeway() -> None:
    token = jwt.encode(CLAIMS, KEY)
    assert jwt.verify(token, KEY.public_key(), now=NOW + 600 + 59)
    with pytest.raises(EnrollmentError, match="expired"):
        jwt.verify(token, KEY.public_key(), now=NOW + 600 + 61)


def test_not_before_in_the_future_is_refused() -> None:
    token = jwt.encode({**CLAIMS, "nbf": NOW + 3600}, KEY)
    with pytest.raises(EnrollmentError, match="not valid yet"):
        jwt.verify(token, KEY.public_key(), now=NOW)


@pytest.mark.parametrize("alg", ["none", "HS256", "ES256", None])
def test_other_algorithms_are_refused(alg: str | None) -> None:
    _, claims, signature = jwt.encode(CLAIMS, KEY).split(".")
    token = f"{_b64({'alg': alg, 'typ': 'JWT'})}.{claims}.{signature}"
    with pytest.raises(EnrollmentError, match="algorithm"):
        jwt.verify(token, KEY.public_key(), now=NOW)


def test_alg_none_with_empty_signature_is_refused() -> None:
    token = f"{_b64({'alg': 'none'})}.{_b64(CLAIMS)}."
    with pytest.raises(EnrollmentError):
        jwt.verify(token, KEY.public_key(), now=NOW)


def test_missing_required_claim() -> None:
    claims = {key: value for key, value in CLAIMS.items() if key != "jti"}
    with pytest.raises(EnrollmentError, match="jti"):
        jwt.verify(jwt.encode(claims, KEY), KEY.public_key(), now=NOW)


def test_non_numeric_exp_is_refused() -> None:
    with pytest.raises(EnrollmentError, match="number"):
        jwt.verify(jwt.encode({**CLAIMS, "exp": "soon"}, KEY), KEY.public_key(), now=NOW)


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!!.e30.x", "e30.bm90anNvbg.x",
                                   "W10.e30.x", "x" * 20000])
def test_malformed_tokens(token: str) -> None:
    with pytest.raises(EnrollmentError, match="malformed"):
        jwt.verify(token, KEY.public_key(), now=NOW)
