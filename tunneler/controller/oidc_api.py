"""The embedded controller's OIDC endpoints under `/oidc` (aiohttp adapter of `oidc_flow`).

Discovery, authorize (PKCE), certificate login, the callback that hands out the code, the token
endpoint (`authorization_code` and `refresh_token` grants) and the JWKS, shaped as OpenZiti 2.x
serves them so libziti 1.x (≥ 1.9.5) authenticates with OIDC when `/version` offers
`OIDC_AUTH`. A code becomes an OIDC API session (store `AUTH_OIDC`) that lives as long as its
refresh token; access tokens name it (`z_asid`) and bind it to the client certificate
(`z_cfs`). Token-endpoint errors use the OAuth JSON shape (`error`, `error_description`).
"""

from __future__ import annotations

import html
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from tunneler import oidctokens
from tunneler.controller.models import ApiSession, Identity
from tunneler.controller.oidc_flow import AuthFlow, AuthRequest
from tunneler.controller.store import AUTH_OIDC, Store
from tunneler.errors import OidcError, TokenError
from tunneler.httpserver import json_response
from tunneler.log import get_logger

log = get_logger("controller.oidc")

PATH = "/oidc"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Fingerprint = Callable[[web.Request], str | None]


@dataclass(frozen=True)
class OidcSettings:
    """What the provider needs: where it is, how long tokens live, the signing key."""

    controller_url: str
    access_seconds: float
    refresh_seconds: float
    key: rsa.RSAPrivateKey

    def issuer(self, request: web.Request | None = None) -> str:
        """The issuer as the client addressed us (OpenZiti: one issuer per advertised host)."""
        host = request.host if request is not None and request.host else None
        return f"https://{host}{PATH}" if host else self.controller_url + PATH


