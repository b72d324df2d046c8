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

With ``--tcp-redirect`` (tunneler.tun.redirect) nftables DNATs this host's TCP to intercepts
straight to ``T:L``: the socket arrives without a SYN through the TUN, its peer is the app
itself, ``SO_ORIGINAL_DST`` gives the VIP and port. The same admission (intercept, caps,
draining) decides; the flow's bridge takes the socket at once but reads (and forwards) only
once the service is dialed, and resets it if the dial fails (the app's ``connect()`` has
already succeeded: the mode's trade-off).

A SYN to a registered local endpoint (``register_local``: the engine registers DNS over TCP
on the DNS IP, port 53) takes the same hairpin without a dial, to that endpoint's protocol.
Flows end when the local socket closes (the NAT entry lingers for the last segments) or, if
the socket never arrives, when the NAT expires the entry.

The NAT owns the one record of each flow (``NatFlow``); what the engine needs of a flow (its
socket's protocol, its service) hangs on that record as a ``FlowEnd``. A held SYN is kept as
bytes with its parsed header, so it is never parsed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import cast

from tunneler.bridges import reset
from tunneler.counters import Count, Drop, Metrics, Refusal
from tunneler.dns.pool import VipPool
from tunneler.engine.bridge import InterceptBridge
from tunneler.engine.dialer import FlowInterceptor, dial_flow
from tunneler.engine.events import Events
from tunneler.engine.limits import Limits
from tunneler.engine.policy import InterceptPolicy, Match
from tunneler.engine.tunreader import TunPump
from tunneler.nat import FlowState, NatDrop, NatFlow, OriginalDestination, TcpNat
from tunneler.packet.build import build_tcp_rst
from tunneler.packet.parse import TCP_ACK, TCP_RST, TCP_SYN, Parsed
from tunneler.tun.redirect import original_destination

LISTEN_BACKLOG = 1024
IP_FREEBIND = 15  # linux/in.h

NAT_REFUSALS = {NatDrop.NOT_TCP4: Refusal.NAT_NOT_TCP4, NatDrop.NO_FLOW: Refusal.NAT_NO_FLOW,
                NatDrop.TABLE_FULL: Refusal.NAT_TABLE_FULL,
                NatDrop.PORTS_EXHAUSTED: Refusal.NAT_PORTS_EXHAUSTED}
#: a local endpoint's protocol for one accepted socket, given the callback of its end
LocalProtocolFactory = Callable[[Callable[[], None]], asyncio.Protocol]
#: an accepted socket's destination before the kernel's DNAT, or None (tunneler.tun.redirect)
OriginalDestinationLookup = Callable[[socket.socket], "tuple[int, int] | None"]


class FlowEnd:
    """What the engine hangs on a NAT flow: the bridge of a dialed flow (with its service),
    or the protocol factory of a local endpoint; `done` once its socket is gone."""

    __slots__ = ("bridge", "done", "local", "service")

    def __init__(self, bridge: InterceptBridge | None, service: str = "",
                 local: LocalProtocolFactory | None = None) -> None:
        self.bridge = bridge
        self.service = service
        self.local = local
        self.done = False


class _Pending:
    """A dial in progress: for the held SYN (TUN path) or the accepted socket (redirect)."""

    __slots__ = ("bridge", "key", "parsed", "service", "syn", "task", "transport")

    def __init__(self, key: OriginalDestination, service: str, metrics: Metrics, *,
                 syn: bytearray | None = None, parsed: Parsed | None = None,
                 transport: asyncio.Transport | None = None) -> None:
        self.key = key
        self.syn = syn
        self.parsed = parsed
        self.transport = transport
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
                 limits: Limits, nat_ip: IPv4Address, *,
                 lookup: OriginalDestinationLookup = original_destination) -> None:
        super().__init__(pump, policy, pool, events, limits)
        self._tun_ip = int(pool.tun_ip)
        self._nat_ip = nat_ip
        self._lookup = lookup
        self._redirected: dict[OriginalDestination, FlowEnd] = {}  # live redirected flows
        self.nat: TcpNat[FlowEnd] | None = None
        self._server: asyncio.Server | None = None
        self._locals: dict[tuple[int, int], LocalProtocolFactory] = {}
        self._pending: dict[OriginalDestination, _Pending] = {}
        self._pending_by_service: Counter[str] = Counter()
        self._live = 0  # flows with an endpoint whose socket has not ended
        self._drained: asyncio.Event | None = None

    @property
    def flows(self) -> int:
        """Flows with a NAT entry and a live endpoint (pending dials excluded)."""
        return self._live

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def nat_ip(self) -> IPv4Address:
        """N, the source address of hairpinned SYNs."""
        return self._nat_ip

    @property
    def listen_port(self) -> int:
        """L, the port of the listener on T (after `start`)."""
        assert self.nat is not None
        return self.nat.listen_port

    @property
    def _service_pending_cap(self) -> int:
        """Pending dials one service may hold: two thirds of the global cap (rounded up)."""
        return -(-2 * self.limits.max_pending_dials // 3)

    def register_local(self, ip: IPv4Address, port: int, factory: LocalProtocolFactory) -> None:
        """Serve TCP to ``ip:port`` here (no dial): each accepted socket gets ``factory``'s
        protocol."""
        self._locals[int(ip), port] = factory

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
            if isinstance(nat.inbound(packet, parsed, now), NatDrop):
                self.metrics.count(Count.TCP_INBOUND_NO_FLOW)
            else:
                self.pump.write(packet)
            return
        if parsed.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN:
            self._syn(packet, parsed, now)
            return
        if isinstance(nat.outbound(packet, parsed, now), NatDrop):
            self.metrics.count(Count.TCP_OUTBOUND_NO_FLOW)
            self._refuse(packet, parsed)
        else:
            self.pump.write(packet)

    def _syn(self, packet: memoryview, parsed: Parsed, now: float) -> None:
        key = OriginalDestination(parsed.src, parsed.src_port, parsed.dst, parsed.dst_port)
        if key in self._pending:
            self.metrics.drop(Drop.TCP_SYN_RETRANSMIT)
            return
        flow = self._nat().flow_for(key)
        if flow is not None and flow.state is not FlowState.CLOSED:
            self._forward_syn(packet, parsed, now)  # a retransmission after the release
            return
        local = self._locals.get((parsed.dst, parsed.dst_port))
        if self.draining:
            self.metrics.refuse(Refusal.DRAINING)
            self._refuse(packet, parsed)
        elif local is not None:
            self._open(packet, parsed, now, FlowEnd(None, local=local))
        elif parsed.version != 4:
            self.metrics.refuse(Refusal.NOT_IPV4)
            self._refuse(packet, parsed)
        else:
            self._new_flow(packet, parsed, key)

    def _new_flow(self, packet: memoryview, parsed: Parsed, key: OriginalDestination) -> None:
        match = self._admit(key)
        if isinstance(match, Refusal):
            self.metrics.refuse(match)
            self._refuse(packet, parsed)
        else:
            self._start_dial(_Pending(key, match.target.service, self.metrics,
                                      syn=bytearray(packet), parsed=parsed.copy()), match)

    def _admit(self, key: OriginalDestination) -> Match | Refusal:
        """The intercept a new flow dials, or why it is refused (caps, no intercept)."""
        match = self.policy.match("tcp", key.dst_ip, key.dst_port)
        if match is None:
            return Refusal.NO_INTERCEPT
        if self._live + len(self._pending) >= self.limits.max_tcp_flows:
            return Refusal.FLOW_CAP
        if len(self._pending) >= self.limits.max_pending_dials:
            return Refusal.PENDING_CAP
        if self._pending_by_service[match.target.service] >= self._service_pending_cap:
            return Refusal.SERVICE_PENDING_CAP  # a flood spares other services
        return match

    def _start_dial(self, pending: _Pending, match: Match) -> None:
        self._pending[pending.key] = pending
        self._pending_by_service[pending.service] += 1
        pending.task = asyncio.get_running_loop().create_task(self._dial(pending, match))
        self.metrics.count(Count.TCP_DIALS_STARTED)

    def _forward_syn(self, packet: memoryview | bytearray, parsed: Parsed,
                     now: float) -> NatFlow[FlowEnd] | None:
        """NAT-rewrite a SYN and write it into the TUN; returns its flow or None (refused)."""
        flow = self._nat().outbound(packet, parsed, now)
        if isinstance(flow, NatDrop):
            self.metrics.refuse(NAT_REFUSALS[flow])
            self._refuse(packet, parsed)
            return None
        self.pump.write(packet)
        return flow

    def _open(self, packet: memoryview | bytearray, parsed: Parsed, now: float,
              end: FlowEnd) -> NatFlow[FlowEnd] | None:
        """Let a SYN through the NAT to our listener, with ``end`` waiting for its socket."""
        flow = self._forward_syn(packet, parsed, now)
        if flow is not None:
            flow.endpoint = end
            self._live += 1
        return flow

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
        if pending.transport is not None:
            self._bridge_redirected(pending, dialed)
        elif dialed:
            self._release(pending)
        else:
            assert pending.syn is not None and pending.parsed is not None
            self._refuse(pending.syn, pending.parsed)

    def _release(self, pending: _Pending) -> None:
        """The dial is up: let the held SYN through the NAT to our listener."""
        bridge = pending.bridge
        assert pending.syn is not None and pending.parsed is not None
        if self.draining or bridge.done:
            bridge.abort()
            self._refuse(pending.syn, pending.parsed)
            return
        loop = asyncio.get_running_loop()
        end = FlowEnd(bridge, pending.service)
        flow = self._open(pending.syn, pending.parsed, loop.time(), end)
        if flow is None:
            bridge.abort()
            return
        self.pool.acquire(IPv4Address(pending.key.dst_ip), loop.time())
        bridge.on_lost(lambda: self._finish(flow))
        self.events.flow_opened("tcp", pending.service, pending.key)

    # -- accepted sockets ----------------------------------------------------------------------
    def accepted(self, transport: asyncio.Transport) -> None:
        """A socket reached the listener: from ``N:natport``, give it to its flow; else it
        may be a redirected one."""
        peer = transport.get_extra_info("peername")
        if not peer or peer[0] != str(self._nat_ip):
            self._redirect_accepted(transport, peer)
            return
        flow = self._nat().flow(peer[1])
        end = flow.endpoint if flow is not None else None
        if flow is None or end is None or end.done:
            self.metrics.count(Count.TCP_ACCEPT_UNKNOWN)
            reset(transport)
            return
        protocol: asyncio.Protocol
        if end.local is not None:
            protocol = end.local(lambda: self._finish(flow))
        else:
            assert end.bridge is not None
            protocol = end.bridge
        transport.set_protocol(protocol)
        protocol.connection_made(transport)

    def _redirect_accepted(self, transport: asyncio.Transport, peer: object) -> None:
        """A socket the kernel DNAT'ed to us (--tcp-redirect): admit it, dial, then bridge."""
        sock = transport.get_extra_info("socket")
        found = self._lookup(sock) if sock is not None and isinstance(peer, tuple) else None
        if found is None:
            self.metrics.count(Count.TCP_ACCEPT_UNKNOWN)
            reset(transport)
            return
        assert isinstance(peer, tuple)
        key = OriginalDestination(int(IPv4Address(peer[0])), int(peer[1]), *found)
        match = Refusal.DRAINING if self.draining else self._admit(key)
        if isinstance(match, Refusal):
            self.metrics.refuse(match)
            reset(transport)
            return
        pending = _Pending(key, match.target.service, self.metrics, transport=transport)
        # the bridge takes the socket now: it stops reading until the circuit is up and holds
        # what a loop reads anyway (uvloop starts reading after connection_made)
        transport.set_protocol(pending.bridge)
        pending.bridge.connection_made(transport)
        self._start_dial(pending, match)

    def _bridge_redirected(self, pending: _Pending, dialed: bool) -> None:
        bridge = pending.bridge
        if not dialed or self.draining or bridge.done:  # done: the app closed meanwhile
            bridge.abort()
            self.metrics.count(Count.TCP_RST_SENT)
            return
        end = FlowEnd(bridge, pending.service)
        self._redirected[pending.key] = end
        self._live += 1
        self.pool.acquire(IPv4Address(pending.key.dst_ip), asyncio.get_running_loop().time())
        bridge.on_lost(lambda: self._end(end, pending.key))
        self.events.flow_opened("tcp", pending.service, pending.key)

    def _finish(self, flow: NatFlow[FlowEnd]) -> None:
        """The local socket of ``flow`` closed (its NAT entry lingers for the last segments)."""
        end = flow.endpoint
        if end is None or end.done:
            return
        self._nat().close(flow.nat_port, asyncio.get_running_loop().time())
        self._end(end, flow.key)
        # the entry lingers 60 s for the last segments: it must not keep the bridge (its
        # overlay connection, crypto state and buffers: ~3 KB a flow, 9 MiB after 3 s of
        # bench/peers.py new connections) nor the bridge's reference cycle back to the flow
        end.bridge = end.local = None

    def _end(self, end: FlowEnd, key: OriginalDestination) -> None:
        """A flow's local socket is gone: count it, free its VIP (hairpin or redirect)."""
        if end.done:
            return
        end.done = True
        self._live -= 1
        self._redirected.pop(key, None)
        if not self._live and self._drained is not None:
            self._drained.set()
        if end.bridge is not None:
            self.pool.release(IPv4Address(key.dst_ip), asyncio.get_running_loop().time())
            self.events.flow_closed("tcp", end.service, key)

    def expire(self, now: float) -> None:
        """Drop NAT entries that timed out; give up flows whose socket never arrived."""
        for flow in self._nat().expire(now):
            end = flow.endpoint
            if end is not None and not end.done:
                self.metrics.count(Count.TCP_FLOWS_EXPIRED)
                if end.bridge is not None:
                    end.bridge.abort()
                self._finish(flow)

    def _nat(self) -> TcpNat[FlowEnd]:
        assert self.nat is not None
        return self.nat

    def _live_flows(self) -> list[NatFlow[FlowEnd]]:
        return [f for f in self._nat().flows() if f.endpoint is not None and not f.endpoint.done]

    # -- shutdown ------------------------------------------------------------------------------
    async def close(self, timeout: float) -> None:
        """Refuse new flows, let open ones finish for ``timeout`` seconds, reset the rest."""
        self.draining = True
        for pending in list(self._pending.values()):
            if pending.task is not None:
                pending.task.cancel()
            if pending.transport is not None:
                pending.bridge.abort()  # a redirected socket still waiting for its dial
        if self._live:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._drained.wait()
        for flow in self._live_flows() if self.nat is not None else []:
            assert flow.endpoint is not None
            if flow.endpoint.bridge is not None:
                flow.endpoint.bridge.abort()
            self._finish(flow)
        for key, end in list(self._redirected.items()):
            if end.bridge is not None:
                end.bridge.abort()
            self._end(end, key)
        if self._server is not None:
            self._server.close()
