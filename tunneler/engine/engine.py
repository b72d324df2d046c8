"""The packet dispatcher of ``tunneler run``: TUN packets to TCP, UDP and DNS handlers.

``Engine(tun, contexts, pool, limits, upstreams)`` owns the pieces of the data path. ``start()``
reserves the NAT address N from the pool (``VipPool.reserve``: the first free address, never
given to a name), opens the listener, and starts reading the TUN; ``update_intercepts()``
applies a service change (intercept table, DNS names, pool retirement) without touching
existing flows; ``drain()`` refuses new flows; ``close()`` drains the rest and stops.
Every counter goes to ``metrics`` (`tunneler.counters.Metrics`, typed: malformed packets by
`DropReason`, refused flows by `Refusal`, per-service flows, bytes, dial latency and failures).
``snapshot()`` is what the ops layer reads: the intercepts with their dial targets, the
counters with the DNS outcomes, and the DNS upstreams; it never reaches into the engine.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from tunneler.counters import Count, Counters, Drop, Metrics, PoolUsage
from tunneler.dns.answer import DnsResponder
from tunneler.dns.pool import VipPool
from tunneler.engine.dnsserver import DNS_PORT, DnsServer, Upstream
from tunneler.engine.events import Events
from tunneler.engine.limits import Limits
from tunneler.engine.policy import DialTarget, InterceptPolicy
from tunneler.engine.tcp import OriginalDestinationLookup, TcpInterceptor
from tunneler.engine.tunreader import TunPump
from tunneler.engine.udp import UdpInterceptor
from tunneler.intercept import Intercept
from tunneler.log import get_logger
from tunneler.overlay import DialContext
from tunneler.packet.parse import PROTO_TCP, PROTO_UDP, DropReason, Parsed, parse
from tunneler.tun.device import TunDevice
from tunneler.tun.redirect import original_destination

log = get_logger("engine")

TICK = 1.0


@dataclass(frozen=True)
class EngineSnapshot:
    """What the engine shows the ops layer, taken at one moment."""

    intercepts: tuple[tuple[Intercept, DialTarget | None], ...]  # in table order
    counters: Counters
    upstreams: tuple[str, ...]                                    # "host:port"


class Engine:
    """The intercepting data path over one TUN device."""

    def __init__(self, tun: TunDevice, contexts: Sequence[DialContext], pool: VipPool, *,
                 limits: Limits | None = None, upstreams: Sequence[Upstream] = (),
                 metrics: Metrics | None = None,
                 lookup: OriginalDestinationLookup = original_destination) -> None:
        self.limits = limits or Limits()
        self._lookup = lookup  # SO_ORIGINAL_DST of redirected sockets (--tcp-redirect)
        self.metrics = metrics or Metrics()
        self.events = Events(self.metrics)
        self.pool = pool
        self.pump = TunPump(tun, self.events)
        self.policy = InterceptPolicy(contexts, pool)
        self.responder = DnsResponder(pool, upstream=bool(upstreams))
        self.dns = DnsServer(self.pump, self.responder, self.events, self.limits, upstreams,
                             [pool.network, ipaddress.ip_network("127.0.0.0/8")])
        self.udp = UdpInterceptor(self.pump, self.policy, pool, self.events, self.limits)
        self.tcp: TcpInterceptor | None = None
        self._parsed = Parsed()
        self._dns_ip = int(pool.dns_ip)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        """Reserve N, open the listener on T, load the intercepts, read the TUN."""
        loop = self._loop = asyncio.get_running_loop()
        nat_ip = self.pool.reserve()
        self.tcp = TcpInterceptor(self.pump, self.policy, self.pool, self.events, self.limits,
                                  nat_ip, lookup=self._lookup)
        self.tcp.register_local(self.pool.dns_ip, DNS_PORT, self.dns.tcp_protocol)
        await self.tcp.start()
        self.update_intercepts()
        self.pump.start(self.handle_packet)
        self._ticker = loop.call_later(TICK, self._tick)
        log.info("engine.started", tun_ip=str(self.pool.tun_ip), dns_ip=str(self.pool.dns_ip),
                 nat_ip=str(nat_ip))

    def update_intercepts(self) -> None:
        """Services changed: rebuild the intercepts and the DNS names (flows are untouched)."""
        assert self._loop is not None
        self.policy.rebuild()
        table = self.policy.table
        self.responder.set_intercepts(table.hostnames(), table.wildcard_domains(),
                                      self._loop.time())

    def snapshot(self) -> EngineSnapshot:
        """The intercepts, counters (with the DNS outcomes and the VIP pool) and upstreams."""
        targets = self.policy.targets
        counts, tally = self.metrics.counts, self.responder.tally()
        dns = {"answered": tally.replies, "forwarded": counts[Count.DNS_FORWARDED],
               "refused": counts[Count.DNS_REFUSED_IN_FLIGHT_CAP]
               + counts[Count.DNS_UPSTREAM_FAILED], "dropped": tally.drops}
        return EngineSnapshot(
            tuple((i, targets.get(i.service)) for i in self.policy.table.intercepts),
            self.metrics.snapshot(PoolUsage(self.pool.capacity, self.pool.in_use), dns),
            tuple(f"{host}:{port}" for host, port in self.dns.upstreams))

    def handle_packet(self, packet: memoryview) -> None:
        """One packet read from the TUN."""
        parsed = parse(packet, self._parsed)
        if isinstance(parsed, DropReason):
            self.metrics.drop(parsed)
            return
        assert self._loop is not None and self.tcp is not None
        now = self._loop.time()
        if parsed.proto == PROTO_TCP:
            self.tcp.handle(packet, parsed, now)
        elif parsed.proto == PROTO_UDP:
            if parsed.dst == self._dns_ip and parsed.dst_port == DNS_PORT:
                self.dns.handle_udp(packet, parsed, now)
            else:
                self.udp.handle(packet, parsed, now)
        else:
            self.metrics.drop(Drop.ICMP)

    def _tick(self) -> None:
        assert self._loop is not None and self.tcp is not None
        now = self._loop.time()
        try:
            self.tcp.expire(now)
            self.udp.expire(now)
        finally:
            self._ticker = self._loop.call_later(TICK, self._tick)

    def drain(self) -> None:
        """Refuse new flows from now on (RST / ICMP), keep the open ones."""
        if self.tcp is not None:
            self.tcp.draining = True
        self.udp.draining = True

    async def close(self) -> None:
        """Drain open TCP flows for up to ``Limits.drain_timeout``, then stop everything."""
        self.drain()
        if self.tcp is not None:
            await self.tcp.close(self.limits.drain_timeout)
        self.udp.close()
        await self.dns.close()
        self.pump.stop()
        if self._ticker is not None:
            self._ticker.cancel()
        dns = {f"dns_{key}": value for key, value in self.responder.counters.items()}
        log.info("engine.stopped", **self.metrics.totals(), **dns)
