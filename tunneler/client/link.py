"""One TLS channel from a client to an edge router: hello, latency probes, dispatch, backpressure.

The asyncio adapter around the sans-IO `ChannelConnection`. Frames queued during one loop turn
go out in one coalesced `transport.write`, or at once when `FLUSH_AT` bytes are queued: the
transport then signals its high-water mark inside the same callback, so a local socket stops
being read before more is queued. (uvloop reads a readable socket up to 32 times in one
callback; with writes held to the end of the turn, 16 bulk streams queued ~130 MiB in
run-host before the first pause: RSS 57 → 343 MiB in one benchmark round.)

Edge messages are routed by ConnId to the registered `LinkHandler` (an edge connection or
listener); replies are matched by ReplyFor to the callback given to `request()`, which runs
synchronously in `data_received` so that a connection is marked connected before any Data
that followed its StateConnected in the same read.

When the channel's transport is above its high-water mark every handler is told
(`set_link_writable(False)`) so it pauses reading its local socket; a local socket that cannot
take more data pauses reading of the whole channel (`pause_reading_for`), which is the only
end-to-end flow control the edge protocol of this era has (openziti-protocol.md §3.5.4).
On loss every handler is told `link_lost()` (flows end with RST, never a clean FIN).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from typing import Protocol, cast
from urllib.parse import urlsplit

from tunneler import aio
from tunneler.channel.connection import (
    ChannelConnection,
    ChannelEvent,
    MessageReceived,
    ProtocolViolation,
    ReplyReceived,
    ReplyTimedOut,
)
from tunneler.channel.message import (
    CONTENT_TYPE_HELLO,
    CONTENT_TYPE_LATENCY,
    CONTENT_TYPE_RESULT,
    LATENCY_PROBE_TIME_HEADER,
    RESULT_SUCCESS_HEADER,
    Message,
)
from tunneler.edge import messages as edge
from tunneler.errors import DialError, HelloRejected
from tunneler.log import get_logger

log = get_logger("link")

HELLO_TIMEOUT = 20.0
LATENCY_INTERVAL = 60.0
LATENCY_TIMEOUT = 10.0
MAX_HELLO_BODY = 36
WRITE_HIGH_WATER = 4 * 1024 * 1024
WRITE_LOW_WATER = 1024 * 1024
FLUSH_AT = 256 * 1024  # queued bytes written at once, not at the end of the loop turn
_EDGE_TYPES = range(edge.CONTENT_TYPE_CONNECT, edge.CONTENT_TYPE_UNBIND + 1)

ReplyCallback = Callable[[Message | None], None]


class LinkHandler(Protocol):
    """What a link dispatches to: an edge connection or a listener, keyed by ConnId."""

    def handle_message(self, message: Message) -> None:
        """An edge message carrying this handler's ConnId."""

    def link_lost(self) -> None:
        """The channel is gone; end abruptly."""

    def set_link_writable(self, writable: bool) -> None:
        """Pause (False) or resume (True) reading whatever feeds this handler."""


def parse_router_url(url: str) -> tuple[str, int]:
    """(host, port) of `tls://host:port`."""
    parts = urlsplit(url)
    if parts.scheme != "tls" or not parts.hostname or parts.port is None:
        raise DialError(f"edge router URL {url!r} is not tls://host:port")
    return parts.hostname, parts.port


def hello_body(index: int) -> bytes:
    """`tunneler[<n>]@<hostname>`, at most 36 bytes (libziti's buffer)."""
    return f"tunneler[{index}]@{socket.gethostname()}".encode()[:MAX_HELLO_BODY]


