"""Local socket ↔ overlay connection bridges: TCP with half-close and backpressure, UDP per flow.

A neutral module: the bridges see the overlay only through `tunneler.overlay` (an
`OverlayConnection` to write to and pause, the `OverlaySink` methods they implement), so the
engine, the proxy and run-host share them without importing the client package.

`StreamBridge` is the asyncio Protocol of a local TCP socket. It keeps the socket's reading
paused until the overlay connection is up, relays bytes both ways, maps local EOF to an
overlay FIN and an overlay FIN to `write_eof()`, pauses the overlay connection when the local
socket cannot take more, and resets the local socket (SO_LINGER 0) when the circuit ends abnormally.

`DatagramBridge` carries one UDP flow: one datagram per Data message, ended after `idle`
seconds without traffic in either direction.

Both count relayed bytes into an optional `ByteMeter` (one integer add per chunk or datagram):
`bytes_up` for local socket → overlay, `bytes_down` for overlay → local socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import Protocol, cast

from tunneler import aio
from tunneler.errors import DialError, DialFailure
from tunneler.log import get_logger
from tunneler.nat import UDP_IDLE_TIMEOUT
from tunneler.overlay import OverlayConnection

log = get_logger("bridge")

LOCAL_HIGH_WATER = 1024 * 1024
LOCAL_LOW_WATER = 256 * 1024
_LINGER_RESET = struct.pack("ii", 1, 0)


class ByteMeter(Protocol):
    """Where a bridge counts the bytes it relays (`tunneler.counters.ServiceMeter`)."""

    bytes_up: int
    bytes_down: int


def reset(transport: asyncio.Transport) -> None:
    """Close a TCP transport with RST (SO_LINGER 0), never a clean FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


