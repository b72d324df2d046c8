"""Controller entities (frozen dataclasses) and OpenZiti role matching for service policies (pure).

Role selectors, as OpenZiti evaluates them:

- `#all` matches every entity; `#attr` matches an entity whose roleAttributes contain `attr`;
- `@x` matches the entity whose id or name is `x`;
- semantic `AnyOf` (default): the entity matches if ANY role matches; `AllOf`: if ALL do.
  An empty role list matches nothing (deny by default).

A policy of type Dial/Bind permits (identity, service) iff the identity matches its
identityRoles and the service matches its serviceRoles.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

POLICY_TYPES = ("Dial", "Bind")
SEMANTICS = ("AnyOf", "AllOf")
ROLE_ALL = "#all"


@dataclass(frozen=True)
class Identity:
    """An identity (a device, user or host)."""

    id: str
    name: str
    role_attributes: tuple[str, ...]
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Authenticator:
    """An identity's certificate credential (stable `id` across renewals)."""

    id: str
    identity_id: str
    fingerprint: str
    cert_pem: str
    created_at: float
    expires_at: float | None
    renewed_at: float | None
    pending_fingerprint: str | None
    pending_pem: str | None


@dataclass(frozen=True)
class Service:
    """A service with its configs (config type name → JSON object)."""

    id: str
    name: str
    encryption_required: bool
    role_attributes: tuple[str, ...]
    configs: Mapping[str, Any]
    config_ids: Mapping[str, str]
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class ServicePolicy:
    """A Dial or Bind service policy."""

    id: str
    name: str
    type: str
    semantic: str
    identity_roles: tuple[str, ...]
    service_roles: tuple[str, ...]


@dataclass(frozen=True)
class ApiSession:
    """An authenticated API session."""

    id: str
    token: str
    identity_id: str
    identity_name: str
    fingerprint: str
    config_types: tuple[str, ...]
    created_at: float
    updated_at: float
    expires_at: float
    auth_method: str = "cert"  # "cert" (legacy zt-session) or "oidc"
    renewed_fingerprints: tuple[str, ...] = ()  # certificates renewed during the session

    @property
    def fingerprints(self) -> tuple[str, ...]:
        """Every certificate that may present this session: the one it began with, then the
        ones that renewed it (so open channels and new ones both keep working)."""
        return tuple(dict.fromkeys((self.fingerprint, *self.renewed_fingerprints)))


@dataclass(frozen=True)
class Router:
    """An edge router of the network."""

    id: str
    name: str
    hostname: str
    port: int
    created_at: float
    updated_at: float

    @property
    def url(self) -> str:
        return f"tls://{self.hostname}:{self.port}"


@dataclass(frozen=True)
class Permissions:
    """Which policy types permit an identity on a service."""

    kinds: frozenset[str] = field(default_factory=frozenset)

    def as_list(self) -> list[str]:
        return [kind for kind in POLICY_TYPES if kind in self.kinds]


def role_matches(role: str, entity_id: str, name: str, attributes: Iterable[str]) -> bool:
    """Whether one role selector matches an entity."""
    if role == ROLE_ALL:
        return True
    if role.startswith("#"):
        return role[1:] in attributes
    if role.startswith("@"):
        return role[1:] in (entity_id, name)
    return False


def roles_match(roles: Sequence[str], semantic: str, entity_id: str, name: str,
                attributes: Sequence[str]) -> bool:
    """Whether a role list (with its semantic) selects an entity; empty lists select nothing."""
    if not roles:
        return False
    hits = (role_matches(role, entity_id, name, attributes) for role in roles)
    return all(hits) if semantic == "AllOf" else any(hits)


def policy_permits(policy: ServicePolicy, identity: Identity, service: Service) -> bool:
    """Whether `policy` grants its type to `identity` on `service`."""
    return roles_match(policy.identity_roles, policy.semantic, identity.id, identity.name,
                       identity.role_attributes) and roles_match(
        policy.service_roles, policy.semantic, service.id, service.name, service.role_attributes)


def permissions(policies: Iterable[ServicePolicy], identity: Identity,
                service: Service) -> Permissions:
    """All policy types granted to `identity` on `service`."""
    return Permissions(frozenset(policy.type for policy in policies
                                 if policy_permits(policy, identity, service)))


def iso_time(timestamp: float) -> str:
    """UTC timestamp in the only form libziti 0.29.3 parses: `2022-07-22T14:57:03.123456Z`."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
