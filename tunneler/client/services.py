"""Service list changes between two refreshes (pure), and reading a service's config.

`config_or_warn(service, read, event)` applies a `configs` reader such as `host_of` or
`intercept_of` and turns an invalid config into None plus a warning `event` (never fatal).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from tunneler.client.ctrl import ServiceInfo
from tunneler.errors import ConfigError
from tunneler.log import get_logger

log = get_logger("client")

T = TypeVar("T")


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


def config_or_warn(service: ServiceInfo, read: Callable[[Mapping[str, Any], str], T | None],
                   event: str) -> T | None:
    """`read(service.configs, service.name)`; None, and a warning `event`, if it is invalid."""
    try:
        return read(service.configs, service.name)
    except ConfigError as exc:
        log.warning(event, service=service.name, error=str(exc))
        return None
