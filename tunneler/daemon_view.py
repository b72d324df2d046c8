"""`InterceptView`: the `DaemonView` of `tunneler run` (status, intercepts, counters).

It reads the daemon through `InterceptState`, the few attributes it needs, so this module
imports neither the daemon nor anything that imports it.
"""

from __future__ import annotations

from typing import Protocol

from tunneler import __version__
from tunneler.client.context import ZitiContext
from tunneler.counters import Metrics, PoolUsage
from tunneler.dns.pool import VipPool
from tunneler.engine.engine import Engine
from tunneler.hostconfig.config import HostConfig, HostConfigurator
from tunneler.intercept import Intercept, InterceptAddress
from tunneler.ops.snapshot import DnsStatus, InterceptRow, Status, TunStatus
from tunneler.ops.views import ContextsView, best_router
from tunneler.tun.device import TunDevice

WILDCARD_VIPS_SHOWN = 8


class InterceptState(Protocol):
    """What the view reads of a running `tunneler.daemon.Daemon`."""

    contexts: list[ZitiContext]
    pool: VipPool
    engine: Engine | None
    tun: TunDevice | None
    host_config: HostConfig | None
    configurator: HostConfigurator

    @property
    def tun_name(self) -> str:
        """The TUN device's name."""
        ...


def _address_text(address: InterceptAddress) -> str:
    if address.network is not None:
        return str(address.network)
    return f"*.{address.wildcard}" if address.wildcard is not None else address.hostname or "-"


def _ports(intercept: Intercept) -> tuple[str, ...]:
    return tuple(str(low) if low == high else f"{low}-{high}"
                 for low, high in intercept.port_ranges)


class InterceptView(ContextsView):
    """The view of `tunneler run`."""

    def __init__(self, daemon: InterceptState, stats: Metrics | None = None) -> None:
        super().__init__(daemon.contexts, stats)
        self.daemon = daemon

    def intercepts(self) -> list[InterceptRow]:
        engine = self.daemon.engine
        if engine is None:
            return []
        rows = []
        for intercept, target in engine.snapshot().intercepts:
            ctx = target.context if target is not None else None
            router = best_router(ctx) if isinstance(ctx, ZitiContext) else None
            for address in intercept.addresses:
                vips = self._vips(address)
                rows.append(InterceptRow(
                    _address_text(address), intercept.service,
                    ctx.name if ctx is not None else "-", vips[:WILDCARD_VIPS_SHOWN],
                    tuple(sorted(intercept.protocols)), _ports(intercept),
                    router.name if router else None, router.latency_ms if router else None,
                    self.stats.active_flows(intercept.service),
                    self.stats.last_error(intercept.service), len(vips)))
        return rows

    def _vips(self, address: InterceptAddress) -> tuple[str, ...]:
        """The VIPs handed out for `address` (a wildcard's most recently used first)."""
        pool = self.daemon.pool
        if address.wildcard is not None:
            return tuple(str(vip) for _, vip in pool.wildcard_names(address.wildcard))
        vip = pool.lookup(address.hostname) if address.hostname is not None else None
        return (str(vip),) if vip is not None else ()

    def status(self) -> Status:
        daemon, engine = self.daemon, self.daemon.engine
        snapshot = engine.snapshot() if engine is not None else None
        counters = snapshot.counters if snapshot is not None else self.stats.snapshot(
            PoolUsage(daemon.pool.capacity, daemon.pool.in_use))
        config = daemon.host_config
        tun = TunStatus(daemon.tun_name, daemon.tun is not None,
                        daemon.tun is not None and engine is not None,
                        len(config.routes.routes) if config is not None and engine is not None
                        else 0)
        method = daemon.configurator.dns_method
        dns = DnsStatus(str(daemon.pool.dns_ip), method or "pending", method is not None,
                        snapshot.upstreams if snapshot is not None else ())
        return Status(__version__, "intercept", self.uptime(), engine is not None,
                      self.identities(), self.routers(), tun, dns, counters)
