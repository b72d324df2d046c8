"""Intercepted TCP: hold the SYN, dial the service, then let the kernel terminate TCP (hairpin).

Life of a flow (design.md §2, reliability.md Z3)::

    SYN T:sport -> VIP:vport from the TUN
      no intercept / draining / cap reached ........ RST into the TUN at once (counted)
      intercepted: hold the SYN, dial the service (retransmitted SYNs dropped meanwhile)
        dial failed ................................ RST into the TUN
        dial up: NAT-rewrite the SYN to N:natport -> T:L and write it back
    the kernel completes the handshake with our listener on T:L; accept() sees peer N:natport
      -> the flow's InterceptBridge takes the socket over (``transport.set_protocol``)
    replies T:L -> N:natport come out of the TUN; the NAT rewrites them to VIP:vport -> T:sport

A SYN to the DNS IP on port 53 takes the same hairpin without a dial, to the DNS-over-TCP
protocol. Flows end when the local socket closes (the NAT entry lingers for the last segments)
or, if the socket never arrives, when the NAT expires the entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import Counter
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import cast

from tunneler.bridges import reset
from tunneler.counters import Count, Drop, Metrics, Refusal
from tunneler.dns.pool import VipPool
from tunneler.engine.bridge import InterceptBridge
from tunneler.engine.dialer import FlowInterceptor, dial_flow
from tunneler.engine.dnsserver import DNS_PORT
from tunneler.engine.events import Events
from tunneler.engine.limits import Limits
from tunneler.engine.policy import InterceptPolicy, Match
from tunneler.engine.tunreader import TunPump
from tunneler.nat import FlowState, NatDrop, OriginalDestination, TcpNat
from tunneler.packet.build import build_tcp_rst
from tunneler.packet.parse import TCP_ACK, TCP_RST, TCP_SYN, DropReason, Parsed, parse

LISTEN_BACKLOG = 1024
IP_FREEBIND = 15  # linux/in.h
_PORT = struct.Struct("!H")

NAT_REFUSALS = {NatDrop.NOT_TCP4: Refusal.NAT_NOT_TCP4, NatDrop.NO_FLOW: Refusal.NAT_NO_FLOW,
                NatDrop.TABLE_FULL: Refusal.NAT_TABLE_FULL,
                NatDrop.PORTS_EXHAUSTED: Refusal.NAT_PORTS_EXHAUSTED}
DnsProtocolFactory = Callable[[Callable[[], None]], asyncio.Protocol]


class _Flow:
    __slots__ = ("bridge", "key", "nat_port", "service")

    def __init__(self, key: OriginalDestination, nat_port: int,
                 bridge: InterceptBridge | None, service: str = "") -> None:
        self.key = key
        self.nat_port = nat_port
        self.bridge = bridge  # None: DNS over TCP
        self.service = service


class _Pending:
    __slots__ = ("bridge", "key", "service", "syn", "task")

    def __init__(self, key: OriginalDestination, syn: bytes, service: str,
                 metrics: Metrics) -> None:
        self.key = key
        self.syn = syn
        self.service = service
        self.bridge = InterceptBridge(metrics.meter(service), metrics)
        self.task: asyncio.Task[None] | None = None


class _Acceptor(asyncio.Protocol):
    """Hands an accepted socket to the protocol of its flow."""

    def __init__(self, owner: TcpInterceptor) -> None:
        self._owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._owner.accepted(cast(asyncio.Transport, transport))


class TcpInterceptor(FlowInterceptor):
    """SYN handling, overlay dials, the hairpin NAT and the local listener."""

    def __init__(self, pump: TunPump, policy: InterceptPolicy, pool: VipPool, events: Events,
                 limits: Limits, dns_protocol: DnsProtocolFactory, nat_ip: IPv4Address) -> None:
        super().__init__(pump, policy, pool, events, limits)
        self._dns_protocol = dns_protocol
        self._tun_ip = int(pool.tun_ip)
        self._dns_ip = int(pool.dns_ip)
        self._nat_ip = nat_ip
        self.nat: TcpNat | None = None
        self._server: asyncio.Server | None = None
        self._pending: dict[OriginalDestination, _Pending] = {}
        self._pending_by_service: Counter[str] = Counter()
        self._by_key: dict[OriginalDestination, _Flow] = {}
        self._by_port: dict[int, _Flow] = {}
        self._parsed = Parsed()
        self._drained: asyncio.Event | None = None

    @property
    def flows(self) -> int:
        """Flows with a NAT entry and a live bridge (pending dials excluded)."""
        return len(self._by_port)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def _service_pending_cap(self) -> int:
        """Pending dials one service may hold: two thirds of the global cap (rounded up)."""
        return -(-2 * self.limits.max_pending_dials // 3)

    async def start(self) -> None:
        """Listen on ``T:ephemeral`` and create the NAT for that port."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Bind before the address is up (and without root in tests): IP_FREEBIND.
            sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            sock.bind((str(self.pool.tun_ip), 0))
        except OSError:
            sock.close()
            raise
        self._server = await loop.create_server(lambda: _Acceptor(self), sock=sock,
                                                backlog=LISTEN_BACKLOG)
        port = int(self._server.sockets[0].getsockname()[1])
        self.nat = TcpNat(self._tun_ip, int(self._nat_ip), port,
                          max_flows=self.limits.max_nat_entries)

    # -- packets from the TUN ------------------------------------------------------------------
    def handle(self, packet: memoryview, parsed: Parsed, now: float) -> None:
        """One TCP packet read from the TUN."""
        nat = self.nat
        assert nat is not None
        if nat.is_inbound(parsed):
            if nat.inbound(packet, parsed, now) is None:
                self.pump.write(packet)
            else:
                self.metrics.count(Count.TCP_INBOUND_NO_FLOW)
            return
        if parsed.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN:
            self._syn(packet, parsed, now)
            return
        if nat.outbound(packet, parsed, now) is None:
            self.pump.write(packet)
        else:
            self.metrics.count(Count.TCP_OUTBOUND_NO_FLOW)
            self._refuse(packet, parsed)

    def _syn(self, packet: memoryview, parsed: Parsed, now: float) -> None:
        key = OriginalDestination(parsed.src, parsed.src_port, parsed.dst, parsed.dst_port)
        if key in self._pending:
            self.metrics.drop(Drop.TCP_SYN_RETRANSMIT)
            return
        flow = self._by_key.get(key)
        if flow is not None and self._nat().state(flow.nat_port) is not FlowState.CLOSED:
            self._forward_syn(packet, parsed, now)  # a retransmission after the release
            return
        if self.draining:
            self.metrics.refuse(Refusal.DRAINING)
            self._refuse(packet, parsed)
        elif parsed.dst == self._dns_ip and parsed.dst_port == DNS_PORT:
            self._open_dns(packet, parsed, key, now)
        elif parsed.version != 4:
            self.metrics.refuse(Refusal.NOT_IPV4)
            self._refuse(packet, parsed)
        else:
            self._new_flow(packet, parsed, key)

    def _new_flow(self, packet: memoryview, parsed: Parsed, key: OriginalDestination) -> None:
        match = self.policy.match("tcp", parsed.dst, parsed.dst_port)
        if match is None:
            self.metrics.refuse(Refusal.NO_INTERCEPT)
            self._refuse(packet, parsed)
        elif len(self._by_port) + len(self._pending) >= self.limits.max_tcp_flows:
            self.metrics.refuse(Refusal.FLOW_CAP)
            self._refuse(packet, parsed)
        elif len(self._pending) >= self.limits.max_pending_dials:
            self.metrics.refuse(Refusal.PENDING_CAP)
            self._refuse(packet, parsed)
        elif self._pending_by_service[match.target.service] >= self._service_pending_cap:
            self.metrics.refuse(Refusal.SERVICE_PENDING_CAP)  # a flood spares other services
            self._refuse(packet, parsed)
        else:
            pending = _Pending(key, bytes(packet), match.target.service, self.metrics)
            self._pending[key] = pending
            self._pending_by_service[pending.service] += 1
            pending.task = asyncio.get_running_loop().create_task(self._dial(pending, match))
            self.metrics.count(Count.TCP_DIALS_STARTED)

    def _forward_syn(self, packet: memoryview, parsed: Parsed, now: float) -> int | None:
        """NAT-rewrite a SYN and write it into the TUN; returns the NAT port or None."""
        drop = self._nat().outbound(packet, parsed, now)
        if drop is not None:
            self.metrics.refuse(NAT_REFUSALS[drop])
            self._refuse(packet, parsed)
            return None
        nat_port: int = _PORT.unpack_from(packet, parsed.l4_offset)[0]
        self.pump.write(packet)
        return nat_port

    def _open_dns(self, packet: memoryview, parsed: Parsed, key: OriginalDestination,
                  now: float) -> None:
        nat_port = self._forward_syn(packet, parsed, now)
        if nat_port is not None:
            flow = _Flow(key, nat_port, None)
            self._by_key[key] = self._by_port[nat_port] = flow

    def _refuse(self, packet: memoryview | bytes | bytearray, parsed: Parsed) -> None:
        rst = build_tcp_rst(packet, parsed)
        if rst is not None:
            self.pump.write(rst)
            self.metrics.count(Count.TCP_RST_SENT)

    # -- dialing -------------------------------------------------------------------------------
    async def _dial(self, pending: _Pending, match: Match) -> None:
        try:
            dialed = await dial_flow(match, pending.bridge, "tcp", pending.key, self.events)
        finally:
            self._pending.pop(pending.key, None)
            self._pending_by_service[pending.service] -= 1
            if not self._pending_by_service[pending.service]:
                del self._pending_by_service[pending.service]
        if dialed:
            self._release(pending)
        else:
            self._refuse_held(pending)

    def _reparse(self, syn: bytes) -> tuple[bytearray, Parsed] | None:
        packet = bytearray(syn)
        parsed = parse(packet, self._parsed, check_ip_checksum=False)
        return None if isinstance(parsed, DropReason) else (packet, parsed)

    def _refuse_held(self, pending: _Pending) -> None:
        held = self._reparse(pending.syn)
        if held is not None:
            self._refuse(held[0], held[1])

    def _release(self, pending: _Pending) -> None:
        """The dial is up: let the held SYN through the NAT to our listener."""
        bridge = pending.bridge
        held = self._reparse(pending.syn)
        if self.draining or bridge.done or held is None:
            bridge.abort()
            self._refuse_held(pending)
            return
        loop = asyncio.get_running_loop()
        nat_port = self._forward_syn(memoryview(held[0]), held[1], loop.time())
        if nat_port is None:
            bridge.abort()
            return
        flow = _Flow(pending.key, nat_port, bridge, pending.service)
        self._by_key[pending.key] = self._by_port[nat_port] = flow
        vip = IPv4Address(pending.key.dst_ip)
        self.pool.acquire(vip, loop.time())
        bridge.on_lost(lambda: self._finish(flow))
        self.events.flow_opened("tcp", pending.service, pending.key)

    # -- accepted sockets ----------------------------------------------------------------------
    def accepted(self, transport: asyncio.Transport) -> None:
        """A socket from ``N:natport`` reached the listener: give it to its flow."""
        peer = transport.get_extra_info("peername")
        flow = self._by_port.get(peer[1]) if peer and peer[0] == str(self._nat_ip) else None
        if flow is None:
            self.metrics.count(Count.TCP_ACCEPT_UNKNOWN)
            reset(transport)
            return
        protocol: asyncio.Protocol
        if flow.bridge is None:
            protocol = self._dns_protocol(lambda: self._finish(flow))
        else:
            protocol = flow.bridge
        transport.set_protocol(protocol)
        protocol.connection_made(transport)

    def _finish(self, flow: _Flow) -> None:
        """The local socket of ``flow`` closed (its NAT entry lingers for the last segments)."""
        if self._by_port.get(flow.nat_port) is not flow:
            return
        loop = asyncio.get_running_loop()
        del self._by_port[flow.nat_port]
        if self._by_key.get(flow.key) is flow:
            del self._by_key[flow.key]
        self._nat().close(flow.nat_port, loop.time())
        if not self._by_port and self._drained is not None:
            self._drained.set()
        if flow.bridge is not None:
            self.pool.release(IPv4Address(flow.key.dst_ip), loop.time())
            self.events.flow_closed("tcp", flow.service, flow.key)

    def expire(self, now: float) -> None:
        """Drop NAT entries that timed out; give up flows whose socket never arrived."""
        for nat_port in self._nat().expire(now):
            flow = self._by_port.get(nat_port)
            if flow is not None:
                self.metrics.count(Count.TCP_FLOWS_EXPIRED)
                if flow.bridge is not None:
                    flow.bridge.abort()
                self._finish(flow)

    def _nat(self) -> TcpNat:
        assert self.nat is not None
        return self.nat

    # -- shutdown ------------------------------------------------------------------------------
    async def close(self, timeout: float) -> None:
        """Refuse new flows, let open ones finish for ``timeout`` seconds, reset the rest."""
        self.draining = True
        for pending in list(self._pending.values()):
            if pending.task is not None:
                pending.task.cancel()
        if self._by_port:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._drained.wait()
        for flow in list(self._by_port.values()):
            if flow.bridge is not None:
                flow.bridge.abort()
            self._finish(flow)
        if self._server is not None:
            self._server.close()
