"""The one typed metrics model of a daemon process: what the data path counts, what ops reads.

Below the data path (it imports neither the engine, the client nor ops), sans-IO and cheap:
plain integer updates, no locks (one event loop). Every counter is keyed by an enum, so a
renamed counter is a type error, not a silent gap in `status` or `/metrics`:

- `Count`: events of the data path (packets in and out, dials started, resets sent, DNS
  forwards and upstream failures, ...);
- `Drop` (and the packet parser's `DropReason`): packets dropped, by reason;
- `Refusal`: new flows refused before any dial, by reason (caps, no intercept, NAT);
- `DialFailure` (carried by `DialError` from where it is raised): failed dials;
- `Buffer`: the high-water marks of the data path's buffers.

Per service, `meter(name)` gives a `ServiceMeter` that a bridge keeps and adds each chunk's
length to (`bytes_up`: local socket → overlay, `bytes_down`: overlay → local socket; in
`run-host` the local socket is the hosted server's, so there `up` is the server's answers).
Services are capped at `MAX_LABELS`, anything past the cap is counted under `"other"`, so a
flood of names cannot grow memory or metric cardinality; the enums bound everything else.

`snapshot()` turns it into `Counters`, the plain values `status`, the control socket and
`/metrics` read (enum values become the stable names they show).
"""

from __future__ import annotations

import bisect
import enum
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from tunneler.errors import DialError, DialFailure
from tunneler.packet.parse import DropReason

E = TypeVar("E", bound=enum.Enum)

MAX_LABELS = 256
OTHER = "other"
#: DNS outcomes as `status` shows them (zero in run-host, which answers no DNS)
DNS_OUTCOMES = ("answered", "forwarded", "refused", "dropped")
#: dial latency buckets in seconds (Prometheus convention: upper bounds, +Inf implied)
DIAL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Count(enum.Enum):
    """Events of the data path."""

    TUN_PACKETS_IN = "tun_packets_in"
    TUN_PACKETS_OUT = "tun_packets_out"
    TUN_READ_ERRORS = "tun_read_errors"
    TUN_WRITE_ERRORS = "tun_write_errors"
    HANDLER_ERRORS = "handler_errors"
    TCP_DIALS_STARTED = "tcp_dials_started"
    TCP_DIALS_FAILED = "tcp_dials_failed"
    UDP_DIALS_FAILED = "udp_dials_failed"
    TCP_FLOWS_OPENED = "tcp_flows_opened"
    TCP_FLOWS_CLOSED = "tcp_flows_closed"
    UDP_FLOWS_OPENED = "udp_flows_opened"
    UDP_FLOWS_CLOSED = "udp_flows_closed"
    TCP_FLOWS_EXPIRED = "tcp_flows_expired"
    TCP_RST_SENT = "tcp_rst_sent"
    TCP_ACCEPT_UNKNOWN = "tcp_accept_unknown"
    TCP_INBOUND_NO_FLOW = "tcp_inbound_no_flow"
    TCP_OUTBOUND_NO_FLOW = "tcp_outbound_no_flow"
    DNS_FORWARDED = "dns_forwarded"
    DNS_REFUSED_IN_FLIGHT_CAP = "dns_refused_in_flight_cap"
    DNS_UPSTREAM_FAILED = "dns_upstream_failed"
    DNS_UPSTREAM_ERRORS = "dns_upstream_errors"
    DNS_UPSTREAM_TIMEOUTS = "dns_upstream_timeouts"
    DNS_UPSTREAM_TCP_FAILED = "dns_upstream_tcp_failed"
    DNS_UPSTREAM_REJECTED = "dns_upstream_rejected"  # a reply that fails check_upstream_reply
    DNS_TRUNCATED_RETRIED_OVER_TCP = "dns_truncated_retried_over_tcp"
    DNS_TCP_OVERFLOW = "dns_tcp_overflow"
    LOG_SUPPRESSED = "log_suppressed"


class Drop(enum.Enum):
    """Packets dropped after parsing (the parser's own reasons are `DropReason`)."""

    ICMP = "icmp"
    TUN_WRITE = "tun_write_dropped"
    TCP_SYN_RETRANSMIT = "tcp_syn_retransmit_dropped"
    UDP_QUEUE = "udp_queue_dropped"
    UDP_REPLY = "udp_reply_dropped"


class Refusal(enum.Enum):
    """Why a new flow was refused (RST or ICMP) before any dial."""

    DRAINING = "draining"
    NOT_IPV4 = "not_ipv4"
    NO_INTERCEPT = "no_intercept"
    FLOW_CAP = "flow_cap"
    PENDING_CAP = "pending_cap"
    SERVICE_PENDING_CAP = "service_pending_cap"  # a flood to one service spares the others
    NAT_NOT_TCP4 = "nat_not_tcp4"
    NAT_NO_FLOW = "nat_no_flow"
    NAT_TABLE_FULL = "nat_table_full"
    NAT_PORTS_EXHAUSTED = "nat_ports_exhausted"


class Buffer(enum.Enum):
    """The data path's buffers whose high-water mark is kept."""

    TCP_HELD = "tcp_held"                # what the service sent before the local socket came
    TCP_LOCAL_WRITE = "tcp_local_write"  # the local socket's write buffer at its high water
    UDP_DIAL_QUEUE = "udp_dial_queue"    # datagrams waiting for their flow's dial


# ---- the plain values ops reads ----------------------------------------------------------------

@dataclass(frozen=True)
class ServiceCounters:
    flows_opened: int = 0
    flows_active: int = 0
    bytes_up: int = 0                  # application -> overlay
    bytes_down: int = 0                # overlay -> application


