"""The controller's HTTPS Edge Client API v1 and OTT enrollment (aiohttp adapter).

Every endpoint is served at `/edge/client/v1/<path>` and at `/<path>` (openziti-protocol.md
§4.1). Every response has Content-Length and `ziti-instance-id`; errors use the OpenZiti error
envelope. Identity is proved by the TLS client certificate (verified against the network CA by
the TLS layer, then looked up by SHA-1 fingerprint); later calls carry the `zt-session` token.
"""

from __future__ import annotations

import base64
import json
import ssl
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import NameOID

from tunneler import oidctokens
from tunneler.controller import pki, views
from tunneler.controller.apierrors import (
    bad_request,
    challenge,
    error_response,
    not_found,
    unauthorized,
)
from tunneler.controller.csr import load_csr
from tunneler.controller.models import ApiSession, Authenticator, Identity, Service, iso_time
from tunneler.controller.oidc_api import OidcApi, OidcSettings
from tunneler.controller.paging import page, parse_name_filter, wanted_config_types
from tunneler.controller.store import Store
from tunneler.errors import ApiError, ConfigError, EnrollmentError, TokenError
from tunneler.handshake_guard import HandshakeGuard
from tunneler.httpserver import HttpListener, json_response
from tunneler.log import get_logger

log = get_logger("controller.api")

