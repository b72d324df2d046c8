"""Hairpin NAT for intercepted TCP flows, and a UDP pseudo-flow table (sans-IO).

Theory of operation (design.md §2): the TUN has address ``T``; a second address ``N`` is
routed into the TUN; the daemon listens on ``T:L``. For an intercepted flow the kernel writes
``T:sport -> VIP:vport`` into the TUN; ``outbound`` rewrites it in place to
``N:natport -> T:L`` and the engine writes it back. The kernel delivers it to the listener,
which accepts a socket whose peer is ``N:natport``; the engine remembers, per nat port, where
the app meant to go. Replies ``T:L -> N:natport`` come out of the TUN; ``inbound`` rewrites them
to ``VIP:vport -> T:sport``. Checksums are updated with per-flow RFC 1624 deltas.

Flow states and expiry (``now`` is the loop's monotonic time)::

    SYN --reply seen--> OPEN --FIN one way--> HALF_CLOSED --FIN both ways--> CLOSED
     |                   |                       |                             ^
     +-- RST either way -+-----------------------+-----------------------------+
    expiry: SYN after syn_timeout idle; OPEN after idle_timeout; HALF_CLOSED after
    half_closed_timeout; CLOSED after a linger (the nat port stays reserved until then).

The linger depends on who closed first. When the listener side sent the first FIN, its
socket (``T:L <-> N:natport``) waits in TIME_WAIT for 60 s, and a new flow on the same nat
port would collide with it: ``linger`` (60 s). When the app closed first, or on a reset,
nothing waits on the listener side: ``short_linger`` (10 s) absorbs stray segments. Closed
entries do not count against ``max_flows`` (only the port range bounds them), so a sustained
connection rate is limited by ports / linger, not by the active-flow cap.

The NAT owns the one record of each flow (``NatFlow``): the engine keeps no table of its own
but hangs what it needs on the record's ``endpoint`` (the bridge of a dialed flow, the
protocol of a local endpoint), typed by the table's parameter ``T``.

API:

- ``TcpNat[T](tun_ip, nat_ip, listen_port, ...)``; ``is_inbound(parsed)`` tells a listener
  reply (for ``inbound``) from an app's packet (for ``outbound``); each returns the flow after
  rewriting ``packet`` (a bytearray) in place, or a ``NatDrop`` (counted in ``drops``). Only a
  plain SYN (no ACK) opens a flow, so the engine must call ``outbound`` only for packets to
  intercepted addresses and may answer a ``NO_FLOW`` or refused SYN with
  ``packet.build.build_tcp_rst``.
- ``flow(natport)`` and ``flow_for(key)`` find a flow; ``flows()`` lists them; ``close(natport,
  now)`` when the engine is done with a flow; ``expire(now) -> list[NatFlow[T]]`` (the flows
  removed), called about once a second.
- ``UdpFlowTable[T]``: 4-tuple -> flow id with idle expiry and a cap, for UDP relaying, with
  the engine's endpoint of each flow (``attach``, ``endpoint``, ``remove``).
"""

from __future__ import annotations

import enum
import random
import struct
from collections import Counter, OrderedDict
from typing import Generic, NamedTuple, TypeVar

from tunneler.packet.checksum import address_words, apply_delta, checksum_delta
from tunneler.packet.parse import PROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Parsed

DEFAULT_PORT_RANGE = (20000, 59999)
DEFAULT_MAX_TCP_FLOWS = 4096
DEFAULT_MAX_UDP_FLOWS = 1024
SYN_TIMEOUT = 10.0
IDLE_TIMEOUT = 7200.0
HALF_CLOSED_TIMEOUT = 300.0
CLOSED_LINGER = 60.0  # the listener closed first: its socket sits in TIME_WAIT (60 s on Linux)
SHORT_LINGER = 10.0  # the app closed first, or a reset: only stray segments can still come
UDP_IDLE_TIMEOUT = 30.0  # a UDP flow without traffic either way (engine and run-host alike)

T = TypeVar("T")

_ADDRS = struct.Struct("!II")
_PORTS = struct.Struct("!HH")
_SUM = struct.Struct("!H")


class NatDrop(enum.Enum):
    """Why the NAT refused a packet."""

    NOT_TCP4 = "not_tcp4"
    NO_FLOW = "no_flow"
    TABLE_FULL = "table_full"
    PORTS_EXHAUSTED = "ports_exhausted"