@dataclass(frozen=True)
class Histogram:
    """Non-cumulative bucket counts: counts[i] for values <= bounds[i], the last one +Inf."""

    bounds: tuple[float, ...] = ()
    counts: tuple[int, ...] = (0,)
    total: float = 0.0
    count: int = 0


@dataclass(frozen=True)
class PoolUsage:
    size: int
    used: int


@dataclass(frozen=True)
class Counters:
    flows: ServiceCounters = field(default_factory=ServiceCounters)   # totals of all services
    services: dict[str, ServiceCounters] = field(default_factory=dict)  # per service, if known
    dns: dict[str, int] = field(default_factory=dict)              # answered/forwarded/...
    dial_failures: dict[str, int] = field(default_factory=dict)    # by reason
    packets_dropped: dict[str, int] = field(default_factory=dict)  # by reason
    dial_latency: Histogram = field(default_factory=Histogram)
    vip_pool: PoolUsage | None = None
    buffer_high_water: dict[str, int] = field(default_factory=dict)  # bytes, by buffer


# ---- counting ----------------------------------------------------------------------------------

@dataclass(slots=True)
class ServiceMeter:
    """The counters of one service (bridges add to `bytes_up`/`bytes_down` directly)."""

    flows_opened: int = 0
    flows_active: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    last_error: str | None = None


def failure_reason(exc: BaseException) -> DialFailure:
    """Why a dial failed: the reason its `DialError` carries; a timeout; else an error."""
    if isinstance(exc, DialError):
        return exc.reason
    return DialFailure.TIMEOUT if isinstance(exc, TimeoutError) else DialFailure.ERROR


def _by_value(counts: Mapping[E, int]) -> dict[str, int]:
    return {key.value: value for key, value in counts.items() if value}


class Metrics:
    """All counters of one daemon process."""

    def __init__(self, buckets: tuple[float, ...] = DIAL_BUCKETS) -> None:
        self.counts: Counter[Count] = Counter()
        self.drops: Counter[DropReason | Drop] = Counter()
        self.refusals: Counter[Refusal] = Counter()
        self.dial_failures: Counter[DialFailure] = Counter()
        self.buffer_high_water: dict[Buffer, int] = {}
        self._services: dict[str, ServiceMeter] = {}
        self._bounds = buckets
        self._buckets = [0] * (len(buckets) + 1)
        self._latency_sum = 0.0

    # -- events ------------------------------------------------------------------------------
    def count(self, event: Count, amount: int = 1) -> None:
        self.counts[event] += amount

    def drop(self, reason: DropReason | Drop) -> None:
        self.drops[reason] += 1

    def refuse(self, reason: Refusal) -> None:
        self.refusals[reason] += 1

    def buffer_level(self, buffer: Buffer, nbytes: int) -> None:
        """Report a buffer's current size; the high-water mark is kept."""
        if nbytes > self.buffer_high_water.get(buffer, 0):
            self.buffer_high_water[buffer] = nbytes

    # -- per service ---------------------------------------------------------------------------
    def meter(self, name: str) -> ServiceMeter:
        """The counters of service `name` (created on first use; past the cap: `"other"`)."""
        entry = self._services.get(name)
        if entry is None:
            if len(self._services) >= MAX_LABELS:
                name = OTHER
            entry = self._services.setdefault(name, ServiceMeter())
        return entry

    def flow_opened(self, service: str) -> None:
        entry = self.meter(service)
        entry.flows_opened += 1
        entry.flows_active += 1

    def flow_closed(self, service: str) -> None:
        entry = self.meter(service)
        entry.flows_active = max(0, entry.flows_active - 1)

    def dial_succeeded(self, service: str, seconds: float) -> None:
        self._buckets[bisect.bisect_left(self._bounds, seconds)] += 1
        self._latency_sum += seconds
        self.meter(service).last_error = None

    def dial_failed(self, service: str, exc: BaseException) -> DialFailure:
        """Count a failed dial by its reason (`failure_reason`), keep its text; return it."""
        reason = failure_reason(exc)
        self.dial_failures[reason] += 1
        self.meter(service).last_error = (str(exc) or reason.value)[:200]
        return reason

    def last_error(self, service: str) -> str | None:
        entry = self._services.get(service)
        return None if entry is None else entry.last_error

    def active_flows(self, service: str) -> int:
        entry = self._services.get(service)
        return 0 if entry is None else entry.flows_active

    # -- reading -------------------------------------------------------------------------------
    def totals(self) -> dict[str, int]:
        """Every non-zero event, drop and refusal counter by name (for a log line)."""
        names = _by_value(self.counts)
        names.update({f"drop_{k}": v for k, v in _by_value(self.drops).items()})
        names.update({f"refused_{k}": v for k, v in _by_value(self.refusals).items()})
        return dict(sorted(names.items()))

    def snapshot(self, vip_pool: PoolUsage | None = None,
                 dns: Mapping[str, int] | None = None) -> Counters:
        services = {
            name: ServiceCounters(s.flows_opened, s.flows_active, s.bytes_up, s.bytes_down)
            for name, s in self._services.items()
        }
        totals = ServiceCounters(*(sum(getattr(s, f) for s in services.values())
                                   for f in ("flows_opened", "flows_active", "bytes_up",
                                             "bytes_down")))
        latency = Histogram(self._bounds, tuple(self._buckets), self._latency_sum,
                            sum(self._buckets))
        failures = _by_value(self.dial_failures) | _by_value(self.refusals)
        return Counters(flows=totals, services=services,
                        dns=dict(dns) if dns is not None else dict.fromkeys(DNS_OUTCOMES, 0),
                        dial_failures=failures, packets_dropped=_by_value(self.drops),
                        dial_latency=latency, vip_pool=vip_pool,
                        buffer_high_water=_by_value(self.buffer_high_water))
