"""JSON shapes of the Edge Client API v1 as libziti 0.29.3 reads them (openziti-protocol.md §4).

Pure functions from entities to JSON-ready dicts; several fields are crash-critical for the
C SDK (`identity.name`, `permissions`, `postureQueries`, `updatedAt`, `edgeRouters`) and are
always present.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunneler import __version__
from tunneler.controller.models import (
    ApiSession,
    Authenticator,
    Identity,
    Permissions,
    Router,
    Service,
    iso_time,
)
from tunneler.router.authority import SessionInfo

API_PATH = "/edge/client/v1"
OIDC_PATH = "/oidc"
CAPABILITY_OIDC = "OIDC_AUTH"
META = {"apiVersion": "0.0.1", "apiEnrollmentVersion": "0.0.1"}
ALL_CONFIG_TYPES = "all"


def envelope(data: Any) -> dict[str, Any]:
    """Success envelope."""
    return {"data": data, "meta": {}}


def list_envelope(items: list[Any], limit: int, offset: int, total: int) -> dict[str, Any]:
    """Paged list envelope with the exact `totalCount` (the SDK sizes arrays from it)."""
    return {"data": items, "meta": {"pagination": {"limit": limit, "offset": offset,
                                                   "totalCount": total}, "filterableFields": []}}


def error_envelope(code: str, message: str, request_id: str) -> dict[str, Any]:
    """Error envelope: the SDK reads `error.code` and `error.message`."""
    return {"error": {"code": code, "message": message, "requestId": request_id, "cause": None,
                      "causeMessage": "", "args": {"urlVars": {}}, "data": {}}, "meta": META}


def version(controller_url: str, *, oidc: bool = False) -> dict[str, Any]:
    """`GET /version` data as controller 2.x shapes it.

    version, revision and buildDate are required by libziti 0.29.3; `capabilities` must be an
    array (libziti 1.x iterates it without a null check) and lists `OIDC_AUTH` only when the
    `edge-oidc` API is served; `edge` is the legacy copy of `edge-client` that libziti reads.
    """
    client = {"v1": {"path": API_PATH, "apiBaseUrls": [controller_url + API_PATH]}}
    apis: dict[str, Any] = {"edge": client, "edge-client": client}
    capabilities = []
    if oidc:
        apis["edge-oidc"] = {"v1": {"path": OIDC_PATH, "apiBaseUrls": [controller_url + OIDC_PATH]}}
        capabilities.append(CAPABILITY_OIDC)
    return {"version": f"v{__version__}", "revision": "tunneler",
            "buildDate": "2024-01-01 00:00:00", "runtimeVersion": "python3",
            "apiVersions": apis, "capabilities": capabilities}


def controller(instance_id: str, name: str, controller_url: str, cert_pem: str,
               fingerprint: str, *, oidc: bool = False) -> dict[str, Any]:
    """One entry of `GET /controllers` (libziti keeps the `edge-client` address of `v1`)."""
    addresses = {"edge-client": [{"url": controller_url + API_PATH, "version": "v1"}]}
    if oidc:
        addresses["edge-oidc"] = [{"url": controller_url + OIDC_PATH, "version": "v1"}]
    return {"id": instance_id, "name": name, "apiAddresses": addresses, "isOnline": True,
            "certPem": cert_pem, "fingerprint": fingerprint, "ctrlAddress": controller_url,
            **_stamps(0, 0)}


def _ref(entity_id: str, name: str, entity: str) -> dict[str, Any]:
    return {"id": entity_id, "name": name, "entity": entity, "_links": {}}


def _stamps(created_at: float, updated_at: float) -> dict[str, Any]:
    return {"createdAt": iso_time(created_at), "updatedAt": iso_time(updated_at), "_links": {},
            "tags": {}}


def api_session(session: ApiSession, now: float,
                authenticator_id: str | None = None) -> dict[str, Any]:
    """`POST /authenticate` and `GET /current-api-session` data."""
    return {
        "id": session.id, "token": session.token,
        "identity": _ref(session.identity_id, session.identity_name, "identities"),
        "identityId": session.identity_id,
        "expiresAt": iso_time(session.expires_at),
        "expirationSeconds": max(0, int(session.expires_at - now)),
        "cachedLastActivityAt": iso_time(session.updated_at),
        "lastActivityAt": iso_time(session.updated_at),
        "authQueries": [], "configTypes": list(session.config_types),
        "authenticatorId": authenticator_id or session.fingerprint, "isMfaRequired": False,
        "isMfaComplete": False, "isCertExtendable": True, "isCertExtendRequested": False,
        "isCertKeyRollRequested": False, "improperClientCertChain": False,
        **_stamps(session.created_at, session.updated_at),
    }


def authenticator(entity: Authenticator) -> dict[str, Any]:
    """One entry of `GET /current-identity/authenticators`."""
    return {"id": entity.id, "method": "cert", "identityId": entity.identity_id,
            "fingerprint": entity.fingerprint, "certPem": entity.cert_pem,
            "isIssuedByNetwork": True, "isExtendRequested": False,
            "isKeyRollRequested": False,
            "extendRequestedAt": None, **_stamps(entity.created_at, entity.renewed_at
                                                 or entity.created_at)}


def identity(entity: Identity, fingerprint: str) -> dict[str, Any]:
    """`GET /current-identity` data."""
    return {
        "id": entity.id, "name": entity.name, "appData": {}, "defaultHostingCost": 0,
        "defaultHostingPrecedence": "default", "serviceHostingCosts": {},
        "serviceHostingPrecedences": {}, "type": {"id": "Default", "name": "Default"},
        "typeId": "Default", "isAdmin": False, "isDefaultAdmin": False,
        "authenticators": {"cert": {"fingerprint": fingerprint}}, "enrollment": {},
        "roleAttributes": list(entity.role_attributes), "hasApiSession": True,
        "disabled": False, **_stamps(entity.created_at, entity.updated_at),
    }


def _router_urls(router: Router) -> dict[str, str]:
    return {"tls": router.url}


def edge_router(router: Router) -> dict[str, Any]:
    """One entry of `GET /current-identity/edge-routers` and of a session's `edgeRouters`."""
    return {"id": router.id, "name": router.name, "hostname": router.hostname,
            "supportedProtocols": _router_urls(router), "urls": _router_urls(router),
            "isOnline": True, "syncStatus": "SYNC_DONE", "cost": 0, "noTraversal": False,
            "appData": {}, **_stamps(router.created_at, router.updated_at)}