class StreamBridge(asyncio.Protocol):
    """A local TCP connection bridged to an edge connection."""

    def __init__(self, on_made: Callable[[StreamBridge], None] | None = None, *,
                 meter: ByteMeter | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.conn: OverlayConnection | None = None
        self.meter = meter
        self._on_made = on_made
        self._on_lost: Callable[[], object] | None = None
        self._link_writable = True
        self._reading = False
        self._local_eof = False
        self._paused_link = False
        self._early: list[bytes] = []
        self.done = False

    # -- local side (asyncio.Protocol) -----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.pause_reading()
        transport.set_write_buffer_limits(LOCAL_HIGH_WATER, LOCAL_LOW_WATER)
        aio.no_delay(transport)
        if self._on_made is not None:
            self._on_made(self)

    def data_received(self, data: bytes) -> None:
        if self.meter is not None:
            self.meter.bytes_up += len(data)
        if self.conn is not None:
            self.conn.write(data)
        else:
            # Some loops (uvloop) start reading after connection_made: hold what arrives
            # before the circuit is up (at most one read, since reading is paused again).
            self._early.append(data)
            self._reading = True
            self._update_reading()

    def eof_received(self) -> bool:
        self._local_eof = True
        if self.conn is not None:
            self.conn.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.done = True
        self._release_link()
        if self.conn is not None:
            self.conn.close()
        if self._on_lost is not None:
            self._on_lost()

    def pause_writing(self) -> None:
        if self.conn is not None and not self._paused_link:
            self._paused_link = True
            self.conn.pause()

    def resume_writing(self) -> None:
        self._release_link()

    def _release_link(self) -> None:
        if self._paused_link and self.conn is not None:
            self._paused_link = False
            self.conn.resume()

    def on_lost(self, callback: Callable[[], object]) -> None:
        """Call `callback` when the local socket goes away (e.g. to cancel a pending dial)."""
        self._on_lost = callback

    def _update_reading(self) -> None:
        want = self.conn is not None and self._link_writable and not self._local_eof
        if self.transport is None or self.done or want == self._reading:
            return
        self._reading = want
        if want:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    # -- overlay side (OverlaySink) ----------------------------------------------------------
    def edge_connected(self, conn: OverlayConnection) -> None:
        self.conn = conn
        if self.done:
            conn.close()
            return
        for data in self._early:
            conn.write(data)
        self._early.clear()
        if self._local_eof:
            conn.write_eof()
        self._update_reading()

    def edge_data(self, data: bytes) -> None:
        if self.transport is not None and not self.done:
            if self.meter is not None:
                self.meter.bytes_down += len(data)
            self.transport.write(data)

    def edge_eof(self) -> None:
        if self.transport is not None and not self.done and self.transport.can_write_eof():
            self.transport.write_eof()

    def edge_closed(self, abrupt: bool) -> None:
        self._release_link()
        if self.transport is None or self.done:
            return
        self.done = True
        if abrupt:
            reset(self.transport)
        else:
            self.transport.close()

    def set_link_writable(self, writable: bool) -> None:
        self._link_writable = writable
        self._update_reading()


async def connect_stream(addresses: Sequence[IPv4Address | IPv6Address], port: int, timeout: float,
                         meter: ByteMeter | None = None) -> StreamBridge:
    """Connect a local TCP target for a host-side flow: each address in turn, within `timeout`.

    Raises:
        DialError: none reachable within `timeout`, with the reason for DialFailed.
    """
    loop = asyncio.get_running_loop()
    where = "tcp:" + ",".join(str(ip) for ip in addresses) + f":{port}"
    failure, reason = "no address", DialFailure.REFUSED
    try:
        async with asyncio.timeout(timeout):
            for ip in addresses:
                try:
                    _, bridge = await loop.create_connection(
                        lambda: StreamBridge(meter=meter), str(ip), port)
                except OSError as exc:  # ETIMEDOUT is a TimeoutError too: the kernel gave up
                    failure = exc.strerror or str(exc)
                    is_timeout = isinstance(exc, TimeoutError)
                    reason = DialFailure.TIMEOUT if is_timeout else DialFailure.REFUSED
                else:
                    return bridge
    except TimeoutError:
        raise DialError(f"connect to {where} timed out after {timeout:g}s",
                        DialFailure.TIMEOUT) from None
    raise DialError(f"connect to {where} failed: {failure}", reason)


class DatagramBridge(asyncio.DatagramProtocol):
    """A connected UDP socket carrying one flow; one datagram per Data message."""

    def __init__(self, idle_timeout: float = UDP_IDLE_TIMEOUT, *,
                 meter: ByteMeter | None = None) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.conn: OverlayConnection | None = None
        self.meter = meter
        self._on_lost: Callable[[], object] | None = None
        self._idle_timeout = idle_timeout
        self._last_activity = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if self.conn is not None:
            if self.meter is not None:
                self.meter.bytes_up += len(data)
            self._touch()
            self.conn.write(data)

    def error_received(self, exc: Exception) -> None:
        log.debug("bridge.udp_error_received", error=str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
        if self.conn is not None:
            self.conn.close()
        if self._on_lost is not None:
            self._on_lost()

    def on_lost(self, callback: Callable[[], object]) -> None:
        """Call `callback` when the socket closes (idle, overlay close or error)."""
        self._on_lost = callback

    def _touch(self) -> None:
        self._last_activity = asyncio.get_running_loop().time()

    def _check_idle(self) -> None:
        loop = asyncio.get_running_loop()
        remaining = self._last_activity + self._idle_timeout - loop.time()
        if remaining > 0:
            self._timer = loop.call_later(remaining, self._check_idle)
        elif self.transport is not None:
            log.debug("bridge.udp_flow_expired")
            self.transport.close()

    def edge_connected(self, conn: OverlayConnection) -> None:
        self.conn = conn
        self._touch()
        self._timer = asyncio.get_running_loop().call_later(self._idle_timeout, self._check_idle)

    def edge_data(self, data: bytes) -> None:
        if self.transport is not None and not self.done:
            if self.meter is not None:
                self.meter.bytes_down += len(data)
            self._touch()
            self.transport.sendto(data)

    def edge_eof(self) -> None:
        """UDP has no half-close; the flow ends by idle timeout or StateClosed."""

    def edge_closed(self, abrupt: bool) -> None:
        if self.transport is not None and not self.done:
            self.done = True
            self.transport.close()

    def set_link_writable(self, writable: bool) -> None:
        """Datagrams are dropped, not queued, under pressure: nothing to pause."""


async def connect_datagram(addresses: Sequence[IPv4Address | IPv6Address], port: int,
                           meter: ByteMeter | None = None) -> DatagramBridge:
    """A connected UDP socket to a host-side target (the first address that can be used).

    Raises:
        DialError: no address can be used.
    """
    loop = asyncio.get_running_loop()
    failure = "no address"
    for ip in addresses:
        try:
            _, bridge = await loop.create_datagram_endpoint(
                lambda: DatagramBridge(meter=meter), remote_addr=(str(ip), port))
        except OSError as exc:
            failure = exc.strerror or str(exc)
        else:
            return bridge
    where = ",".join(str(ip) for ip in addresses)
    raise DialError(f"udp:{where}:{port}: {failure}")
