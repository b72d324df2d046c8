"""OIDC pieces without I/O: the PKCE authorization flow and the tokens (ziti's claims)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tunneler import oidctokens
from tunneler.controller import oidc_flow
from tunneler.controller.oidc_flow import AuthFlow
from tunneler.errors import OidcError, TokenError

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
VERIFIER = "a-verifier-with-enough-entropy-0123456789abcdef"
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(
    b"=").decode()
PARAMS = {"client_id": "openziti", "response_type": "code", "scope": "openid offline_access",
          "redirect_uri": "http://localhost:20314/auth/callback", "code_challenge": CHALLENGE,
          "code_challenge_method": "S256", "state": "s1"}


def _code(flow: AuthFlow, now: float = 100.0) -> str:
    request = flow.begin(PARAMS, now)
    flow.authenticate(request.id, "identity-1", "fp-1", None, now)
    return flow.code_for(request.id, now)[1]


def test_the_whole_flow_then_the_code_is_gone() -> None:
    flow = AuthFlow()
    code = _code(flow)
    auth = flow.redeem(code, VERIFIER, "openziti", PARAMS["redirect_uri"], 101.0)
    assert (auth.identity_id, auth.fingerprint, auth.state) == ("identity-1", "fp-1", "s1")
    with pytest.raises(OidcError, match="invalid_grant"):
        flow.redeem(code, VERIFIER, "openziti", PARAMS["redirect_uri"], 101.0)


@pytest.mark.parametrize(("change", "error"), [
    ({"client_id": "evil"}, "invalid_client"),
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"code_challenge": ""}, "invalid_request"),
    ({"scope": "offline_access"}, "invalid_scope"),
    ({"redirect_uri": "https://evil.example/callback"}, "invalid_request"),
    ({"redirect_uri": "http://evil.example/callback"}, "invalid_request"),
    ({"state": "x" * 600}, "invalid_request"),
])
def test_bad_authorization_requests_are_refused(change: dict[str, str], error: str) -> None:
    with pytest.raises(OidcError) as info:
        AuthFlow().begin({**PARAMS, **change}, 0.0)
    assert info.value.code == error


def test_pkce_client_and_redirect_must_match() -> None:
    for verifier, client, redirect in (("wrong", "openziti", PARAMS["redirect_uri"]),
                                       (VERIFIER, "native", PARAMS["redirect_uri"]),
                                       (VERIFIER, "openziti", "http://localhost:1/other")):
        flow = AuthFlow()
        with pytest.raises(OidcError, match="invalid_grant"):
            flow.redeem(_code(flow), verifier, client, redirect, 101.0)


def test_unauthenticated_requests_get_no_code_and_everything_expires() -> None:
    flow = AuthFlow()
    request = flow.begin(PARAMS, 0.0)
    with pytest.raises(OidcError, match="access_denied"):
        flow.code_for(request.id, 1.0)
    with pytest.raises(OidcError, match="unknown or expired"):
        flow.authenticate(request.id, "i", "f", None, oidc_flow.REQUEST_SECONDS + 1)
    code = _code(flow, now=1000.0)
    with pytest.raises(OidcError, match="invalid_grant"):
        flow.redeem(code, VERIFIER, "openziti", "", 1000.0 + oidc_flow.CODE_SECONDS + 1)


def test_pending_requests_are_bounded() -> None:
    flow = AuthFlow()
    first = flow.begin(PARAMS, 0.0)
    for _ in range(oidc_flow.MAX_PENDING):
        flow.begin(PARAMS, 0.0)
    with pytest.raises(OidcError):
        flow.authenticate(first.id, "i", "f", None, 0.0)


def _token(kind: str = oidctokens.TYPE_ACCESS, *, key: rsa.RSAPrivateKey = KEY,
           lifetime: float = 60.0) -> str:
    return oidctokens.issue(kind, key, issuer="https://ctrl:1280/oidc", identity_id="id-1",
                            api_session_id="as-1", fingerprints=("fp-1", "fp-2"),
                            config_types=("intercept.v1",), lifetime=lifetime, now=1000.0)


def test_access_tokens_carry_ziti_claims_and_verify() -> None:
    claims = oidctokens.verify(_token(), KEY.public_key(), token_type=oidctokens.TYPE_ACCESS,
                               now=1030.0, issuer="https://ctrl:1280/oidc")
    assert claims == oidctokens.SessionClaims("as-1", "id-1", frozenset({"fp-1", "fp-2"}),
                                              ("intercept.v1",), 1060.0, oidctokens.TYPE_ACCESS)
    header, body = oidctokens.jwt.decode_unverified(_token())
    assert header["kid"] == oidctokens.key_id(KEY.public_key())
    assert body["aud"] == ["openziti"] and body["z_t"] == "a" and body["z_cfs"] == ["fp-1", "fp-2"]
    assert oidctokens.jwks(KEY.public_key())["keys"][0]["kid"] == header["kid"]


@pytest.mark.parametrize(("token", "kind", "now", "expired"), [
    (_token(), oidctokens.TYPE_REFRESH, 1030.0, False),
    (_token(oidctokens.TYPE_REFRESH), oidctokens.TYPE_ACCESS, 1030.0, False),
    (_token(key=OTHER), oidctokens.TYPE_ACCESS, 1030.0, False),
    (_token(), oidctokens.TYPE_ACCESS, 1060.0 + oidctokens.LEEWAY_SECONDS + 1, True),
    ("not.a.jwt", oidctokens.TYPE_ACCESS, 1030.0, False),
])
def test_wrong_type_key_or_time_is_refused(token: str, kind: str, now: float,
                                           expired: bool) -> None:
    with pytest.raises(TokenError) as info:
        oidctokens.verify(token, KEY.public_key(), token_type=kind, now=now)
    assert info.value.expired is expired


def test_expiry_and_jwt_shape_helpers() -> None:
    assert oidctokens.expiry_of(_token()) == 1060.0
    assert oidctokens.expiry_of("garbage") is None
    assert oidctokens.looks_like_jwt(_token()) and not oidctokens.looks_like_jwt("9f7c-uuid")
