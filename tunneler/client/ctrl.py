"""Edge Client API v1 client, as libziti 1.x uses it: OIDC sessions when offered, else legacy.

`GET /version` decides (as libziti ≥ 1.9.5): with `OIDC_AUTH` in `capabilities` and an
`edge-oidc` v1 API, authenticate with OIDC (`client.oidc`) and send `Authorization: Bearer`;
otherwise `POST /authenticate?method=cert` and send `zt-session`. Lists are paged until
`totalCount`; an UNAUTHORIZED-class error re-authenticates once. Several controllers (the
identity's `ztAPIs`, then what `GET /controllers` lists) are tried in turn when one is
unreachable. Works against the embedded controller and a real OpenZiti one.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from tunneler import __version__
from tunneler.client.oidc import OidcClient, Tokens
from tunneler.configs import HOST_V1, INTERCEPT_V1, TUNNELER_CLIENT_V1, TUNNELER_SERVER_V1
from tunneler.errors import ControllerError, NotAuthorized
from tunneler.identity import Identity
from tunneler.log import get_logger

log = get_logger("ctrl")

DEFAULT_CONFIG_TYPES = (INTERCEPT_V1, HOST_V1, TUNNELER_CLIENT_V1, TUNNELER_SERVER_V1)
NOT_AUTHORIZED_CODES = frozenset({"UNAUTHORIZED", "INVALID_AUTH", "INVALID_AUTHENTICATION",
                                  "REQUIRES_CERT_AUTH"})
PAGE_SIZE = 25
MAX_PAGES = 400
REQUEST_TIMEOUT = 15.0
OIDC_CAPABILITY = "OIDC_AUTH"
UNAVAILABLE = "CONTROLLER_UNAVAILABLE"
AUTH_LEGACY = "legacy"
AUTH_OIDC = "oidc"


@dataclass(frozen=True)
class ApiSession:
    """The current API session (its token goes in `zt-session` and the channel Hello)."""

    id: str
    token: str
    identity_id: str
    identity_name: str
    expires_at: datetime.datetime | None


@dataclass(frozen=True)
class EdgeRouterRef:
    """An edge router reachable over a TLS channel."""

    name: str
    url: str

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of `tls://host:port`."""
        parts = urlsplit(self.url)
        if parts.hostname is None or parts.port is None:
            raise ControllerError("INVALID_ROUTER_URL", f"edge router URL {self.url!r} is invalid")
        return parts.hostname, parts.port


@dataclass(frozen=True)
class ServiceInfo:
    """A service as listed for the current identity."""

    id: str
    name: str
    permissions: frozenset[str]
    encryption_required: bool
    configs: dict[str, Any] = field(hash=False, compare=True)
    updated_at: str = ""


@dataclass(frozen=True)
class SessionRef:
    """A Dial or Bind session: its token authorises Connect/Bind at the listed routers."""

    id: str
    token: str
    kind: str
    service_id: str
    edge_routers: tuple[EdgeRouterRef, ...]