class FlowState(enum.Enum):
    """Lifecycle of a NAT entry (see the module docstring)."""

    SYN = "syn"
    OPEN = "open"
    HALF_CLOSED = "half_closed"
    CLOSED = "closed"


class OriginalDestination(NamedTuple):
    """Where an accepted connection was headed, and who opened it."""

    src_ip: int
    src_port: int
    dst_ip: int
    dst_port: int


class NatFlow(Generic[T]):
    """One flow: its 4-tuple, nat port, state, and the engine's ``endpoint`` (None at first)."""

    __slots__ = (
        "endpoint",
        "fin_in",
        "fin_out",
        "ip_in",
        "ip_out",
        "key",
        "l4_in",
        "l4_out",
        "last_seen",
        "listener_first",
        "nat_port",
        "state",
    )

    def __init__(self, key: OriginalDestination, nat_port: int, now: float) -> None:
        self.key = key
        self.nat_port = nat_port
        self.state = FlowState.SYN
        self.last_seen = now
        self.fin_out = self.fin_in = self.listener_first = False
        self.ip_out = self.l4_out = self.ip_in = self.l4_in = 0
        self.endpoint: T | None = None


def _deltas(
    old_addrs: tuple[int, int],
    new_addrs: tuple[int, int],
    old_ports: tuple[int, int],
    new_ports: tuple[int, int],
) -> tuple[int, int]:
    """Return (IP header delta, TCP checksum delta) for rewriting addresses and ports."""
    old = address_words(old_addrs[0]) + address_words(old_addrs[1])
    new = address_words(new_addrs[0]) + address_words(new_addrs[1])
    return checksum_delta(old, new), checksum_delta(old + old_ports, new + new_ports)


