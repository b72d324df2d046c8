"""`HostConfig`, the `HostConfigurator` interface, and a fake that records what it was given.

The daemon computes one frozen `HostConfig` from its state (on start, on every service change)
and hands it to `set`; the configurator brings the host there and journals each change.
`reclaim` puts back what something else removed; `close` undoes everything. The fake keeps a
simulated kernel state, so drift can be injected and the plan `reclaim` applies is checked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

from tunneler.tun.redirect import Redirect
from tunneler.tun.route_plan import RouteConfig, RoutePlan, plan


@dataclass(frozen=True)
class HostConfig:
    """What the host should look like while `tunneler run` runs."""

    routes: RouteConfig                 # the TUN link: addresses, MTU, routes
    dns_ip: str | None = None           # None: the resolver is not (or no more) sent to us
    domains: tuple[str, ...] = ()       # names the resolver sends to `dns_ip`
    route_all: bool = False             # every name, not only `domains`
    redirect: Redirect | None = None    # TCP the kernel sends to the listener (--tcp-redirect)


class HostConfigurator(Protocol):
    """Applies `HostConfig`s to the host (blocking calls: the daemon runs them in a thread)."""

    @property
    def dns_method(self) -> str | None:
        """How the resolver is configured ("resolved", "file", "none"); None: not yet."""
        ...

    def prepare(self, tun_name: str) -> None:
        """Before the TUN exists: undo a crashed predecessor's changes, start our journal."""
        ...

    def set(self, config: HostConfig) -> RoutePlan:
        """Bring the host to `config`; returns the route changes made."""
        ...

    def reclaim(self) -> RoutePlan:
        """Put back what drifted from the last `set` (routes, resolver lines)."""
        ...

    def close(self) -> int:
        """Undo every change (the resolver first); returns how many undo steps failed."""
        ...


@dataclass
class FakeHostConfigurator:
    """A `HostConfigurator` that applies nothing: it records the configs it was given and
    keeps the route state a kernel would have, so tests can inject drift."""

    configs: list[HostConfig] = field(default_factory=list)
    prepared: str | None = None
    closed: bool = False
    reclaimed: list[RoutePlan] = field(default_factory=list)
    kernel: RouteConfig | None = None   # the simulated link state

    @property
    def dns_method(self) -> str | None:
        return "fake" if self.configs and self.configs[-1].dns_ip is not None else None

    def prepare(self, tun_name: str) -> None:
        self.prepared = tun_name

    def set(self, config: HostConfig) -> RoutePlan:
        self.configs.append(config)
        return self._converge(config.routes)

    def reclaim(self) -> RoutePlan:
        if not self.configs:
            return RoutePlan(self.prepared or "")
        restored = self._converge(self.configs[-1].routes)
        self.reclaimed.append(restored)
        return restored

    def close(self) -> int:
        self.closed = True
        self.kernel = None
        return 0

    def drift(self, *, keep_routes: int = 0) -> None:
        """Something else removed our routes (all but the first `keep_routes`)."""
        assert self.kernel is not None
        self.kernel = dataclasses.replace(self.kernel, routes=self.kernel.routes[:keep_routes])

    def _converge(self, desired: RouteConfig) -> RoutePlan:
        applied = plan(self.kernel, desired)
        self.kernel = desired
        return applied
