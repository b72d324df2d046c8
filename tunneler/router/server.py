"""The embedded edge router's asyncio adapter: TLS listener, channel protocols, timers.

One `asyncio.Protocol` per channel shuttles bytes between its transport and the sans-IO
`RouterCore`; after each read it flushes, so every destination channel gets one coalesced
write per read. Accepting is a loop of its own so that at most `MAX_PENDING` connections can be
in the TLS handshake or waiting for their hello at once (each bounded by an absolute deadline:
`HANDSHAKE_TIMEOUT`, then `HELLO_TIMEOUT`); when a new connection finds the slots full, the
oldest pending one is closed to make room. A flood of connections that never finish TLS or
never say hello thus costs at most `MAX_PENDING` slots and never locks a real client out: a
client that completes its handshake in the time 64 newer arrivals take is always served.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import time
from collections.abc import Coroutine
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric import rsa

import tunneler
from tunneler import aio
from tunneler.channel.message import discard_buffer
from tunneler.log import get_logger
from tunneler.router.authority import RouterAuthority
from tunneler.router.core import RouterCore
from tunneler.router.nudge import ReadNudger
from tunneler.router.state import RouterChannel, RouterStats

HANDSHAKE_TIMEOUT = 10.0
HELLO_TIMEOUT = 5.0
MAX_PENDING = 64
TICK_INTERVAL = 0.5
SWEEP_INTERVAL = 2.0  # revocation and token expiry take effect within this
WRITE_HIGH_WATER = 1024 * 1024
WRITE_LOW_WATER = 256 * 1024

log = get_logger("router")


class EdgeRouter:
    """An OpenZiti-compatible edge router for SDK channels (dial and host)."""

    def __init__(self, authority: RouterAuthority, ssl_context: ssl.SSLContext, *,
                 name: str, version: str = tunneler.__version__,
                 token_key: rsa.RSAPublicKey | None = None) -> None:
        self.name = name
        self._ssl = ssl_context
        self.core = RouterCore(authority, version=version, token_key=token_key,
                               wall_clock=time.time)
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._protocols: set[_ChannelProtocol] = set()
        # connections in the TLS handshake or waiting for their hello, oldest first
        self._pending: dict[_ChannelProtocol, None] = {}

    @property
    def pending(self) -> int:
        """Connections in the TLS handshake or waiting for their hello."""
        return len(self._pending)

    @property
    def stats(self) -> RouterStats:
        """Counters for metrics."""
        return self.core.stats

    @property
    def port(self) -> int:
        """The bound TCP port (useful after `start(host, 0)`)."""
        if self._listener is None:
            raise RuntimeError("router not started")
        return cast(int, self._listener.getsockname()[1])

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in the channels' transport write buffers (bounded by backpressure)."""
        return sum(protocol.queued_bytes for protocol in self._protocols)

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port and serve until `close()`."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=1024)
        self._listener.setblocking(False)
        self._spawn(self._accept_loop(self._listener))
        self._spawn(self._timer_loop())
        log.info("router.started", name=self.name, host=host, port=self.port)

    async def close(self) -> None:
        """Stop accepting, close every channel, wait for the background tasks."""
        if self._listener is not None:
            self._listener.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for protocol in list(self._protocols):
            protocol.close(abort=True)
        await asyncio.sleep(0)
        log.info("router.stopped", name=self.name)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _address = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE and friends: back off, keep serving
                log.warning("router.accept_failed", error=str(exc))
                await asyncio.sleep(0.1)
                continue
            if len(self._pending) >= MAX_PENDING:
                self.stats.pending_evicted += 1
                next(iter(self._pending)).evict()
            protocol = _ChannelProtocol(self)
            protocol.sock = sock
            self._pending[protocol] = None
            protocol.handshake = loop.create_task(self._handshake(sock, protocol))
            self._tasks.add(protocol.handshake)
            protocol.handshake.add_done_callback(self._tasks.discard)
            await asyncio.sleep(0)   # let the handshake start before the next accept

    def release(self, protocol: _ChannelProtocol) -> None:
        """`protocol` no longer holds a pending slot."""
        self._pending.pop(protocol, None)

    async def _handshake(self, sock: socket.socket, protocol: _ChannelProtocol) -> None:
        loop = asyncio.get_running_loop()
        protocol.sock = None   # from here on the transport owns (and closes) the socket
        try:
            await loop.connect_accepted_socket(lambda: protocol, sock, ssl=self._ssl,
                                               ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (OSError, TimeoutError, EOFError) as exc:
            self.stats.handshake_failures += 1
            log.debug("router.handshake_failed", error=str(exc) or type(exc).__name__)
        finally:
            if not protocol.connected:
                protocol.release_slot()

    async def _timer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + SWEEP_INTERVAL
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            now = loop.time()
            try:
                self.core.tick(now)
                if now >= next_sweep:
                    next_sweep = now + SWEEP_INTERVAL
                    self.core.sweep()
            except Exception:  # e.g. the authority's database failed: retry next time
                log.exception("router.timer_failed")
            self.core.flush()


class _ChannelProtocol(asyncio.BufferedProtocol):
    """The transport side of one channel (also its `ChannelSink`)."""

    def __init__(self, router: EdgeRouter) -> None:
        self._router = router
        self._core = router.core
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._channel: RouterChannel | None = None
        self._holds_slot = True
        self.handshake: asyncio.Task[None] | None = None
        self.sock: socket.socket | None = None   # accepted, its handshake not yet started
        self._hello_timer: asyncio.TimerHandle | None = None
        self._nudger = ReadNudger()
        self._nudge_timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks -------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True once the TLS handshake completed."""
        return self._transport is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        aio.no_delay(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:  # CERT_REQUIRED makes this unreachable; refuse rather than trust
            self._transport.abort()
            return
        peer = transport.get_extra_info("peername")
        self._channel = self._core.open_channel(self, hashlib.sha1(der).hexdigest(), str(peer))
        self._router._protocols.add(self)
        self._hello_timer = self._loop.call_later(HELLO_TIMEOUT, self._hello_expired)

    def get_buffer(self, sizehint: int) -> memoryview:
        """BufferedProtocol: TLS decrypts straight into the channel's frame splitter."""
        if self._channel is None:
            return discard_buffer()
        return self._core.receive_buffer(self._channel, sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        channel = self._channel
        if channel is None:
            return
        self._core.received(channel, nbytes, self._loop.time())
        self._after_receive(channel)

    def data_received(self, data: bytes) -> None:
        """Bytes the caller owns (transports without buffered reads)."""
        channel = self._channel
        if channel is None:
            return
        self._core.receive(channel, data, self._loop.time())
        self._after_receive(channel)

    def _after_receive(self, channel: RouterChannel) -> None:
        if self._holds_slot and (channel.api_session is not None or channel.closing):
            self.release_slot()
        self._core.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.release_slot()
        if self._nudge_timer is not None:
            self._nudge_timer.cancel()
        self._router._protocols.discard(self)
        if self._channel is not None:
            self._core.channel_lost(self._channel)
            self._core.flush()

    def pause_writing(self) -> None:
        if self._channel is not None:
            self._core.set_congested(self._channel, True)

    def resume_writing(self) -> None:
        if self._channel is not None:
            self._core.set_congested(self._channel, False)

    @property
    def queued_bytes(self) -> int:
        """Bytes in this channel's transport write buffer."""
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    # -- ChannelSink -------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)
            channel = self._channel
            if (channel is not None and channel.supports_inspect
                    and self._nudger.wrote(len(data)) and self._nudge_timer is None):
                self._nudge_timer = self._loop.call_later(self._nudger.interval,
                                                          self._nudge_tick)

    def nudge_acknowledged(self) -> None:
        self._nudger.acknowledged()

    def _nudge_tick(self) -> None:
        self._nudge_timer = None
        channel = self._channel
        if channel is None or self._transport is None or self._transport.is_closing():
            return
        send, again = self._nudger.tick()
        if send and self._core.nudge(channel):
            self._core.flush()
            self._nudger.sent()
        if again:
            self._nudge_timer = self._loop.call_later(self._nudger.interval, self._nudge_tick)

    def close(self, *, abort: bool = False) -> None:
        if self._transport is None:
            return
        if abort:
            self._transport.abort()
        elif not self._transport.is_closing():
            self._transport.close()

    def pause_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    # -- slots and the hello deadline --------------------------------------------------------------
    def release_slot(self) -> None:
        """Stop counting this connection as pending (authenticated, refused or gone)."""
        if self._holds_slot:
            self._holds_slot = False
            self._router.release(self)
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None

    def evict(self) -> None:
        """Close a pending connection to make room for a newer one."""
        self.release_slot()
        if self._transport is None:
            if self.handshake is not None:
                self.handshake.cancel()
            if self.sock is not None:   # the handshake never started: nobody else closes it
                self.sock.close()
                self.sock = None
        else:
            self._core.stats.hello_failures["evicted"] += 1
            self.close(abort=True)

    def _hello_expired(self) -> None:
        self._hello_timer = None
        if self._channel is not None and self._channel.api_session is None:
            self._core.stats.hello_failures["timeout"] += 1
            log.warning("router.hello_rejected", channel=self._channel.id, reason="timeout")
            self.close(abort=True)