class TcpNat(Generic[T]):
    """The hairpin NAT table of design.md §2 (TCP over IPv4)."""

    def __init__(
        self,
        tun_ip: int,
        nat_ip: int,
        listen_port: int,
        *,
        port_range: tuple[int, int] = DEFAULT_PORT_RANGE,
        max_flows: int = DEFAULT_MAX_TCP_FLOWS,
        syn_timeout: float = SYN_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        half_closed_timeout: float = HALF_CLOSED_TIMEOUT,
        linger: float = CLOSED_LINGER,
        short_linger: float = SHORT_LINGER,
        rng: random.Random | None = None,
    ) -> None:
        low, high = port_range
        if not 1 <= low <= high <= 0xFFFF:
            raise ValueError(f"bad NAT port range {port_range}")
        self.tun_ip = tun_ip
        self.nat_ip = nat_ip
        self.listen_port = listen_port
        self.max_flows = max_flows
        self._low, self._size = low, high - low + 1
        self._cursor = rng.randrange(self._size) if rng is not None else 0
        self._timeouts = {
            FlowState.SYN: syn_timeout,
            FlowState.OPEN: idle_timeout,
            FlowState.HALF_CLOSED: half_closed_timeout,
            FlowState.CLOSED: linger,
        }
        self._short_linger = short_linger
        self._closed = 0
        self._by_key: dict[OriginalDestination, NatFlow[T]] = {}
        self._by_port: dict[int, NatFlow[T]] = {}
        self.drops: Counter[NatDrop] = Counter()
        self.opened = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._by_port)

    @property
    def active(self) -> int:
        """Flows not yet closed (what `max_flows` caps)."""
        return len(self._by_port) - self._closed

    def is_inbound(self, parsed: Parsed) -> bool:
        """Return True for a reply from the listener (``T:L -> N:*``)."""
        return (
            parsed.src_port == self.listen_port
            and parsed.src == self.tun_ip
            and parsed.dst == self.nat_ip
        )

    def outbound(
        self, packet: bytearray | memoryview, parsed: Parsed, now: float
    ) -> NatFlow[T] | NatDrop:
        """Rewrite ``T:sport -> VIP:vport`` to ``N:natport -> T:L``, opening a flow on SYN."""
        if parsed.version != 4 or parsed.proto != PROTO_TCP:
            return self._drop(NatDrop.NOT_TCP4)
        key = OriginalDestination(parsed.src, parsed.src_port, parsed.dst, parsed.dst_port)
        flow = self._by_key.get(key)
        flags = parsed.tcp_flags
        if flow is None or (flow.state is FlowState.CLOSED and flags & TCP_SYN):
            if flags & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN:
                return self._drop(NatDrop.NO_FLOW)
            opened = self._open(key, now)
            if isinstance(opened, NatDrop):
                return self._drop(opened)
            flow = opened
        self._track(flow, flags, outbound=True, now=now)
        self._rewrite(
            packet,
            parsed.l4_offset,
            flow.ip_out,
            flow.l4_out,
            (self.nat_ip, self.tun_ip),
            (flow.nat_port, self.listen_port),
        )
        return flow

    def inbound(
        self, packet: bytearray | memoryview, parsed: Parsed, now: float
    ) -> NatFlow[T] | NatDrop:
        """Rewrite a listener reply ``T:L -> N:natport`` to ``VIP:vport -> T:sport``."""
        if parsed.version != 4 or parsed.proto != PROTO_TCP or not self.is_inbound(parsed):
            return self._drop(NatDrop.NOT_TCP4)
        flow = self._by_port.get(parsed.dst_port)
        if flow is None:
            return self._drop(NatDrop.NO_FLOW)
        self._track(flow, parsed.tcp_flags, outbound=False, now=now)
        key = flow.key
        self._rewrite(
            packet,
            parsed.l4_offset,
            flow.ip_in,
            flow.l4_in,
            (key.dst_ip, key.src_ip),
            (key.dst_port, key.src_port),
        )
        return flow

    def flow(self, nat_port: int) -> NatFlow[T] | None:
        """The flow using ``nat_port`` (an accepted socket's peer port), if any."""
        return self._by_port.get(nat_port)

    def flow_for(self, key: OriginalDestination) -> NatFlow[T] | None:
        """The newest flow of the app's 4-tuple, if any."""
        return self._by_key.get(key)

    def flows(self) -> list[NatFlow[T]]:
        """Every flow in the table (closed ones that still linger included)."""
        return list(self._by_port.values())

    def close(self, nat_port: int, now: float) -> None:
        """Mark a flow closed (the engine is done with it); its port frees after the linger."""
        flow = self._by_port.get(nat_port)
        if flow is not None and flow.state is not FlowState.CLOSED:
            if not flow.fin_out:  # the app had not closed: assume the listener side did
                flow.listener_first = True
            self._set_closed(flow)
            flow.last_seen = now

    def expire(self, now: float) -> list[NatFlow[T]]:
        """Remove timed-out flows (their nat ports are free again); return them."""
        freed = [flow for flow in self._by_port.values()
                 if now - flow.last_seen >= self._timeout(flow)]
        for flow in freed:
            self._remove(flow)
        self.expired += len(freed)
        return freed

    def _timeout(self, flow: NatFlow[T]) -> float:
        if flow.state is FlowState.CLOSED and not flow.listener_first:
            return self._short_linger
        return self._timeouts[flow.state]

    def _set_closed(self, flow: NatFlow[T]) -> None:
        flow.state = FlowState.CLOSED
        self._closed += 1

    def _drop(self, reason: NatDrop) -> NatDrop:
        self.drops[reason] += 1
        return reason

    def _open(self, key: OriginalDestination, now: float) -> NatFlow[T] | NatDrop:
        if self.active >= self.max_flows:
            return NatDrop.TABLE_FULL
        nat_port = self._allocate_port()
        if nat_port is None:
            return NatDrop.PORTS_EXHAUSTED
        flow: NatFlow[T] = NatFlow(key, nat_port, now)
        flow.ip_out, flow.l4_out = _deltas(
            (key.src_ip, key.dst_ip),
            (self.nat_ip, self.tun_ip),
            (key.src_port, key.dst_port),
            (nat_port, self.listen_port),
        )
        flow.ip_in, flow.l4_in = _deltas(
            (self.tun_ip, self.nat_ip),
            (key.dst_ip, key.src_ip),
            (self.listen_port, nat_port),
            (key.dst_port, key.src_port),
        )
        self._by_key[key] = flow
        self._by_port[nat_port] = flow
        self.opened += 1
        return flow

    def _allocate_port(self) -> int | None:
        for _ in range(self._size):
            port = self._low + self._cursor
            self._cursor = (self._cursor + 1) % self._size
            if port not in self._by_port:
                return port
        return None

    def _remove(self, flow: NatFlow[T]) -> None:
        if flow.state is FlowState.CLOSED:
            self._closed -= 1
        del self._by_port[flow.nat_port]
        if self._by_key.get(flow.key) is flow:
            del self._by_key[flow.key]

    def _track(self, flow: NatFlow[T], flags: int, *, outbound: bool, now: float) -> None:
        flow.last_seen = now
        if flow.state is FlowState.CLOSED:
            return
        if flags & TCP_RST:
            self._set_closed(flow)
            return
        if flags & TCP_FIN:
            if outbound:
                flow.fin_out = True
            else:
                flow.listener_first = flow.listener_first or not flow.fin_out
                flow.fin_in = True
            if flow.fin_out and flow.fin_in:
                self._set_closed(flow)
            else:
                flow.state = FlowState.HALF_CLOSED
        elif flow.state is FlowState.SYN and not outbound:
            flow.state = FlowState.OPEN

    @staticmethod
    def _rewrite(
        packet: bytearray | memoryview,
        l4: int,
        ip_delta: int,
        l4_delta: int,
        addrs: tuple[int, int],
        ports: tuple[int, int],
    ) -> None:
        _ADDRS.pack_into(packet, 12, *addrs)
        _SUM.pack_into(packet, 10, apply_delta(_SUM.unpack_from(packet, 10)[0], ip_delta))
        _PORTS.pack_into(packet, l4, *ports)
        old = _SUM.unpack_from(packet, l4 + 16)[0]
        _SUM.pack_into(packet, l4 + 16, apply_delta(old, l4_delta))


