"""The DNS server on the DNS IP: UDP from the packet path, TCP through the hairpin, forwarding.

Queries go to the sans-IO ``DnsResponder``, which counts each outcome. ``Reply`` is sent
back; ``Drop`` gets no answer; ``Forward`` goes to the upstream resolvers, each query from a
fresh connected UDP socket (a random source port per query, so replies cannot be spoofed by
guessing one), upstreams tried in order within ``Limits.dns_upstream_timeout`` (5 s) in total.
An answer is relayed unchanged once ``check_upstream_reply`` accepted it (stray or mismatched
datagrams are ignored); no answer gives SERVFAIL. A truncated UDP answer (TC set) is asked
again over TCP, and a query that came over TCP is forwarded over TCP (RFC 7766), so large
answers arrive whole. At most ``Limits.max_dns_in_flight`` (150) forwarded queries are in
flight; beyond that the newest gets SERVFAIL at once (counted).

UDP answers become packets ``DNS_IP:53 -> client`` written into the TUN. DNS over TCP
(``DnsTcpProtocol``) reads two-byte length-prefixed messages (buffer capped), answers each,
and closes after ``TCP_IDLE_TIMEOUT`` seconds without a query.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from collections.abc import Callable, Sequence
from typing import cast

from tunneler.counters import Count, Metrics
from tunneler.dns.answer import (
    MAX_QUERY,
    DnsResponder,
    Forward,
    Outcome,
    Reply,
    check_upstream_reply,
    servfail_for,
)
from tunneler.engine.events import Events
from tunneler.engine.limits import Limits
from tunneler.engine.tunreader import TunPump
from tunneler.errors import ConfigError
from tunneler.packet.build import build_udp4
from tunneler.packet.parse import Parsed

DNS_PORT = 53
TC_FLAG = 0x02  # in the third byte of the header
MAX_TCP_ANSWER = 65535
TCP_IDLE_TIMEOUT = 10.0
TCP_BUFFER_CAP = 2 * (2 + MAX_QUERY)
_LENGTH = struct.Struct("!H")

Upstream = tuple[str, int]
Send = Callable[[bytes], None]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_upstream(text: str) -> Upstream:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT`` -> (ip, port).

    Raises:
        ConfigError: not an IP address (names would need a resolver to reach the resolver).
    """
    host, port = text, DNS_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
        port = int(port_text) if port_text.isdigit() else -1
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text) if port_text.isdigit() else -1
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"--dns-upstream {text!r}: expected IP or IP:PORT") from None
    if not 0 < port < 65536:
        raise ConfigError(f"--dns-upstream {text!r}: bad port")
    return str(address), port


class _Answer(asyncio.DatagramProtocol):
    """One forwarded query: the first datagram that answers it resolves ``result``."""

    def __init__(self, query: bytes, forbidden: Sequence[Network], metrics: Metrics) -> None:
        self.query = query
        self.forbidden = forbidden
        self.metrics = metrics
        self.result: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        outcome = check_upstream_reply(self.query, data, self.forbidden)
        if isinstance(outcome, Reply):
            if not self.result.done():
                self.result.set_result(outcome.data)
        else:
            self.metrics.count(Count.DNS_UPSTREAM_REJECTED)

    def error_received(self, exc: Exception) -> None:
        self.metrics.count(Count.DNS_UPSTREAM_ERRORS)