class RouterLink(asyncio.BufferedProtocol):
    """A connected, authenticated channel to one edge router."""

    def __init__(self, url: str, on_closed: Callable[[RouterLink], None] | None = None) -> None:
        self.url = url
        self.latency: float | None = None
        self.closed = False
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self._channel = ChannelConnection()
        self._transport: asyncio.Transport | None = None
        self._handlers: dict[int, LinkHandler] = {}
        self._callbacks: dict[int, ReplyCallback] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._read_pausers: set[object] = set()
        self._probe_task: asyncio.Task[None] | None = None
        self._retired = False
        self.writable = True

    # -- opening --------------------------------------------------------------------------
    @classmethod
    async def open(cls, url: str, ssl_context: ssl.SSLContext, api_token: str, *, index: int = 0,
                   timeout: float = HELLO_TIMEOUT,
                   on_closed: Callable[[RouterLink], None] | None = None) -> RouterLink:
        """TCP + TLS + Hello within `timeout`.

        Raises:
            DialError: the router refused the hello or did not answer; OSError: unreachable.
        """
        host, port = parse_router_url(url)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, link = await loop.create_connection(lambda: cls(url, on_closed), host, port,
                                                   ssl=ssl_context, server_hostname=host)
            try:
                await link._hello(api_token, index, timeout)
            except BaseException:
                link.abort()
                raise
        link._probe_task = loop.create_task(link._run_latency_probes())
        log.info("link.connected", router=url)
        return link

    async def _hello(self, api_token: str, index: int, timeout: float) -> None:
        hello = Message(CONTENT_TYPE_HELLO, body=hello_body(index))
        hello.set_str(edge.SESSION_TOKEN_HEADER, api_token)
        reply = await self.request_async(hello, timeout)
        if reply.content_type != CONTENT_TYPE_RESULT or not reply.get_bool(RESULT_SUCCESS_HEADER):
            raise HelloRejected(f"router {self.url} rejected the hello: {edge.body_text(reply)}")

    # -- sending --------------------------------------------------------------------------
    def send(self, message: Message) -> int:
        """Queue a message for this loop turn's write; returns its channel sequence."""
        sequence = self._channel.send(message)
        if self._channel.pending_output >= FLUSH_AT:
            self._flush()
        else:
            self._schedule_flush()
        return sequence

    def reply(self, request: Message, message: Message) -> int:
        """Queue `message` as the reply to `request`."""
        sequence = self._channel.reply(request, message)
        self._schedule_flush()
        return sequence

    def request(self, message: Message, timeout: float, callback: ReplyCallback) -> int:
        """Send and call `callback(reply)`, or `callback(None)` on timeout or loss."""
        if self.closed:
            self._loop.call_soon(callback, None)
            return -1
        sequence = self._channel.request(message, self._loop.time(), timeout)
        self._callbacks[sequence] = callback
        self._schedule_flush()
        self._arm_timer()
        return sequence

    async def request_async(self, message: Message, timeout: float) -> Message:
        """`request()` as a coroutine; raises TimeoutError when no reply comes."""
        future: asyncio.Future[Message | None] = self._loop.create_future()

        def done(reply: Message | None) -> None:
            if not future.done():
                future.set_result(reply)

        sequence = self.request(message, timeout, done)
        try:
            reply = await future
        finally:
            self.cancel_request(sequence)
        if reply is None:
            raise TimeoutError(f"no reply from router {self.url}")
        return reply

    def cancel_request(self, sequence: int) -> None:
        """Forget a pending request; its callback will not be called."""
        if self._callbacks.pop(sequence, None) is not None:
            self._channel.cancel(sequence)

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and not self.closed:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        data = self._channel.data_to_send()
        if data and self._transport is not None and not self.closed:
            self._transport.write(data)

    # -- registry and backpressure -----------------------------------------------------------
    def register(self, conn_id: int, handler: LinkHandler) -> None:
        """Route messages with this ConnId to `handler`."""
        self._handlers[conn_id] = handler

    def unregister(self, conn_id: int) -> None:
        """Stop routing this ConnId (a retired link closes once the last one is gone)."""
        self._handlers.pop(conn_id, None)
        if self._retired and not self._handlers:
            self.close()

    def retire(self) -> None:
        """Take no new connections (the context no longer offers this link); close as soon as
        the connections and binds on it are gone. Used when the certificate was renewed."""
        self._retired = True
        if not self._handlers:
            self.close()

    def pause_reading_for(self, who: object) -> None:
        """A consumer is full: stop reading the channel until it calls `resume_reading_for`."""
        if not self._read_pausers and self._transport is not None:
            self._transport.pause_reading()
        self._read_pausers.add(who)

    def resume_reading_for(self, who: object) -> None:
        """The consumer drained."""
        if who in self._read_pausers:
            self._read_pausers.discard(who)
            if not self._read_pausers and self._transport is not None and not self.closed:
                self._transport.resume_reading()

    def pause_writing(self) -> None:
        self.writable = False
        for handler in list(self._handlers.values()):
            handler.set_link_writable(False)

    def resume_writing(self) -> None:
        self.writable = True
        for handler in list(self._handlers.values()):
            handler.set_link_writable(True)

    # -- asyncio.BufferedProtocol --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        aio.no_delay(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        """BufferedProtocol: the TLS transport decrypts straight into the channel's area."""
        return self._channel.receive_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._handle(self._channel.received(nbytes))

    def data_received(self, data: bytes) -> None:
        """Bytes the caller owns (tests, transports without buffered reads)."""
        self._handle(self._channel.receive_data(data))

    def _handle(self, events: list[ChannelEvent]) -> None:
        for event in events:
            if isinstance(event, ReplyReceived):
                self._reply_arrived(event.request_sequence, event.message)
            elif isinstance(event, MessageReceived):
                self._dispatch(event.message)
            elif isinstance(event, ReplyTimedOut):
                self._reply_arrived(event.request_sequence, None)
            elif isinstance(event, ProtocolViolation):
                log.warning("link.protocol_violated", router=self.url, reason=event.reason)
                self.abort()
                return
        if self._channel.pending_output:
            self._schedule_flush()
        self._arm_timer()

    def _reply_arrived(self, sequence: int, reply: Message | None) -> None:
        callback = self._callbacks.pop(sequence, None)
        if callback is not None:
            callback(reply)

    def _dispatch(self, message: Message) -> None:
        if message.content_type not in _EDGE_TYPES:
            return
        conn_id = edge.conn_id_of(message)
        handler = self._handlers.get(conn_id) if conn_id is not None else None
        if handler is not None:
            handler.handle_message(message)
        else:
            log.debug("link.message_dropped", router=self.url, conn_id=conn_id,
                      content_type=message.content_type)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        log.info("link.disconnected", router=self.url, error=str(exc) if exc else None)
        for handle in (self._timer, self._flush_handle, self._probe_task):
            if handle is not None:
                handle.cancel()
        callbacks, self._callbacks = self._callbacks, {}
        for callback in callbacks.values():
            callback(None)
        handlers, self._handlers = self._handlers, {}
        for handler in handlers.values():
            handler.link_lost()
        if self._on_closed is not None:
            self._on_closed(self)

    # -- timers ----------------------------------------------------------------------------
    def _arm_timer(self) -> None:
        when = self._channel.get_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = None if when is None else self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        for event in self._channel.handle_timer(self._loop.time()):
            if isinstance(event, ReplyTimedOut):
                self._reply_arrived(event.request_sequence, None)
        self._arm_timer()

    async def _run_latency_probes(self) -> None:
        while not self.closed:
            await self.probe_latency()
            await asyncio.sleep(LATENCY_INTERVAL)

    async def probe_latency(self) -> None:
        """Send a latency probe; record the round trip, or close the link if none comes."""
        probe = Message(CONTENT_TYPE_LATENCY)
        probe.set_uint64(LATENCY_PROBE_TIME_HEADER, int(self._loop.time() * 1000))
        started = time.perf_counter()  # a loop clock (uvloop: 1 ms steps) reads 0 on loopback
        try:
            await self.request_async(probe, LATENCY_TIMEOUT)
        except TimeoutError:
            if not self.closed:
                log.warning("link.latency_probe_timed_out", router=self.url)
                self.abort()
            return
        self.latency = time.perf_counter() - started

    async def update_token(self, token: str) -> bool:
        """UpdateToken (60803): hand the router our refreshed OIDC access token; True when it
        took it. A refusal or no answer closes the link (it reconnects with the new token)."""
        message = Message(edge.CONTENT_TYPE_UPDATE_TOKEN, body=token.encode())
        try:
            reply = await self.request_async(message, HELLO_TIMEOUT)
        except TimeoutError:
            reply = None
        if reply is not None and reply.content_type == edge.CONTENT_TYPE_UPDATE_TOKEN_SUCCESS:
            return True
        reason = edge.body_text(reply) if reply is not None else "no answer"
        log.warning("link.token_update_refused", router=self.url, reason=reason)
        self.close()
        return False

    # -- closing ---------------------------------------------------------------------------
    def close(self) -> None:
        """Flush and close the channel."""
        if self._transport is not None and not self.closed:
            self._flush()
            self._transport.close()

    def abort(self) -> None:
        """Drop the channel at once."""
        if self._transport is not None:
            self._transport.abort()
