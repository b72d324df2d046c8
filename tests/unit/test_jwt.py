"""RS256 JWTs: round trip, tampering, expiry, algorithm confusion, bad syntax; the clock
checks against PyJWT's own with its clock frozen."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import itertools
import json
from collections.abc import Callable
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt import api_jwt

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


@pytest.mark.parametrize("value", [float("inf"), float("nan"), True, "1700000000", [1]])
def test_exp_and_nbf_must_be_finite_numbers(value: object) -> None:
    for name in ("exp", "nbf"):
        token = jwt.encode({**CLAIMS, name: value}, KEY)
        with pytest.raises(EnrollmentError, match="number"):
            jwt.verify(token, KEY.public_key(), now=NOW)


def test_audience_may_be_one_of_several() -> None:
    token = jwt.encode({**CLAIMS, "aud": ["native"]}, KEY)
    assert jwt.verify(token, KEY.public_key(), now=NOW, audience=("openziti", "native"))
    with pytest.raises(EnrollmentError, match=r"[Aa]udience"):
        jwt.verify(token, KEY.public_key(), now=NOW, audience="openziti")


# ---- the clock checks, differential against PyJWT ---------------------------------------------
# PyJWT reads the wall clock, so `jwt` checks exp/nbf itself against `now` (module docstring).
# Here PyJWT's clock is frozen at each `now` and both must reach the same verdict.

OFFSETS = (-2.0, -1.0, 0.0, 0.5, 1.0, 2.0)  # exp/nbf around NOW, a fractional one included
NOWS = (-61.0, -60.5, -60.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 60.0, 60.5, 61.0,
        62.5)


def _verdict(check: Callable[[], Any]) -> str:
    try:
        check()
    except (pyjwt.ExpiredSignatureError, pyjwt.ImmatureSignatureError) as exc:
        return "expired" if isinstance(exc, pyjwt.ExpiredSignatureError) else "not yet"
    except EnrollmentError as exc:
        return {jwt.EXPIRED: "expired", "JWT is not valid yet": "not yet"}[str(exc)]
    return "valid"


def test_clock_checks_agree_with_pyjwt(monkeypatch: pytest.MonkeyPatch) -> None:
    frozen: list[float] = [NOW]

    class FrozenDatetime(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> FrozenDatetime:
            return cls.fromtimestamp(frozen[0], tz)

    monkeypatch.setattr(api_jwt, "datetime", FrozenDatetime)
    public = KEY.public_key()
    verdicts: list[str] = []
    for exp, nbf in itertools.product((None, *OFFSETS), repeat=2):
        claims = {"sub": "id1", **({} if exp is None else {"exp": NOW + exp}),
                  **({} if nbf is None else {"nbf": NOW + nbf})}
        token = jwt.encode(claims, KEY)
        for leeway, now in itertools.product((0.0, 1.0, 60.0), NOWS):
            frozen[0] = NOW + now
            theirs = _verdict(functools.partial(pyjwt.decode, token, public, leeway=leeway,
                                                algorithms=["RS256"],
                                                options={"verify_iat": False}))
            ours = _verdict(functools.partial(jwt.verify, token, public, now=NOW + now,
                                              required=(), leeway=leeway))
            assert ours == theirs, (claims, leeway, now)
            verdicts.append(ours)
    assert len(verdicts) == 49 * 3 * len(NOWS)
    assert set(verdicts) == {"valid", "expired", "not yet"}
