"""Edge Client API v1 client (legacy API sessions), as libziti 0.29.3 uses it.

Authenticates by client certificate (`POST /authenticate?method=cert`), sends `zt-session` on
every later call, pages lists until `totalCount`, and re-authenticates once on an
UNAUTHORIZED-class error. Works against the embedded controller and a real OpenZiti one.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from tunneler import __version__
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
    """One identity's conversation with its controller."""

    def __init__(self, identity: Identity,
                 config_types: Sequence[str] = DEFAULT_CONFIG_TYPES) -> None:
        self._identity = identity
        self._config_types = list(config_types)
        self._base = identity.ztapi.rstrip("/")
        self._prefix: str | None = None
        self._http: aiohttp.ClientSession | None = None
        self.api_session: ApiSession | None = None
        self.controller_version = ""

    async def __aenter__(self) -> ControllerClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

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
                   params: dict[str, Any] | None = None, auth: bool = True) -> Any:
        headers = {}
        if auth and self.api_session is not None:
            headers["zt-session"] = self.api_session.token
        url = f"{self._base}{self._prefix or ''}{path}"
        try:
            async with self._session().request(method, url, json=body, params=params,
                                               headers=headers) as response:
                payload = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ControllerError("CONTROLLER_UNAVAILABLE", f"{method} {path}: {exc}") from exc
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
        if self._prefix is None:
            await self.version()
        if self.api_session is None:
            await self.authenticate()
        try:
            return await self._raw(method, path, **kwargs)
        except NotAuthorized:
            log.info("ctrl.reauthenticating", path=path)
            await self.authenticate()
            return await self._raw(method, path, **kwargs)

    async def version(self) -> str:
        """`GET /version`; sets the API path prefix."""
        data = (await self._raw("GET", "/version", auth=False)).get("data") or {}
        path = (((data.get("apiVersions") or {}).get("edge") or {}).get("v1") or {}).get("path")
        self._prefix = path if isinstance(path, str) else ""
        self.controller_version = str(data.get("version", ""))
        return self.controller_version

    async def authenticate(self) -> ApiSession:
        """`POST /authenticate?method=cert` with the client certificate."""
        if self._prefix is None:
            await self.version()
        body = {"sdkInfo": {"type": "tunneler", "version": __version__},
                "envInfo": {"os": "Linux"}, "configTypes": self._config_types}
        self.api_session = None
        data = (await self._raw("POST", "/authenticate", body=body,
                                params={"method": "cert"}, auth=False))["data"]
        identity = data.get("identity") or {}
        self.api_session = ApiSession(
            id=str(data.get("id", "")), token=str(data["token"]),
            identity_id=str(identity.get("id", data.get("identityId", ""))),
            identity_name=str(identity.get("name", "")),
            expires_at=parse_time(data.get("expiresAt")))
        log.info("ctrl.authenticated", identity=self.api_session.identity_name,
                 controller=self._base)
        return self.api_session

    async def refresh_api_session(self) -> ApiSession:
        """`GET /current-api-session` (extends it); re-authenticates if it is gone."""
        data = (await self._call("GET", "/current-api-session"))["data"]
        assert self.api_session is not None
        self.api_session = ApiSession(self.api_session.id, self.api_session.token,
                                      self.api_session.identity_id,
                                      self.api_session.identity_name,
                                      parse_time(data.get("expiresAt")))
        return self.api_session

    async def _paged(self, path: str, params: dict[str, Any] | None = None) -> list[Any]:
        items: list[Any] = []
        for _ in range(MAX_PAGES):
            query = {**(params or {}), "limit": PAGE_SIZE, "offset": len(items)}
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
        return [_service(item) for item in await self._paged("/services")]

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

    async def logout(self) -> None:
        """`DELETE /current-api-session`."""
        if self.api_session is not None:
            try:
                await self._raw("DELETE", "/current-api-session")
            finally:
                self.api_session = None