def parse_time(value: Any) -> datetime.datetime | None:
    """Parse the controller's `2022-07-22T14:57:03.123456Z` timestamps (None if absent/bad)."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _routers(items: Any) -> tuple[EdgeRouterRef, ...]:
    refs = []
    for item in items or []:
        urls = {**(item.get("urls") or {}), **(item.get("supportedProtocols") or {})}
        if isinstance(urls.get("tls"), str):
            refs.append(EdgeRouterRef(str(item.get("name", "")), urls["tls"]))
    return tuple(refs)


def _service(item: dict[str, Any]) -> ServiceInfo:
    return ServiceInfo(
        id=str(item["id"]), name=str(item["name"]),
        permissions=frozenset(str(p) for p in item.get("permissions") or []),
        encryption_required=bool(item.get("encryptionRequired", True)),
        configs=dict(item.get("config") or {}), updated_at=str(item.get("updatedAt", "")))


class ControllerClient:
    """One identity's conversation with its controller(s)."""

    def __init__(self, identity: Identity,
                 config_types: Sequence[str] = DEFAULT_CONFIG_TYPES) -> None:
        self._identity = identity
        self._config_types = list(config_types)
        self._bases = [url.rstrip("/") for url in identity.controllers]
        self._current = 0
        self._prefix: str | None = None
        self._http: aiohttp.ClientSession | None = None
        self._oidc: OidcClient | None = None
        self._tokens: Tokens | None = None
        self.api_session: ApiSession | None = None
        self.controller_version = ""
        self.capabilities: frozenset[str] = frozenset()
        self.auth_method = AUTH_LEGACY

    async def __aenter__(self) -> ControllerClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @property
    def _base(self) -> str:
        return self._bases[self._current]

    @property
    def controllers(self) -> tuple[str, ...]:
        """Every controller URL known (the one in use first)."""
        return (self._base, *(b for b in self._bases if b != self._base))

    @property
    def token_expires_at(self) -> float | None:
        """The OIDC access token's expiry (epoch seconds); None with legacy sessions."""
        return self._tokens.expires_at if self._tokens is not None else None

    @property
    def tokens(self) -> Tokens | None:
        """The OIDC tokens of the API session (None with legacy sessions)."""
        return self._tokens

    def restore(self, auth_method: str, session: ApiSession, tokens: Tokens | None) -> None:
        """Take up an API session saved by an earlier run (`resume()` checks it later)."""
        self.auth_method, self.api_session, self._tokens = auth_method, session, tokens

    async def resume(self) -> ApiSession:
        """Check a restored API session with the controller: kept alive when still good,
        else replaced by a new login.

        Raises:
            ControllerError: the controller is unreachable or refused us.
        """
        await self.version()
        return await self.refresh_api_session()

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            connector = aiohttp.TCPConnector(ssl=self._identity.client_ssl_context(), limit=4)
            self._http = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
                headers={"Accept": "application/json"})
        return self._http

    async def close(self) -> None:
        """Close the HTTP connections (the API session stays valid until it expires)."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _raw(self, method: str, path: str, *, body: Any = None,
                   params: Any = None, auth: bool = True) -> Any:
        headers = {}
        if auth and self.api_session is not None:
            if self.auth_method == AUTH_OIDC:
                headers["Authorization"] = f"Bearer {self.api_session.token}"
            else:
                headers["zt-session"] = self.api_session.token
        url = f"{self._base}{self._prefix or ''}{path}"
        try:
            async with self._session().request(method, url, json=body, params=params,
                                               headers=headers) as response:
                payload = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ControllerError(UNAVAILABLE, f"{method} {path}: {exc}") from exc
        except ValueError as exc:
            raise ControllerError("INVALID_CONTROLLER_RESPONSE", f"{method} {path}: {exc}") from exc
        if not isinstance(payload, dict):
            raise ControllerError("INVALID_CONTROLLER_RESPONSE", f"{method} {path}: not an object")
        error = payload.get("error")
        if isinstance(error, dict):
            code, message = str(error.get("code", "")), str(error.get("message", ""))
            cls = NotAuthorized if code in NOT_AUTHORIZED_CODES else ControllerError
            raise cls(code, message, status)
        return payload

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        if self._prefix is None or self.api_session is None:
            await self.authenticate()
        try:
            return await self._raw(method, path, **kwargs)
        except NotAuthorized:
            log.info("ctrl.reauthenticating", path=path)
        except ControllerError as exc:
            if exc.code != UNAVAILABLE or len(self._bases) < 2:
                raise
            log.warning("ctrl.controller_unavailable", controller=self._base, error=str(exc))
            self._current = (self._current + 1) % len(self._bases)
        await self.authenticate()
        return await self._raw(method, path, **kwargs)

    async def version(self) -> str:
        """`GET /version` of the first controller that answers (from the one in use); sets the
        API path prefix, the capabilities and the authentication method."""
        error: ControllerError | None = None
        for step in range(len(self._bases)):
            self._current = (self._current + step) % len(self._bases) if step else self._current
            try:
                data = (await self._raw("GET", "/version", auth=False)).get("data") or {}
            except ControllerError as exc:
                if exc.code != UNAVAILABLE:
                    raise
                error = exc
                continue
            self._apply_version(data)
            return self.controller_version
        assert error is not None
        raise error

    def _apply_version(self, data: dict[str, Any]) -> None:
        apis = data.get("apiVersions") or {}
        path = ((apis.get("edge") or {}).get("v1") or {}).get("path")
        self._prefix = path if isinstance(path, str) else ""
        self.controller_version = str(data.get("version", ""))
        capabilities = data.get("capabilities")
        self.capabilities = frozenset(str(c) for c in capabilities) \
            if isinstance(capabilities, list) else frozenset()
        oidc = (apis.get("edge-oidc") or {}).get("v1") or {}
        urls = [u for u in oidc.get("apiBaseUrls") or [] if isinstance(u, str)]
        oidc_path = oidc.get("path")
        provider = (urls[0] if urls else self._base + (
            oidc_path if isinstance(oidc_path, str) else "/oidc")) if oidc else None
        method = AUTH_OIDC if OIDC_CAPABILITY in self.capabilities and provider else AUTH_LEGACY
        if method == AUTH_OIDC and (self._oidc is None or self._oidc.provider != provider):
            assert provider is not None
            self._oidc = OidcClient(self._session(), provider)
        if method != self.auth_method:
            log.info("ctrl.auth_method", controller=self._base, method=method)
            self.auth_method = method

    async def authenticate(self) -> ApiSession:
        """A new API session: OIDC when the controller offers it, else the legacy cert login."""
        await self.version()
        self.api_session = self._tokens = None
        if self.auth_method == AUTH_OIDC:
            assert self._oidc is not None
            self._set_tokens(await self._oidc.login())
            me = await self._raw("GET", "/current-identity")
            assert self.api_session is not None
            self.api_session = ApiSession(self.api_session.id, self.api_session.token,
                                          self.api_session.identity_id,
                                          str((me.get("data") or {}).get("name", "")),
                                          self.api_session.expires_at)
        else:
            await self._legacy_login()
        assert self.api_session is not None
        log.info("ctrl.authenticated", identity=self.api_session.identity_name,
                 controller=self._base, method=self.auth_method)
        return self.api_session

    def _set_tokens(self, tokens: Tokens) -> None:
        self._tokens = tokens
        name = self.api_session.identity_name if self.api_session is not None else ""
        self.api_session = ApiSession(
            tokens.api_session_id, tokens.access, tokens.identity_id, name,
            datetime.datetime.fromtimestamp(tokens.expires_at, datetime.UTC))

    async def _legacy_login(self) -> None:
        body = {"sdkInfo": {"type": "tunneler", "version": __version__},
                "envInfo": {"os": "Linux"}, "configTypes": self._config_types}
        data = (await self._raw("POST", "/authenticate", body=body,
                                params={"method": "cert"}, auth=False))["data"]
        identity = data.get("identity") or {}
        self.api_session = ApiSession(
            id=str(data.get("id", "")), token=str(data["token"]),
            identity_id=str(identity.get("id", data.get("identityId", ""))),
            identity_name=str(identity.get("name", "")),
            expires_at=parse_time(data.get("expiresAt")))

    async def refresh_api_session(self) -> ApiSession:
        """Keep the API session alive: an OIDC token refresh (a new login when the refresh
        token is no longer good), or `GET /current-api-session` for a legacy session.

        Raises:
            ControllerError: the controller is unreachable (the session may still be valid).
        """
        if self.auth_method == AUTH_OIDC and self._tokens is not None:
            assert self._oidc is not None
            try:
                self._set_tokens(await self._oidc.refresh(self._tokens))
            except NotAuthorized as exc:
                log.info("ctrl.oidc_refresh_refused", reason=str(exc))
                return await self.authenticate()
            assert self.api_session is not None
            return self.api_session
        data = (await self._call("GET", "/current-api-session"))["data"]
        assert self.api_session is not None
        self.api_session = ApiSession(self.api_session.id, self.api_session.token,
                                      self.api_session.identity_id,
                                      self.api_session.identity_name,
                                      parse_time(data.get("expiresAt")))
        return self.api_session

    # -- certificate renewal ---------------------------------------------------------------
    async def authenticator_id(self) -> str:
        """The id of the authenticator holding our current certificate.

        Raises:
            ControllerError: the controller lists none for it.
        """
        fingerprint = self._identity.fingerprint
        for item in await self._paged("/current-identity/authenticators"):
            if item.get("fingerprint") == fingerprint and isinstance(item.get("id"), str):
                return str(item["id"])
        raise ControllerError("NO_AUTHENTICATOR", "the controller lists no authenticator for "
                              "our certificate")

    async def extend(self, authenticator_id: str, csr_pem: str) -> str:
        """`POST .../authenticators/{id}/extend`: a new certificate for our new key."""
        data = (await self._call("POST", f"/current-identity/authenticators/{authenticator_id}"
                                 "/extend", body={"clientCertCsr": csr_pem}))["data"]
        cert = data.get("clientCert") if isinstance(data, dict) else None
        if not isinstance(cert, str):
            raise ControllerError("INVALID_CONTROLLER_RESPONSE", "extend returned no certificate")
        return cert

    async def extend_verify(self, authenticator_id: str, cert_pem: str) -> None:
        """`POST .../extend-verify`: the new certificate replaces the old one."""
        await self._call("POST", f"/current-identity/authenticators/{authenticator_id}"
                         "/extend-verify", body={"clientCert": cert_pem})

    async def use_identity(self, identity: Identity) -> None:
        """Present `identity`'s (renewed) certificate from now on; the API session goes on."""
        self._identity = identity
        old, self._http = self._http, None
        if self._oidc is not None:
            self._oidc = OidcClient(self._session(), self._oidc.provider)
        if old is not None:
            await old.close()

    async def learn_controllers(self) -> tuple[str, ...]:
        """Add the controllers `GET /controllers` lists (HA) to those tried; best effort."""
        try:
            items = await self._paged("/controllers")
        except ControllerError as exc:
            log.debug("ctrl.controllers_unavailable", error=str(exc))
            return self.controllers
        for item in items:
            for address in ((item.get("apiAddresses") or {}).get("edge-client") or []):
                url = address.get("url") if isinstance(address, dict) else None
                if isinstance(url, str) and address.get("version") == "v1":
                    base = url.rstrip("/").removesuffix(self._prefix or "\0")
                    if base not in self._bases:
                        self._bases.append(base)
        return self.controllers

    async def _paged(self, path: str, params: Sequence[tuple[str, str]] = ()) -> list[Any]:
        items: list[Any] = []
        for _ in range(MAX_PAGES):
            query = [*params, ("limit", str(PAGE_SIZE)), ("offset", str(len(items)))]
            payload = await self._call("GET", path, params=query)
            page = payload.get("data") or []
            items.extend(page)
            total = ((payload.get("meta") or {}).get("pagination") or {}).get("totalCount")
            if not page or not isinstance(total, int) or len(items) >= total:
                return items
        raise ControllerError("TOO_MANY_PAGES", f"{path}: more than {MAX_PAGES} pages")

    async def edge_routers(self) -> list[EdgeRouterRef]:
        """The edge routers this identity may use."""
        return list(_routers(await self._paged("/current-identity/edge-routers")))

    async def services(self) -> list[ServiceInfo]:
        """Every service this identity may dial or bind, with configs of our config types."""
        # Asked for per request (as libziti 1.x): OIDC sessions carry no config types.
        query = [("configTypes", name) for name in self._config_types]
        return [_service(item) for item in await self._paged("/services", query)]

    async def service_updates(self) -> str | None:
        """`lastChangeAt` of the service list, or None when the controller lacks the endpoint."""
        try:
            data = (await self._call("GET", "/current-api-session/service-updates"))["data"]
        except ControllerError as exc:
            if exc.status == 404 or exc.code == "NOT_FOUND":
                return None
            raise
        value = data.get("lastChangeAt")
        return value if isinstance(value, str) else None

    async def create_session(self, service_id: str, kind: str) -> SessionRef:
        """`POST /sessions` for a Dial or Bind session."""
        data = (await self._call("POST", "/sessions",
                                 body={"serviceId": service_id, "type": kind}))["data"]
        return SessionRef(id=str(data.get("id", "")), token=str(data["token"]),
                          kind=str(data.get("type", kind)), service_id=service_id,
                          edge_routers=_routers(data.get("edgeRouters")))


