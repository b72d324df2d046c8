"""Service list changes between two refreshes (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tunneler.client.ctrl import ServiceInfo


@dataclass(frozen=True)
class ServiceChanges:
    """What a refresh changed, by service."""

    added: tuple[ServiceInfo, ...] = ()
    changed: tuple[ServiceInfo, ...] = ()
    removed: tuple[ServiceInfo, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def diff_services(old: Mapping[str, ServiceInfo],
                  new: Mapping[str, ServiceInfo]) -> ServiceChanges:
    """Services added, changed (any field, incl. configs and permissions) and removed."""
    return ServiceChanges(
        added=tuple(s for name, s in new.items() if name not in old),
        changed=tuple(s for name, s in new.items() if name in old and old[name] != s),
        removed=tuple(s for name, s in old.items() if name not in new),
    )
