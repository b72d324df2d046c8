"""Counters the data path increments and the ops layer reads (`Stats.snapshot()` → `Counters`).

Sans-IO and cheap: plain integer updates, no locks (one event loop). Label sets are capped
(`MAX_LABELS` distinct services, reasons or buffers each); anything past the cap is counted
under `"other"`, so a flood of odd names cannot grow memory or metric cardinality.

Bytes are counted on the data path through a service's `ServiceMeter` (`Stats.meter(name)`):
a bridge keeps the meter and adds each chunk's length to `bytes_up` (local socket → overlay)
or `bytes_down` (overlay → local socket), one integer add per chunk and no lookup. In
`run-host` the local socket is the hosted server's, so there `up` is the server's answers.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from tunneler.errors import DialError
from tunneler.ops.snapshot import Counters, Histogram, PoolUsage, ServiceCounters

MAX_LABELS = 256
OTHER = "other"
#: DNS is counted by the engine's responder; the daemon's view fills these in (zero in run-host)
DNS_OUTCOMES = ("answered", "forwarded", "refused", "dropped")
#: dial latency buckets in seconds (Prometheus convention: upper bounds, +Inf implied)
DIAL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True)
class ServiceMeter:
    """The counters of one service (bridges add to `bytes_up`/`bytes_down` directly)."""

    flows_opened: int = 0
    flows_active: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    last_error: str | None = None


def failure_reason(exc: BaseException) -> str:
    """The short reason of a failed dial: timeout, no_router, controller, refused or error."""
    text = str(exc)
    if isinstance(exc, TimeoutError) or "timed out" in text:
        return "timeout"
    if "no edge router reachable" in text:
        return "no_router"
    if ": controller: " in text:
        return "controller"
    return "refused" if isinstance(exc, DialError) else "error"


def _label(table: dict[str, int], key: str) -> str:
    return key if key in table or len(table) < MAX_LABELS else OTHER


class Stats:
    """All counters of one daemon process."""

    def __init__(self, buckets: tuple[float, ...] = DIAL_BUCKETS) -> None:
        self._services: dict[str, ServiceMeter] = {}
        self.dial_failures: dict[str, int] = {}
        self.packets_dropped: dict[str, int] = {}
        self.buffer_high_water: dict[str, int] = {}
        self._bounds = buckets
        self._buckets = [0] * (len(buckets) + 1)
        self._latency_sum = 0.0

    def meter(self, name: str) -> ServiceMeter:
        """The counters of service `name` (created on first use; past the cap: `"other"`)."""
        entry = self._services.get(name)
        if entry is None:
            if len(self._services) >= MAX_LABELS:
                name = OTHER
            entry = self._services.setdefault(name, ServiceMeter())
        return entry

    # -- flows -------------------------------------------------------------------------------
    def flow_opened(self, service: str) -> None:
        entry = self.meter(service)
        entry.flows_opened += 1
        entry.flows_active += 1

    def flow_closed(self, service: str) -> None:
        entry = self.meter(service)
        entry.flows_active = max(0, entry.flows_active - 1)

    def add_bytes(self, service: str, *, up: int = 0, down: int = 0) -> None:
        """Bytes relayed: `up` = application → overlay, `down` = overlay → application."""
        entry = self.meter(service)
        entry.bytes_up += up
        entry.bytes_down += down

    # -- dials -------------------------------------------------------------------------------
    def dial_succeeded(self, service: str, seconds: float) -> None:
        self._buckets[bisect.bisect_left(self._bounds, seconds)] += 1
        self._latency_sum += seconds
        self.meter(service).last_error = None

    def dial_failed(self, service: str, reason: str, error: str | None = None) -> None:
        """Count a failed dial by short `reason` (timeout, refused, ...); keep `error` text."""
        key = _label(self.dial_failures, reason)
        self.dial_failures[key] = self.dial_failures.get(key, 0) + 1
        self.meter(service).last_error = (error or reason)[:200]

    def last_error(self, service: str) -> str | None:
        entry = self._services.get(service)
        return None if entry is None else entry.last_error

    def active_flows(self, service: str) -> int:
        entry = self._services.get(service)
        return 0 if entry is None else entry.flows_active

    # -- packets, buffers --------------------------------------------------------------------
    def packet_dropped(self, reason: str) -> None:
        key = _label(self.packets_dropped, reason)
        self.packets_dropped[key] = self.packets_dropped.get(key, 0) + 1

    def buffer_level(self, buffer: str, nbytes: int) -> None:
        """Report a buffer's current size; the high-water mark is kept."""
        key = _label(self.buffer_high_water, buffer)
        if nbytes > self.buffer_high_water.get(key, 0):
            self.buffer_high_water[key] = nbytes

    # -- reading -----------------------------------------------------------------------------
    def snapshot(self, vip_pool: PoolUsage | None = None) -> Counters:
        services = {
            name: ServiceCounters(s.flows_opened, s.flows_active, s.bytes_up, s.bytes_down)
            for name, s in self._services.items()
        }
        totals = ServiceCounters(*(sum(getattr(s, f) for s in services.values())
                                   for f in ("flows_opened", "flows_active", "bytes_up",
                                             "bytes_down")))
        latency = Histogram(self._bounds, tuple(self._buckets), self._latency_sum,
                            sum(self._buckets))
        return Counters(flows=totals, services=services, dns=dict.fromkeys(DNS_OUTCOMES, 0),
                        dial_failures=dict(self.dial_failures),
                        packets_dropped=dict(self.packets_dropped), dial_latency=latency,
                        vip_pool=vip_pool, buffer_high_water=dict(self.buffer_high_water))
