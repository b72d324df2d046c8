"""`DaemonView`s of the two daemons: `InterceptView` (`tunneler run`), `HostView` (`run-host`).

They read the running objects on request and build `snapshot` values; nothing here changes
the data path except `refresh()` (a service refresh now) and `set_log_level()`.
Router links and controller reachability come from `ZitiContext`'s read-only `links()` and
`controller_contact`; per-service flows, bytes and dial latency from the `Stats` the daemon's
data path counts into; DNS and drop counters from the engine's own flat counters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from tunneler import __version__, log
from tunneler.client.context import ZitiContext
from tunneler.errors import ControllerError, DialError
from tunneler.intercept import Intercept, InterceptAddress
from tunneler.ops.snapshot import (
    Counters,
    DnsStatus,
    IdentityStatus,
    InterceptRow,
    PoolUsage,
    RouterStatus,
    Status,
    TunStatus,
)
from tunneler.ops.stats import Stats

if TYPE_CHECKING:
    from tunneler.daemon import Daemon
    from tunneler.host import ServiceHost

logger = log.get_logger("ops")

LINK_CHECK_INTERVAL = 2.0
WILDCARD_VIPS_SHOWN = 8


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.datetime.fromtimestamp(
        epoch, datetime.UTC).isoformat()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def router_statuses(ctx: ZitiContext) -> list[RouterStatus]:
    """Every router the controller listed for `ctx`, plus any other live link."""
    return [RouterStatus(link.router, ctx.name, link.connected, _ms(link.latency), link.url)
            for link in ctx.links()]


def best_router(ctx: ZitiContext) -> RouterStatus | None:
    """The link new flows of `ctx` use now (the lowest latency connected one)."""
    up = [r for r in router_statuses(ctx) if r.connected]
    return min(up, key=lambda r: float("inf") if r.latency_ms is None else r.latency_ms,
               default=None)


class ContextsView:
    """What both daemons share: identities, routers, refresh and log level."""

    def __init__(self, contexts: Sequence[ZitiContext], stats: Stats | None = None) -> None:
        self.contexts = list(contexts)
        self.stats = stats or Stats()
        self.started = time.monotonic()

    def identities(self) -> tuple[IdentityStatus, ...]:
        result = []
        for ctx in self.contexts:
            session = ctx.ctrl.api_session
            expires = session.expires_at.isoformat() if session and session.expires_at else None
            contact = ctx.controller_contact
            error = None if contact.error is None else f"controller: {contact.error}"
            checked = _iso(contact.at)
            cert = ctx.renewal.state(ctx.identity, time.time()) if ctx.renewal else None
            result.append(IdentityStatus(
                ctx.name, session is not None, session is not None and error is None, expires,
                len(ctx.services), error, checked,
                _iso(cert.expires_at if cert else ctx.identity.certificate.not_valid_after_utc
                     .timestamp()),
                _iso(cert.renewed_at) if cert else None, cert.error if cert else None,
                cert.expiring if cert else False, _iso(ctx.cached_at)))
        return tuple(result)

    def routers(self) -> tuple[RouterStatus, ...]:
        return tuple(r for ctx in self.contexts for r in router_statuses(ctx))

    def uptime(self) -> float:
        return round(time.monotonic() - self.started, 3)

    async def refresh(self) -> dict[str, int]:
        """Ask every controller for its service list now (listeners see the changes; each
        context records the outcome for `identities()`)."""
        totals = {"added": 0, "changed": 0, "removed": 0, "failed": 0}
        results = await asyncio.gather(*(ctx.refresh_services() for ctx in self.contexts),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, ControllerError | OSError | TimeoutError):
                totals["failed"] += 1
            elif isinstance(result, BaseException):
                raise result
            else:
                for key in ("added", "changed", "removed"):
                    totals[key] += len(getattr(result, key)) if result is not None else 0
        logger.info("ops.services_refreshed", **totals)
        return totals

    def set_log_level(self, level: str) -> None:
        log.set_level(level)

    async def keep_links(self, interval: float = LINK_CHECK_INTERVAL) -> None:
        """Keep one router channel per identity up (links are otherwise opened by dials),
        so readiness means "a flow can start now"; reconnects follow each context's backoff."""
        while True:
            for ctx in self.contexts:
                if ctx.ctrl.api_session is None or best_router(ctx) is not None:
                    continue
                try:
                    await ctx.link_for([])
                except (DialError, ControllerError, OSError) as exc:
                    logger.debug("ops.router_link_pending", identity=ctx.name, error=str(exc))
            await asyncio.sleep(interval)