MAX_BODY_BYTES = 1 << 20
READ_HEADER_TIMEOUT = 5.0
TLS_HANDSHAKE_TIMEOUT = 10.0
SESSION_HEADER = "zt-session"
INSTANCE_HEADER = "ziti-instance-id"
PREFIXES = ("", views.API_PATH)
JSON_TYPES = frozenset({"application/json"})
CSR_TYPES = frozenset({"text/plain", "application/x-pem-file", "application/pkcs10"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ApiSettings:
    """What the API needs besides the store."""

    instance_id: str
    name: str
    controller_url: str
    trust_domain: str
    ca_cert: x509.Certificate
    ca_key: pki.PrivateKey
    server_cert: x509.Certificate
    oidc: OidcSettings | None = None  # None: legacy API sessions only (no OIDC_AUTH)
    client_cert_seconds: float = 365 * 86400.0  # lifetime of the client certificates issued


def _require_content_type(request: web.Request, accepted: frozenset[str]) -> None:
    if request.content_type not in accepted:
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", f"Content-Type must be one of "
                       f"{', '.join(sorted(accepted))}, not {request.content_type!r}")


def _bearer(request: web.Request) -> str | None:
    """The first `Authorization: Bearer` token that looks like a JWT (libziti may add
    external JWTs as further Authorization headers)."""
    for value in request.headers.getall("Authorization", []):
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and oidctokens.looks_like_jwt(token.strip()):
            return token.strip()
    return None


def _peer_fingerprint(request: web.Request) -> str | None:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return pki.fingerprint_der(der) if der else None


class ControllerApi:
    """The aiohttp application plus its HTTPS listener."""

    def __init__(self, store: Store, settings: ApiSettings, *, clock: Callable[[], float]) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._listener = HttpListener()
        self.guard = HandshakeGuard()   # sources that keep failing TLS are refused at accept
        self._oidc = None if settings.oidc is None else OidcApi(
            store, settings.oidc, clock=clock, fingerprint=_peer_fingerprint)

    # -- lifecycle ---------------------------------------------------------------------------

    def application(self) -> web.Application:
        """The aiohttp application with every route at both path prefixes."""
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._middleware])
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/version", self.get_version),
            ("GET", "/.well-known/est/cacerts", self.get_cacerts),
            ("POST", "/enroll", self.post_enroll),
            ("POST", "/authenticate", self.post_authenticate),
            ("GET", "/current-api-session", self.get_current_api_session),
            ("DELETE", "/current-api-session", self.delete_current_api_session),
            ("GET", "/current-identity", self.get_current_identity),
            ("GET", "/current-identity/edge-routers", self.get_edge_routers),
            ("GET", "/current-api-session/service-updates", self.get_service_updates),
            ("GET", "/services", self.get_services),
            ("POST", "/sessions", self.post_sessions),
            ("GET", "/sessions/{id}", self.get_session),
            ("GET", "/services/{id}/edge-routers", self.get_service_edge_routers),
            ("GET", "/external-jwt-signers", self.get_external_jwt_signers),
            ("GET", "/controllers", self.get_controllers),
            ("GET", "/current-identity/authenticators", self.get_authenticators),
            ("POST", "/current-identity/authenticators/{id}/extend", self.post_extend),
            ("POST", "/current-identity/authenticators/{id}/extend-verify",
             self.post_extend_verify),
        ]
        for prefix in PREFIXES:
            for method, path, handler in routes:
                app.router.add_route(method, prefix + path, handler)
        for method, path, handler in self._oidc.routes() if self._oidc else ():
            app.router.add_route(method, path, handler)
        return app

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext) -> int:
        """Listen on host:port (0 = ephemeral); returns the bound port."""
        bound = await self._listener.start(self.application(), host, port, ssl_context,
                                           keepalive_timeout=READ_HEADER_TIMEOUT,
                                           handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
                                           guard=self.guard)
        log.info("controller.api_started", host=host, port=bound)
        return bound

    async def close(self) -> None:
        """Stop listening and close open connections."""
        await self._listener.close()

    # -- middleware --------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = uuid.uuid4().hex
        try:
            if (request.content_length or 0) > MAX_BODY_BYTES:   # refused unread, any route
                raise ApiError(413, "REQUEST_TOO_LARGE",
                               f"request bodies are limited to {MAX_BODY_BYTES} bytes")
            response = await handler(request)
        except ApiError as exc:
            response = error_response(exc, request_id)
        except web.HTTPException as exc:
            code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
                    413: "REQUEST_TOO_LARGE"}.get(exc.status, "INVALID_REQUEST")
            response = error_response(ApiError(exc.status, code, exc.reason), request_id)
        except Exception:  # request boundary: answer with an envelope, keep serving
            log.exception("controller.request_crashed", path=request.path)
            response = error_response(ApiError(500, "UNHANDLED", "internal error"), request_id)
        response.headers[INSTANCE_HEADER] = self._settings.instance_id
        if response.status == 413:
            response.force_close()   # never linger reading the rest of an oversized body
        return response

    def _authenticated(self, request: web.Request) -> ApiSession:
        """The API session of a request: an OIDC bearer token or a legacy `zt-session`, either
        way presented with the client certificate it belongs to."""
        bearer = _bearer(request)
        if bearer is not None and self._settings.oidc is not None:
            session = self._bearer_session(bearer, self._settings.oidc)
        else:
            session = self._legacy_session(request.headers.get(SESSION_HEADER, ""))
        presented = _peer_fingerprint(request)
        if presented is None:
            raise unauthorized("a client certificate is required with an API session",
                               code="REQUIRES_CERT_AUTH")
        if presented not in session.fingerprints:
            raise unauthorized("client certificate does not belong to this API session")
        return session

    def _legacy_session(self, token: str) -> ApiSession:
        if not token:
            schemes = ("zt-session", "Bearer") if self._settings.oidc else ("zt-session",)
            raise unauthorized("no zt-session or bearer token; authenticate first",
                               challenges=tuple(challenge(scheme, "missing",
                                                          "no matching token was provided")
                                                for scheme in schemes))
        session = self._store.api_session(token)
        if session is None:
            raise unauthorized("no valid zt-session; authenticate again", challenges=(
                challenge("zt-session", "invalid", "token is invalid"),))
        return session

    def _bearer_session(self, token: str, oidc: OidcSettings) -> ApiSession:
        try:
            claims = oidctokens.verify(token, oidc.key.public_key(),
                                       token_type=oidctokens.TYPE_ACCESS, now=self._clock())
        except TokenError as exc:
            error = "expired" if exc.expired else "invalid"
            raise unauthorized(str(exc), challenges=(
                challenge("Bearer", error, "token expired" if exc.expired
                          else "token is invalid"),)) from exc
        session = self._store.api_session_by_id(claims.api_session_id)
        if session is None or session.identity_id != claims.identity_id:
            raise unauthorized("the API session of this token is gone", challenges=(
                challenge("Bearer", "invalid", "token is invalid"),))
        return session

    async def _read_json(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw.strip():
            return {}
        _require_content_type(request, JSON_TYPES)
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise bad_request("COULD_NOT_PARSE_BODY", "request body is not JSON") from exc
        except RecursionError as exc:
            raise bad_request("COULD_NOT_PARSE_BODY", "request body nests too deeply") from exc

    # -- enrollment --------------------------------------------------------------------------

    async def get_version(self, request: web.Request) -> web.Response:
        return json_response(views.envelope(views.version(
            self._settings.controller_url, oidc=self._settings.oidc is not None)))

    async def get_external_jwt_signers(self, request: web.Request) -> web.Response:
        return json_response(page(request.query, []))

    async def get_controllers(self, request: web.Request) -> web.Response:
        self._authenticated(request)
        settings = self._settings
        entry = views.controller(settings.instance_id, settings.name, settings.controller_url,
                                 pki.cert_pem(settings.server_cert).decode(),
                                 pki.fingerprint(settings.server_cert),
                                 oidc=settings.oidc is not None)
        return json_response(page(request.query, [entry]))

    async def get_cacerts(self, request: web.Request) -> web.Response:
        der = pki.pkcs7_certs_only([self._settings.ca_cert])
        text = base64.encodebytes(der)
        response = web.Response(body=text, content_type="application/pkcs7-mime")
        response.headers["Content-Transfer-Encoding"] = "base64"
        return response

    async def post_enroll(self, request: web.Request) -> web.Response:
        if request.query.get("method") != "ott":
            raise bad_request("INVALID_ENROLLMENT_METHOD", "only method=ott is supported")
        token = request.query.get("token", "")
        csr_pem = await request.read()
        _require_content_type(request, CSR_TYPES)
        try:
            if not token:
                raise EnrollmentError("missing enrollment token")
            # The token is checked first; the CSR is parsed only for a valid token, inside the
            # transaction, so a bad CSR leaves the token unused.
            identity, cert = self._store.consume_enrollment(token, lambda ident: self._issue(
                load_csr(csr_pem), ident))
        except EnrollmentError as exc:
            log.warning("controller.enrollment_refused", reason=str(exc))
            raise bad_request("INVALID_ENROLLMENT_TOKEN", str(exc)) from exc
        log.info("controller.identity_enrolled", identity=identity.name, identity_id=identity.id)
        if "application/x-pem-file" in request.headers.get("Accept", "") and \
                "json" not in request.headers.get("Accept", ""):
            return web.Response(body=cert.encode(), content_type="application/x-pem-file")
        return json_response(views.envelope({"cert": cert}))

    def _issue(self, csr: x509.CertificateSigningRequest, identity: Identity) -> tuple[str, str]:
        cert = pki.issue_client_cert(csr, identity.id, self._settings.trust_domain,
                                     self._settings.ca_cert, self._settings.ca_key,
                                     lifetime=self._settings.client_cert_seconds)
        return pki.fingerprint(cert), pki.cert_pem(cert).decode()

    # -- API sessions ------------------------------------------------------------------------

    async def post_authenticate(self, request: web.Request) -> web.Response:
        if request.query.get("method") != "cert":
            raise bad_request("INVALID_AUTH_METHOD", "only method=cert is supported")
        fingerprint = _peer_fingerprint(request)
        identity = self._store.identity_by_fingerprint(fingerprint) if fingerprint else None
        if fingerprint is None or identity is None:
            log.warning("controller.authentication_refused", fingerprint=fingerprint)
            raise unauthorized("no enrolled client certificate presented", code="INVALID_AUTH")
        body = await self._read_json(request)
        config_types = wanted_config_types(body.get("configTypes") if isinstance(body, dict)
                                           else None, ())
        session = self._store.create_api_session(identity, fingerprint, config_types)
        log.info("controller.api_session_created", identity=identity.name)
        return json_response(views.envelope(views.api_session(session, self._clock())))

    # -- certificate renewal (openziti-current.md §2.5) ---------------------------------------

    async def get_authenticators(self, request: web.Request) -> web.Response:
        session = self._authenticated(request)
        items = [views.authenticator(a) for a in self._store.authenticators(session.identity_id)]
        return json_response(page(request.query, items))

    def _own_authenticator(self, request: web.Request, session: ApiSession) -> Authenticator:
        """The caller's authenticator named in the path, presented with its current cert."""
        wanted = request.match_info["id"]
        found = next((a for a in self._store.authenticators(session.identity_id)
                      if a.id == wanted), None)
        if found is None:
            raise not_found("authenticator does not exist or belongs to another identity")
        if _peer_fingerprint(request) != found.fingerprint:
            raise unauthorized("present the certificate of the authenticator you extend")
        return found

    async def post_extend(self, request: web.Request) -> web.Response:
        session = self._authenticated(request)
        identity = self._identity(session)
        authenticator = self._own_authenticator(request, session)
        body = await self._read_json(request)
        csr_pem = body.get("clientCertCsr") if isinstance(body, dict) else None
        if not isinstance(csr_pem, str):
            raise bad_request("COULD_NOT_VALIDATE", "body must be {clientCertCsr: PEM}")
        try:
            csr = load_csr(csr_pem.encode())
        except EnrollmentError as exc:
            raise bad_request("INVALID_CSR", str(exc)) from exc
        names = [str(n.value) for n in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if any(name != identity.id for name in names):
            log.warning("controller.extend_refused", identity=identity.name, reason="csr_subject")
            raise bad_request("INVALID_CSR", "the CSR names another identity")
        fingerprint, cert = self._issue(csr, identity)
        self._store.set_pending_certificate(authenticator.id, fingerprint, cert)
        log.info("controller.certificate_extended", identity=identity.name,
                 authenticator=authenticator.id)
        ca = pki.cert_pem(self._settings.ca_cert).decode()
        return json_response(views.envelope({"clientCert": cert, "ca": ca}))

    async def post_extend_verify(self, request: web.Request) -> web.Response:
        session = self._authenticated(request)
        authenticator = self._own_authenticator(request, session)
        body = await self._read_json(request)
        cert = body.get("clientCert") if isinstance(body, dict) else None
        if not isinstance(cert, str):
            raise bad_request("COULD_NOT_VALIDATE", "body must be {clientCert: PEM}")
        try:
            self._store.verify_pending_certificate(authenticator.id, cert)
        except ConfigError as exc:
            raise bad_request("INVALID_CERT", str(exc)) from exc
        log.info("controller.certificate_renewed", identity=session.identity_name,
                 authenticator=authenticator.id)
        return json_response(views.envelope({}))

    async def get_current_api_session(self, request: web.Request) -> web.Response:
        session = self._authenticated(request)
        return json_response(views.envelope(views.api_session(session, self._clock())))

    async def delete_current_api_session(self, request: web.Request) -> web.Response:
        session = self._authenticated(request)
        self._store.delete_api_session(session.id)
        log.info("controller.api_session_deleted", identity=session.identity_name)
        return json_response(views.envelope({}))

    def _identity(self, session: ApiSession) -> Identity:
        identity = self._store.identity_by_id(session.identity_id)
        if identity is None:
            raise unauthorized("identity no longer exists")
        return identity

    async def get_current_identity(self, request: web.Request) -> web.Response:
        session = self._authenticated(request)
        identity = self._identity(session)
        return json_response(views.envelope(views.identity(identity, session.fingerprint)))

    async def get_edge_routers(self, request: web.Request) -> web.Response:
        self._authenticated(request)
        routers = [views.edge_router(router) for router in self._store.routers()]
        return json_response(page(request.query, routers))

    async def get_service_updates(self, request: web.Request) -> web.Response:
        self._authenticated(request)
        changed = iso_time(self._store.last_change_at())
        return json_response(views.envelope({"lastChangeAt": changed}))

    # -- services and sessions ---------------------------------------------------------------

    async def get_services(self, request: web.Request) -> web.Response:
        session = self._authenticated(request)
        identity = self._identity(session)
        name = parse_name_filter(request.query.get("filter"))
        config_types = wanted_config_types(request.query.getall("configTypes", []),
                                           session.config_types)
        visible = []
        for service in self._store.services():
            granted = self._store.permissions(identity, service)
            if granted.kinds and (name is None or service.name == name):
                visible.append(views.service(service, granted, config_types))
        return json_response(page(request.query, visible))

    def _visible_service(self, identity: Identity, service_id: str, kind: str | None = None
                         ) -> Service:
        """The service if this identity may use it (any permission, or `kind`); else 404."""
        service = self._store.service_by_id(service_id)
        kinds = self._store.permissions(identity, service).kinds if service is not None else ()
        if service is None or not kinds or (kind is not None and kind not in kinds):
            # One answer for "no such service" and "not permitted": ids are not probed.
            raise not_found(f"service {service_id!r} does not exist or this identity has no "
                            f"{kind or 'Dial or Bind'} permission for it")
        return service

    async def get_service_edge_routers(self, request: web.Request) -> web.Response:
        session = self._authenticated(request)
        self._visible_service(self._identity(session), request.match_info["id"])
        return json_response(views.envelope(views.service_edge_routers(self._store.routers())))

    async def get_session(self, request: web.Request) -> web.Response:
        api_session = self._authenticated(request)
        info = self._store.session_by_id(request.match_info["id"])
        if info is None or info.api_session_id != api_session.id:
            raise not_found("session does not exist or belongs to another API session")
        return json_response(views.envelope(views.session(info, self._store.routers(),
                                                          self._clock())))

    async def post_sessions(self, request: web.Request) -> web.Response:
        api_session = self._authenticated(request)
        body = await self._read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("serviceId"), str):
            raise bad_request("COULD_NOT_VALIDATE", "body must be {serviceId, type}")
        kind = body.get("type", "Dial")
        if kind not in ("Dial", "Bind"):
            raise bad_request("COULD_NOT_VALIDATE", "type must be Dial or Bind")
        identity = self._identity(api_session)
        try:
            service = self._visible_service(identity, body["serviceId"], kind)
        except ApiError:
            log.warning("controller.session_refused", identity=identity.name,
                        service_id=body["serviceId"], type=kind)
            raise
        routers = self._store.routers()
        if not routers:
            raise ApiError(503, "NO_EDGE_ROUTERS_AVAILABLE", "the network has no edge router")
        info = self._store.create_session(api_session, service, kind)
        log.info("controller.session_created", identity=identity.name, service=service.name,
                 type=kind)
        return json_response(views.envelope(views.session(info, routers, self._clock())),
                             status=201)
