"""The authorization-code-with-PKCE flow of the embedded controller's OIDC provider (sans-IO).

As OpenZiti's controller (zitadel `op`, `controller/oidc_auth`) and as libziti 1.x drives it
(openziti-current.md §1.2):

1. `POST|GET /oidc/authorize` with client_id, response_type=code, redirect_uri (a loopback
   http URL), code_challenge + S256, state, scope ⊇ openid → `begin()` makes an auth request
   and the answer redirects to the login page with `authRequestID`;
2. `POST /oidc/login/cert?id=…` over mutual TLS → `authenticate()` binds the request to the
   identity of the presented certificate;
3. `GET /oidc/authorize/callback?id=…` → `code_for()` redirects to redirect_uri with `state`
   and a one-time `code` (`code` last: libziti takes everything after `code=`);
4. `POST /oidc/oauth/token` grant_type=authorization_code with code_verifier →
   `redeem()` checks PKCE, client and redirect_uri, once.

Pending requests and codes live in memory, bounded (`MAX_PENDING`, oldest dropped first) and
short-lived (`REQUEST_SECONDS`, `CODE_SECONDS`); a controller restart only makes clients start
the flow again. Time is a parameter.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from tunneler.errors import OidcError
from tunneler.oidctokens import CLIENT_IDS

REQUEST_SECONDS = 300.0
CODE_SECONDS = 60.0
MAX_PENDING = 1024
MAX_PARAM = 512
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class AuthRequest:
    """One pending authorization."""

    id: str
    client_id: str
    redirect_uri: str
    state: str
    code_challenge: str
    created_at: float
    identity_id: str | None = None
    fingerprint: str | None = None
    client_info: Mapping[str, Any] | None = None  # sdkInfo/envInfo from the login body


class AuthFlow:
    """Pending auth requests and issued codes of one controller."""

    def __init__(self) -> None:
        self._requests: OrderedDict[str, AuthRequest] = OrderedDict()
        self._codes: OrderedDict[str, tuple[AuthRequest, float]] = OrderedDict()

    def begin(self, params: Mapping[str, str], now: float) -> AuthRequest:
        """Validate an authorization request and remember it.

        Raises:
            OidcError: a parameter is missing or not acceptable.
        """
        values = {name: _param(params, name) for name in (
            "client_id", "response_type", "redirect_uri", "code_challenge",
            "code_challenge_method", "state", "scope")}
        if values["client_id"] not in CLIENT_IDS:
            raise OidcError("invalid_client", f"unknown client_id {values['client_id']!r}")
        if values["response_type"] != "code":
            raise OidcError("unsupported_response_type", "only response_type=code is supported")
        if values["code_challenge_method"] != "S256" or not values["code_challenge"]:
            raise OidcError("invalid_request", "PKCE with code_challenge_method=S256 is required")
        if "openid" not in values["scope"].split():
            raise OidcError("invalid_scope", "scope must include openid")
        _check_redirect(values["redirect_uri"])
        self._expire(now)
        request = AuthRequest(secrets.token_urlsafe(24), values["client_id"],
                              values["redirect_uri"], values["state"],
                              values["code_challenge"], now)
        self._requests[request.id] = request
        _cap(self._requests)
        return request

    def authenticate(self, request_id: str, identity_id: str, fingerprint: str,
                     client_info: Mapping[str, Any] | None, now: float) -> AuthRequest:
        """The login step: bind the request to the certificate's identity.

        Raises:
            OidcError: the request is unknown or expired.
        """
        request = self._pending(request_id, now)
        request = replace(request, identity_id=identity_id, fingerprint=fingerprint,
                          client_info=client_info)
        self._requests[request_id] = request
        return request

    def code_for(self, request_id: str, now: float) -> tuple[AuthRequest, str]:
        """The callback step: a one-time code for an authenticated request (which ends).

        Raises:
            OidcError: unknown, expired or not yet authenticated.
        """
        request = self._pending(request_id, now)
        if request.identity_id is None:
            raise OidcError("access_denied", "the authorization request was not authenticated")
        del self._requests[request_id]
        code = secrets.token_urlsafe(32)
        self._codes[code] = (request, now)
        _cap(self._codes)
        return request, code

    def redeem(self, code: str, verifier: str, client_id: str, redirect_uri: str,
               now: float) -> AuthRequest:
        """The token step: exchange a code (once) after checking PKCE and the client.

        Raises:
            OidcError: invalid_grant for an unknown, used, expired or mismatched code.
        """
        self._expire(now)
        entry = self._codes.pop(code, None)
        if entry is None:
            raise OidcError("invalid_grant", "the code is unknown, used or expired")
        request, _ = entry
        if client_id and client_id != request.client_id:
            raise OidcError("invalid_grant", "the code was issued to another client")
        if redirect_uri and redirect_uri != request.redirect_uri:
            raise OidcError("invalid_grant", "redirect_uri differs from the authorization's")
        if not hmac.compare_digest(_challenge(verifier), request.code_challenge):
            raise OidcError("invalid_grant", "code_verifier does not match the code_challenge")
        return request

    def _pending(self, request_id: str, now: float) -> AuthRequest:
        self._expire(now)
        request = self._requests.get(request_id)
        if request is None:
            raise OidcError("invalid_request", "the authorization request is unknown or expired")
        return request

    def _expire(self, now: float) -> None:
        while self._requests and now - next(iter(self._requests.values())).created_at > \
                REQUEST_SECONDS:
            self._requests.popitem(last=False)
        while self._codes and now - next(iter(self._codes.values()))[1] > CODE_SECONDS:
            self._codes.popitem(last=False)


def _param(params: Mapping[str, str], name: str) -> str:
    value = params.get(name, "")
    if len(value) > MAX_PARAM:
        raise OidcError("invalid_request", f"{name} is longer than {MAX_PARAM} characters")
    return value


def _check_redirect(uri: str) -> None:
    """Native clients redirect to a loopback listener (RFC 8252 §7.3); nothing else."""
    parts = urlsplit(uri)
    if parts.scheme != "http" or parts.hostname not in _LOOPBACK_HOSTS or parts.fragment:
        raise OidcError("invalid_request", "redirect_uri must be an http URL on loopback")


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _cap(table: OrderedDict[str, Any]) -> None:
    while len(table) > MAX_PENDING:
        table.popitem(last=False)