def _address_text(address: InterceptAddress) -> str:
    if address.network is not None:
        return str(address.network)
    return f"*.{address.wildcard}" if address.wildcard is not None else address.hostname or "-"


def _ports(intercept: Intercept) -> tuple[str, ...]:
    return tuple(str(low) if low == high else f"{low}-{high}"
                 for low, high in intercept.port_ranges)


def engine_counters(raw: Mapping[str, int], dns: Mapping[str, int]) -> Counters:
    """Map the engine's flat counters (`drop_<reason>`, `tcp_refused_<reason>`, DNS outcomes)
    to `Counters` (flows, bytes and failed dials are counted per service in `Stats`)."""
    def total(*names: str) -> int:
        return sum(raw.get(n, 0) for n in names)

    drops = {k.removeprefix("drop_"): v for k, v in raw.items() if k.startswith("drop_")}
    drops.update({k: v for k, v in raw.items() if k.endswith("_dropped")})
    failures: dict[str, int] = {}
    for key, value in raw.items():
        if key.startswith(("tcp_refused_", "udp_refused_")):
            reason = key.split("_refused_", 1)[1]
            failures[reason] = failures.get(reason, 0) + value
    dns_dropped = sum(v for k, v in dns.items() if k not in ("reply", "forward"))
    return Counters(
        dns={"answered": dns.get("reply", 0), "forwarded": total("dns_forwarded"),
             "refused": total("dns_refused_in_flight_cap", "dns_upstream_failed"),
             "dropped": dns_dropped},
        dial_failures=failures, packets_dropped=drops)


class InterceptView(ContextsView):
    """The view of `tunneler run`."""

    def __init__(self, daemon: Daemon, stats: Stats | None = None) -> None:
        super().__init__(daemon.contexts, stats)
        self.daemon = daemon

    def intercepts(self) -> list[InterceptRow]:
        engine = self.daemon.engine
        if engine is None:
            return []
        rows = []
        for intercept in engine.policy.table.intercepts:
            target = engine.policy.targets.get(intercept.service)
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
        pool = PoolUsage(daemon.pool.capacity, daemon.pool.in_use)
        counters = self.stats.snapshot(pool)
        if engine is not None:
            base = engine_counters(engine.stats.snapshot(), engine.responder.counters)
            failures = dict(base.dial_failures)
            for reason, count in counters.dial_failures.items():
                failures[reason] = failures.get(reason, 0) + count
            counters = dataclasses.replace(counters, dns=base.dns, dial_failures=failures,
                                           packets_dropped=base.packets_dropped)
        tun = TunStatus(daemon.config.tun_name, daemon.tun is not None,
                        daemon.tun is not None and engine is not None,
                        len(daemon._intercept_networks()) + 1 if engine is not None else 0)
        resolver = daemon.resolver
        dns = DnsStatus(str(daemon.pool.dns_ip),
                        resolver.method.value if resolver is not None else "pending",
                        resolver is not None,
                        tuple(f"{h}:{p}" for h, p in engine.dns.upstreams) if engine else ())
        return Status(__version__, "intercept", self.uptime(), engine is not None,
                      self.identities(), self.routers(), tun, dns, counters)


class HostView(ContextsView):
    """The view of `tunneler run-host` (no intercepts, no TUN, no DNS)."""

    def __init__(self, hosts: Sequence[ServiceHost], stats: Stats | None = None) -> None:
        super().__init__([h.ctx for h in hosts], stats)
        self.hosts = list(hosts)
        self.services_loaded = False

    def intercepts(self) -> list[InterceptRow]:
        return []

    def status(self) -> Status:
        return Status(__version__, "host", self.uptime(), self.services_loaded,
                      self.identities(), self.routers(), counters=self.stats.snapshot())