def service(entity: Service, granted: Permissions, config_types: Sequence[str]) -> dict[str, Any]:
    """One entry of `GET /services`; `config` filtered by the session's config types."""
    wanted = set(config_types)
    every = ALL_CONFIG_TYPES in wanted
    return {
        "id": entity.id, "name": entity.name, "permissions": granted.as_list(),
        "encryptionRequired": entity.encryption_required,
        "config": {name: data for name, data in entity.configs.items() if every or name in wanted},
        "configs": list(entity.config_ids.values()), "postureQueries": [],
        "terminatorStrategy": "smartrouting", "roleAttributes": list(entity.role_attributes),
        **_stamps(entity.created_at, entity.updated_at),
    }


def service_edge_routers(routers: Sequence[Router]) -> dict[str, Any]:
    """`GET /services/{id}/edge-routers` data (libziti 1.x reads it before a Bind)."""
    return {"edgeRouters": [edge_router(r) for r in routers]}


def session(info: SessionInfo, routers: Sequence[Router], created_at: float) -> dict[str, Any]:
    """`POST /sessions` data."""
    return {
        "id": info.id, "token": info.token, "type": info.type, "serviceId": info.service_id,
        "service": _ref(info.service_id, info.service_name, "services"),
        "apiSessionId": info.api_session_id, "apiSession": {"id": info.api_session_id},
        "identityId": info.identity_id, "edgeRouters": [edge_router(r) for r in routers],
        **_stamps(created_at, created_at),
    }
