"""Intercepted UDP: one overlay connection per flow, datagram by datagram (design.md §2).

A flow is the 4-tuple of the app's datagrams (``UdpFlowTable``, which also keeps each flow's
``UdpFlow``: the engine has no table of its own). Its first datagram looks up
the intercept (none: ICMP port unreachable) and dials the service; datagrams that arrive while
the dial is pending are queued (at most ``Limits.max_udp_queued``, then dropped and counted).
Each datagram from the service becomes one UDP packet ``VIP:vport -> app`` written into the
TUN. A flow ends after ``udp_idle_timeout`` seconds without traffic either way, or when the
overlay connection closes. Flows, payload bytes, dials and the pending queue's size are counted
per service in the metrics.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address

from tunneler.counters import Buffer, Drop, Refusal
from tunneler.dns.pool import VipPool
from tunneler.engine.dialer import FlowInterceptor, dial_flow
from tunneler.engine.events import Events
from tunneler.engine.limits import Limits
from tunneler.engine.policy import InterceptPolicy, Match
from tunneler.engine.tunreader import TunPump
from tunneler.nat import NatDrop, OriginalDestination, UdpFlowTable
from tunneler.overlay import OverlayConnection
from tunneler.packet.build import MAX_UDP_PAYLOAD, build_icmp_port_unreachable, build_udp4
from tunneler.packet.parse import Parsed


class UdpFlow:
    """The edge sink of one UDP flow: replies become packets written into the TUN."""

    def __init__(self, owner: UdpInterceptor, flow_id: int, key: OriginalDestination,
                 service: str) -> None:
        self.owner = owner
        self.flow_id = flow_id
        self.key = key
        self.service = service
        self.meter = owner.metrics.meter(service)
        self.conn: OverlayConnection | None = None
        self.queue: list[bytes] = []
        self.queued_bytes = 0
        self.task: asyncio.Task[None] | None = None
        self.closed = False

    def send(self, payload: bytes) -> None:
        """A datagram from the app."""
        if self.conn is not None:
            self.meter.bytes_up += len(payload)
            self.conn.write(payload)
        elif len(self.queue) < self.owner.limits.max_udp_queued:
            self.queue.append(payload)
            self.queued_bytes += len(payload)
            self.owner.metrics.buffer_level(Buffer.UDP_DIAL_QUEUE, self.queued_bytes)
        else:
            self.owner.metrics.drop(Drop.UDP_QUEUE)

    def close(self) -> None:
        """End the flow (idle, shutdown, or dial failure)."""
        self.closed = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.conn is not None:
            self.conn.close()
        self.queue.clear()
        self.queued_bytes = 0

    # -- OverlaySink ---------------------------------------------------------------------------
    def edge_connected(self, conn: OverlayConnection) -> None:
        self.conn = conn
        self.meter.bytes_up += self.queued_bytes
        for payload in self.queue:
            conn.write(payload)
        self.queue.clear()
        self.queued_bytes = 0

    def edge_data(self, data: bytes) -> None:
        if self.closed or len(data) > MAX_UDP_PAYLOAD:
            self.owner.metrics.drop(Drop.UDP_REPLY)
            return
        key = self.key
        self.meter.bytes_down += len(data)
        self.owner.reply(self.flow_id, build_udp4(key.dst_ip, key.dst_port, key.src_ip,
                                                  key.src_port, data))

    def edge_eof(self) -> None:
        """UDP has no half-close."""

    def edge_closed(self, abrupt: bool) -> None:
        self.owner.remove(self.flow_id)

    def set_link_writable(self, writable: bool) -> None:
        """Datagrams are dropped, never queued without bound: nothing to pause."""


class UdpInterceptor(FlowInterceptor):
    """The UDP flows of intercepted services."""

    def __init__(self, pump: TunPump, policy: InterceptPolicy, pool: VipPool, events: Events,
                 limits: Limits) -> None:
        super().__init__(pump, policy, pool, events, limits)
        self.table: UdpFlowTable[UdpFlow] = UdpFlowTable(
            max_flows=limits.max_udp_flows, idle_timeout=limits.udp_idle_timeout)

    def __len__(self) -> int:
        return len(self.table)

    def handle(self, packet: memoryview, parsed: Parsed, now: float) -> None:
        """One UDP datagram from the app (not to the DNS IP)."""
        result = self.table.flow_for(parsed, now)
        if isinstance(result, NatDrop):
            self.metrics.refuse(Refusal.FLOW_CAP)
            return
        flow_id, created = result
        payload = bytes(packet[parsed.payload_offset:])
        if not created:
            flow = self.table.endpoint(flow_id)
            if flow is not None:
                flow.send(payload)
            return
        match = None if self.draining or parsed.version != 4 else self.policy.match(
            "udp", parsed.dst, parsed.dst_port)
        if match is None:
            self.table.remove(flow_id)
            self.metrics.refuse(Refusal.NO_INTERCEPT)
            unreachable = build_icmp_port_unreachable(packet, parsed)
            if unreachable is not None:
                self.pump.write(unreachable)
            return
        key = OriginalDestination(parsed.src, parsed.src_port, parsed.dst, parsed.dst_port)
        flow = UdpFlow(self, flow_id, key, match.target.service)
        self.table.attach(flow_id, flow)
        self.pool.acquire(IPv4Address(key.dst_ip), now)
        flow.send(payload)
        flow.task = asyncio.get_running_loop().create_task(self._dial(flow, match))
        self.events.flow_opened("udp", flow.service, flow.key)

    async def _dial(self, flow: UdpFlow, match: Match) -> None:
        if not await dial_flow(match, flow, "udp", flow.key, self.events):
            self.remove(flow.flow_id)

    def reply(self, flow_id: int, packet: bytes) -> None:
        """Write a reply datagram and keep the flow alive."""
        self.table.touch(flow_id, asyncio.get_running_loop().time())
        self.pump.write(packet)

    def remove(self, flow_id: int) -> None:
        """Forget a flow and close its connection."""
        self._closed(self.table.remove(flow_id))

    def _closed(self, flow: UdpFlow | None) -> None:
        if flow is not None:
            flow.close()
            self.pool.release(IPv4Address(flow.key.dst_ip), asyncio.get_running_loop().time())
            self.events.flow_closed("udp", flow.service, flow.key)

    def expire(self, now: float) -> None:
        """End flows idle for the timeout."""
        for _, flow in self.table.expire(now):
            self._closed(flow)

    def close(self) -> None:
        """End every flow (shutdown)."""
        self.draining = True
        for flow in self.table.endpoints():
            self.remove(flow.flow_id)
