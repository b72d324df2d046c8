"""`tunneler network list DIR routers|identities|services|policies|sessions [--json]` (pure).

Rows are built from the state database (no server needed); `render` prints them as an aligned
table, or the caller dumps them as JSON. Certificate expiry and lifetime come from the stored
authenticators and network.json, so operators see which identity needs attention.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from typing import Any

from tunneler.controller.models import iso_time
from tunneler.controller.store import Store
from tunneler.durations import format_duration

KINDS = ("routers", "identities", "services", "policies", "sessions")


def rows(store: Store, kind: str, *, client_cert_seconds: int) -> list[dict[str, Any]]:
    """The entities of `kind` as JSON-ready rows."""
    if kind == "routers":
        return [{"name": r.name, "id": r.id, "url": r.url} for r in store.routers()]
    if kind == "identities":
        return [_identity(store, i.id, i.name, i.role_attributes, client_cert_seconds)
                for i in store.identities()]
    if kind == "services":
        return [{"name": s.name, "id": s.id, "encryptionRequired": s.encryption_required,
                 "roleAttributes": list(s.role_attributes), "configs": sorted(s.configs)}
                for s in store.services()]
    if kind == "policies":
        return [{"name": p.name, "type": p.type, "semantic": p.semantic,
                 "identityRoles": list(p.identity_roles),
                 "serviceRoles": list(p.service_roles)} for p in store.policies()]
    if kind == "sessions":
        return [{"id": a.id, "identity": a.identity_name, "method": a.auth_method,
                 "created": iso_time(a.created_at), "expires": iso_time(a.expires_at),
                 "sessions": store.session_count(a.id)} for a in store.api_sessions()]
    raise ValueError(kind)


def _identity(store: Store, identity_id: str, name: str, roles: Sequence[str],
              lifetime: int) -> dict[str, Any]:
    certs = store.authenticators(identity_id)
    current = certs[0] if certs else None
    return {"name": name, "id": identity_id, "roleAttributes": list(roles),
            "enrolled": bool(certs),
            "certExpires": _iso(current.expires_at) if current else None,
            "certRenewed": _iso(current.renewed_at) if current else None,
            "renewalPending": bool(current and current.pending_pem),
            "certLifetime": format_duration(lifetime)}


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.datetime.fromtimestamp(
        epoch, datetime.UTC).isoformat(timespec="seconds")


def render(items: list[dict[str, Any]]) -> str:
    """An aligned table, one row per entity, lists joined with commas, '-' for nothing."""
    if not items:
        return "(none)\n"
    columns = list(items[0])
    cells = [[_cell(item[column]) for column in columns] for item in items]
    widths = [max(len(_header(column)), *(len(row[i]) for row in cells)) for i, column in
              enumerate(columns)]
    lines = ["  ".join(_header(c).ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _header(key: str) -> str:
    """`roleAttributes` → `ROLE ATTRIBUTES`."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", key).upper()


def _cell(value: Any) -> str:
    if value is None or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)