class DnsServer:
    """Answers queries to the DNS IP; forwards the rest to the upstreams."""

    def __init__(self, pump: TunPump, responder: DnsResponder, events: Events, limits: Limits,
                 upstreams: Sequence[Upstream], forbidden: Sequence[Network]) -> None:
        self.pump = pump
        self.responder = responder
        self.events = events
        self.metrics = events.metrics
        self.limits = limits
        self.upstreams = list(upstreams)
        self.forbidden = list(forbidden)
        self.in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        responder.upstream = bool(self.upstreams)

    def handle_udp(self, packet: memoryview, parsed: Parsed, now: float) -> None:
        """A UDP datagram to ``DNS_IP:53`` from the TUN."""
        query = bytes(packet[parsed.payload_offset:])
        server, client, client_port = parsed.dst, parsed.src, parsed.src_port

        def send(data: bytes) -> None:
            self.pump.write(build_udp4(server, DNS_PORT, client, client_port, data))

        self.answer(query, now, send)

    def answer(self, query: bytes, now: float, send: Send, *, tcp: bool = False) -> None:
        """Decide about one query and send the answer (now, or when the upstream replied)."""
        outcome: Outcome = self.responder.handle(query, now)
        if isinstance(outcome, Reply):
            send(outcome.data)
        elif isinstance(outcome, Forward):  # a Drop is counted by the responder, not answered
            self._forward(outcome.query, send, tcp)

    def _forward(self, query: bytes, send: Send, tcp: bool) -> None:
        if self.in_flight >= self.limits.max_dns_in_flight:
            self.metrics.count(Count.DNS_REFUSED_IN_FLIGHT_CAP)
            failure = servfail_for(query)
            if failure is not None:
                send(failure)
            return
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._relay(query, send, tcp))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, query: bytes, send: Send, tcp: bool) -> None:
        try:
            reply = await self._ask_upstreams(query, tcp)
        finally:
            self.in_flight -= 1
        if reply is None:
            self.metrics.count(Count.DNS_UPSTREAM_FAILED)
            reply = servfail_for(query)
        else:
            self.metrics.count(Count.DNS_FORWARDED)
        if reply is not None:
            send(reply)

    async def _ask_upstreams(self, query: bytes, tcp: bool) -> bytes | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.dns_upstream_timeout
        for index, upstream in enumerate(self.upstreams):
            left = len(self.upstreams) - index
            if tcp:
                reply = await self._ask_tcp(upstream, query, (deadline - loop.time()) / left)
            else:
                reply = await self._ask(upstream, query, (deadline - loop.time()) / left)
                if reply is not None and reply[2] & TC_FLAG:  # truncated: ask again over TCP
                    self.metrics.count(Count.DNS_TRUNCATED_RETRIED_OVER_TCP)
                    share = (deadline - loop.time()) / left
                    reply = await self._ask_tcp(upstream, query, share) or reply
            if reply is not None:
                return reply
        return None

    async def _ask_tcp(self, upstream: Upstream, query: bytes, timeout: float) -> bytes | None:
        """One query over TCP to `upstream` (length-prefixed), checked like a UDP answer."""
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                reader, writer = await asyncio.open_connection(*upstream)
                try:
                    writer.write(_LENGTH.pack(len(query)) + query)
                    size = _LENGTH.unpack(await reader.readexactly(2))[0]
                    data = await reader.readexactly(min(size, MAX_TCP_ANSWER))
                finally:
                    writer.close()
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            self.metrics.count(Count.DNS_UPSTREAM_TCP_FAILED)
            return None
        outcome = check_upstream_reply(query, data, self.forbidden)
        if isinstance(outcome, Reply):
            return outcome.data
        self.metrics.count(Count.DNS_UPSTREAM_REJECTED)
        return None

    async def _ask(self, upstream: Upstream, query: bytes, timeout: float) -> bytes | None:
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _Answer(query, self.forbidden, self.metrics), remote_addr=upstream)
        except OSError as exc:
            self.events.warn("dns.upstream_unusable", upstream=upstream[0], error=str(exc))
            return None
        try:
            transport.sendto(query)
            async with asyncio.timeout(timeout):
                return await protocol.result
        except (TimeoutError, OSError):
            self.metrics.count(Count.DNS_UPSTREAM_TIMEOUTS)
            return None
        finally:
            transport.close()

    def tcp_protocol(self, on_lost: Callable[[], None]) -> asyncio.Protocol:
        """A DNS-over-TCP protocol for one accepted connection."""
        return DnsTcpProtocol(self, on_lost)

    async def close(self) -> None:
        """Cancel forwarded queries."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class DnsTcpProtocol(asyncio.Protocol):
    """DNS over TCP (RFC 7766): length-prefixed messages, answered in any order."""

    def __init__(self, server: DnsServer, on_lost: Callable[[], None]) -> None:
        self.server = server
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._arm()

    def _arm(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(TCP_IDLE_TIMEOUT, self._close)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > TCP_BUFFER_CAP:
            self.server.metrics.count(Count.DNS_TCP_OVERFLOW)
            self._close()
            return
        self._arm()
        now = asyncio.get_running_loop().time()
        while len(self._buffer) >= 2:
            size = _LENGTH.unpack_from(self._buffer)[0]
            if len(self._buffer) < 2 + size:
                break
            query = bytes(self._buffer[2:2 + size])
            del self._buffer[:2 + size]
            self.server.answer(query, now, self._send, tcp=True)

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_LENGTH.pack(len(data)) + data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self.on_lost()