class OidcApi:
    """The `/oidc` routes of one controller."""

    def __init__(self, store: Store, settings: OidcSettings, *, clock: Callable[[], float],
                 fingerprint: Fingerprint) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._fingerprint = fingerprint
        self._flow = AuthFlow()

    def routes(self) -> list[tuple[str, str, Handler]]:
        """(method, path, handler) for every OIDC endpoint."""
        return [
            ("GET", f"{PATH}/.well-known/openid-configuration", self.get_configuration),
            ("GET", f"{PATH}/authorize", self.authorize),
            ("POST", f"{PATH}/authorize", self.authorize),
            ("POST", f"{PATH}/login/cert", self.login_cert),
            ("GET", f"{PATH}/authorize/callback", self.callback),
            ("POST", f"{PATH}/oauth/token", self.token),
            ("GET", f"{PATH}/keys", self.keys),
        ]

    # -- discovery -------------------------------------------------------------------------------
    async def get_configuration(self, request: web.Request) -> web.Response:
        issuer = self._settings.issuer(request)
        return json_response({
            "issuer": issuer, "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/oauth/token", "jwks_uri": f"{issuer}/keys",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": list(oidctokens.SCOPES),
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_basic"],
            "openziti_endpoints": {"login_cert": f"{issuer}/login/cert"},
        })

    async def keys(self, request: web.Request) -> web.Response:
        return json_response(oidctokens.jwks(self._settings.key.public_key()))

    # -- authorization ---------------------------------------------------------------------------
    async def authorize(self, request: web.Request) -> web.Response:
        try:
            auth = self._flow.begin(request.query, self._clock())
        except OidcError as exc:
            return _oauth_error(exc)
        return _redirect(f"{PATH}/login/cert?authRequestID={auth.id}")

    async def login_cert(self, request: web.Request) -> web.Response:
        request_id = request.query.get("id") or request.query.get("authRequestID") or ""
        fingerprint = self._fingerprint(request)
        identity = self._store.identity_by_fingerprint(fingerprint) if fingerprint else None
        if fingerprint is None or identity is None:
            log.warning("controller.oidc_login_refused", fingerprint=fingerprint)
            return _oauth_error(OidcError("access_denied",
                                          "no enrolled client certificate presented"), 401)
        try:
            self._flow.authenticate(request_id, identity.id, fingerprint,
                                    await _client_info(request), self._clock())
        except OidcError as exc:
            return _oauth_error(exc)
        return _redirect(f"{PATH}/authorize/callback?id={request_id}")

    async def callback(self, request: web.Request) -> web.Response:
        try:
            auth, code = self._flow.code_for(request.query.get("id", ""), self._clock())
        except OidcError as exc:
            return _oauth_error(exc)
        separator = "&" if "?" in auth.redirect_uri else "?"
        query = urlencode({"state": auth.state, "code": code})  # code last: libziti reads to end
        return _redirect(f"{auth.redirect_uri}{separator}{query}")

    # -- tokens ----------------------------------------------------------------------------------
    async def token(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return _oauth_error(OidcError("invalid_request",
                                          "the body must be application/x-www-form-urlencoded"))
        form = await request.post()
        fields = {name: str(value) for name, value in form.items() if isinstance(value, str)}
        grant = fields.get("grant_type", "")
        try:
            if grant == "authorization_code":
                session, identity = self._redeem(fields, request)
            elif grant == "refresh_token":
                session, identity = self._refresh(fields, request)
            else:
                raise OidcError("unsupported_grant_type", f"grant_type {grant!r} is not supported")
        except OidcError as exc:
            log.info("controller.oidc_token_refused", grant=grant, reason=exc.description)
            return _oauth_error(exc)
        return json_response(self._tokens(session, identity, self._settings.issuer(request)))

    def _redeem(self, fields: dict[str, str], request: web.Request) -> tuple[ApiSession, Identity]:
        auth = self._flow.redeem(fields.get("code", ""), fields.get("code_verifier", ""),
                                 fields.get("client_id", ""), fields.get("redirect_uri", ""),
                                 self._clock())
        identity = self._identity_for(auth)
        presented = self._fingerprint(request)
        if presented is not None and presented != auth.fingerprint:
            raise OidcError("invalid_grant", "the code was issued to another certificate")
        assert auth.fingerprint is not None
        session = self._store.create_api_session(identity, auth.fingerprint, (),
                                                 method=AUTH_OIDC,
                                                 lifetime=self._settings.refresh_seconds)
        log.info("controller.api_session_created", identity=identity.name, method="oidc")
        return session, identity

    def _identity_for(self, auth: AuthRequest) -> Identity:
        identity = self._store.identity_by_id(auth.identity_id or "")
        if identity is None:
            raise OidcError("invalid_grant", "the identity no longer exists")
        return identity

    def _refresh(self, fields: dict[str, str], request: web.Request) -> tuple[ApiSession, Identity]:
        try:
            claims = oidctokens.verify(fields.get("refresh_token", ""),
                                       self._settings.key.public_key(),
                                       token_type=oidctokens.TYPE_REFRESH, now=self._clock())
        except TokenError as exc:
            raise OidcError("invalid_grant", str(exc)) from exc
        session = self._store.api_session_by_id(claims.api_session_id)
        identity = self._store.identity_by_id(claims.identity_id)
        if session is None or identity is None or session.identity_id != identity.id:
            raise OidcError("invalid_grant", "the API session of this refresh token is gone")
        if self._fingerprint(request) not in session.fingerprints:
            raise OidcError("invalid_grant", "refresh with a certificate of this API session")
        self._store.extend_api_session(session.id, self._settings.refresh_seconds)
        return session, identity

    def _tokens(self, session: ApiSession, identity: Identity, issuer: str) -> dict[str, Any]:
        settings, now = self._settings, self._clock()

        def issue(kind: str, lifetime: float, **extra: Any) -> str:
            return oidctokens.issue(kind, settings.key, issuer=issuer,
                                    identity_id=identity.id, api_session_id=session.id,
                                    fingerprints=session.fingerprints,
                                    config_types=session.config_types, lifetime=lifetime,
                                    now=now, extra=extra)

        return {
            "access_token": issue(oidctokens.TYPE_ACCESS, settings.access_seconds,
                                  name=identity.name),
            "token_type": "Bearer", "expires_in": int(settings.access_seconds),
            "refresh_token": issue(oidctokens.TYPE_REFRESH, settings.refresh_seconds),
            "id_token": issue("id", settings.access_seconds, name=identity.name),
            "scope": " ".join(oidctokens.SCOPES),
        }


async def _client_info(request: web.Request) -> dict[str, Any] | None:
    """The login body's sdkInfo/envInfo (optional JSON), kept small."""
    raw = await request.read()
    if not raw.strip() or len(raw) > 16384:
        return None
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return {key: body[key] for key in ("sdkInfo", "envInfo") if key in body} \
        if isinstance(body, dict) else None


def _redirect(location: str) -> web.Response:
    """A 302 as Go's http.Redirect writes it (a typed body: libziti notes a missing type)."""
    return web.Response(status=302, headers={"Location": location}, content_type="text/html",
                        text=f'<a href="{html.escape(location)}">Found</a>.\n')


def _oauth_error(error: OidcError, status: int = 400) -> web.Response:
    return json_response({"error": error.code, "error_description": error.description},
                         status=status)