class _UdpEntry(Generic[T]):
    __slots__ = ("endpoint", "key", "seen")

    def __init__(self, key: OriginalDestination, seen: float) -> None:
        self.key = key
        self.seen = seen
        self.endpoint: T | None = None


class UdpFlowTable(Generic[T]):
    """UDP pseudo-flows: (src ip, src port, dst ip, dst port) -> flow id, idle expiry, cap."""

    def __init__(
        self, *, max_flows: int = DEFAULT_MAX_UDP_FLOWS, idle_timeout: float = UDP_IDLE_TIMEOUT
    ) -> None:
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self._ids: dict[OriginalDestination, int] = {}
        self._flows: OrderedDict[int, _UdpEntry[T]] = OrderedDict()
        self._next_id = 1
        self.drops: Counter[NatDrop] = Counter()

    def __len__(self) -> int:
        return len(self._flows)

    def flow_for(self, parsed: Parsed, now: float) -> tuple[int, bool] | NatDrop:
        """Return ``(flow_id, created)`` for the datagram's 4-tuple, or ``TABLE_FULL``."""
        key = OriginalDestination(parsed.src, parsed.src_port, parsed.dst, parsed.dst_port)
        flow_id = self._ids.get(key)
        if flow_id is not None:
            self.touch(flow_id, now)
            return flow_id, False
        if len(self._flows) >= self.max_flows:
            self.drops[NatDrop.TABLE_FULL] += 1
            return NatDrop.TABLE_FULL
        flow_id = self._next_id
        self._next_id += 1
        self._ids[key] = flow_id
        self._flows[flow_id] = _UdpEntry(key, now)
        return flow_id, True

    def attach(self, flow_id: int, endpoint: T) -> None:
        """Hang the engine's endpoint on a flow."""
        self._flows[flow_id].endpoint = endpoint

    def endpoint(self, flow_id: int) -> T | None:
        """The endpoint attached to a flow, if any."""
        entry = self._flows.get(flow_id)
        return entry.endpoint if entry is not None else None

    def endpoints(self) -> list[T]:
        """Every attached endpoint."""
        return [e.endpoint for e in self._flows.values() if e.endpoint is not None]

    def touch(self, flow_id: int, now: float) -> None:
        """Record activity (either direction) on a flow."""
        entry = self._flows.get(flow_id)
        if entry is not None:
            entry.seen = now
            self._flows.move_to_end(flow_id)

    def remove(self, flow_id: int) -> T | None:
        """Forget a flow (its overlay connection closed); return its endpoint."""
        entry = self._flows.pop(flow_id, None)
        if entry is None:
            return None
        del self._ids[entry.key]
        return entry.endpoint

    def expire(self, now: float) -> list[tuple[int, T | None]]:
        """Remove flows idle for ``idle_timeout``; return their ids and endpoints (oldest
        first)."""
        expired: list[int] = []
        for flow_id, entry in self._flows.items():
            if now - entry.seen < self.idle_timeout:
                break
            expired.append(flow_id)
        return [(flow_id, self.remove(flow_id)) for flow_id in expired]
