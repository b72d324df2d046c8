"""Sans-IO channel endpoint: sequence numbers, reply correlation with deadlines, latency replies.

Theory of operation: the adapter feeds received bytes to `receive_data()` (or reads them into
`receive_buffer()` and calls `received(n)`, as an asyncio BufferedProtocol) and gets events back;
it writes whatever `data_to_send()` returns; it arms one timer at `get_timer()` and calls
`handle_timer(now)` when it fires. Requests (`request()`) expect a reply carrying header
`ReplyFor` = their sequence; a reply that arrives in time becomes `ReplyReceived`, a missing one
becomes `ReplyTimedOut` at its deadline. Latency probes (content type 3) are answered here, as
every OpenZiti channel peer must (openziti/channel `latency.LatencyHandler`); heartbeats are
ignored. After a framing error the connection is `closed` and the adapter must drop the socket.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

from tunneler.channel.message import (
    CONTENT_TYPE_HEARTBEAT,
    CONTENT_TYPE_HELLO,
    CONTENT_TYPE_LATENCY,
    CONTENT_TYPE_RESULT,
    HELLO_VERSION_HEADER,
    MAX_BODY_LEN,
    MAX_HEADERS_LEN,
    REFLECTED_HEADER_MAX,
    REFLECTED_HEADER_MIN,
    REPLY_FOR_HEADER,
    RESULT_SUCCESS_HEADER,
    FrameDecoder,
    Message,
    discard_buffer,
    encode_head,
)
from tunneler.errors import FrameError

HELLO_MAX_HEADERS_LEN = 16 * 1024
HELLO_MAX_BODY_LEN = 4192


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A message that is not a reply to one of our pending requests."""

    message: Message


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """The reply to the request sent with sequence `request_sequence`."""

    request_sequence: int
    message: Message


@dataclass(frozen=True, slots=True)
class ReplyTimedOut:
    """No reply arrived before the request's deadline."""

    request_sequence: int


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer sent undecodable bytes; the connection is now closed."""

    reason: str


ChannelEvent = MessageReceived | ReplyReceived | ReplyTimedOut | ProtocolViolation


class ChannelConnection:
    """One side of a channel. `expect_hello=True` on the accepting (router) side."""

    def __init__(self, *, expect_hello: bool = False, max_body_len: int | None = None) -> None:
        self._max_body_len = MAX_BODY_LEN if max_body_len is None else max_body_len
        self._decoder = FrameDecoder(MAX_HEADERS_LEN, self._max_body_len)
        if expect_hello:
            self._decoder.set_limits(HELLO_MAX_HEADERS_LEN, HELLO_MAX_BODY_LEN)
        self._awaiting_hello = expect_hello
        self._next_sequence = 0
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._pending: dict[int, float] = {}
        self._deadlines: list[tuple[float, int]] = []
        self.closed = False

    # -- sending ---------------------------------------------------------------------------
    def send(self, message: Message) -> int:
        """Queue a message; assigns and returns its sequence number."""
        sequence = self._next_sequence
        self._next_sequence = (self._next_sequence + 1) & 0x7FFFFFFF
        message.sequence = sequence
        head = encode_head(message)
        self._out.append(head)
        if message.body:
            self._out.append(message.body)
        self._out_bytes += len(head) + len(message.body)
        return sequence

    def request(self, message: Message, now: float, timeout: float) -> int:
        """Send a message that expects a reply within `timeout` seconds."""
        sequence = self.send(message)
        deadline = now + timeout
        self._pending[sequence] = deadline
        heapq.heappush(self._deadlines, (deadline, sequence))
        return sequence

    def reply(self, request: Message, message: Message) -> int:
        """Send `message` as the reply to `request` (ReplyFor + reflected headers 128..255)."""
        headers = {REPLY_FOR_HEADER: (request.sequence & 0xFFFFFFFF).to_bytes(4, "little")}
        headers.update(message.headers)
        for header_id, value in request.headers.items():
            if REFLECTED_HEADER_MIN <= header_id <= REFLECTED_HEADER_MAX:
                headers.setdefault(header_id, value)
        message.headers = headers
        return self.send(message)

    def send_result(self, request: Message, success: bool, text: str = "",
                    version: str | None = None,
                    headers: dict[int, bytes] | None = None) -> int:
        """Answer a request with a channel Result (content type 2), plus any `headers`."""
        result = Message(CONTENT_TYPE_RESULT, body=text.encode())
        result.set_bool(RESULT_SUCCESS_HEADER, success)
        if version is not None:
            result.set_str(HELLO_VERSION_HEADER, version)
        result.headers.update(headers or {})
        return self.reply(request, result)

    def data_to_send(self) -> bytes:
        """Everything queued since the last call, as one buffer."""
        if not self._out:
            return b""
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._out_bytes = 0
        return data

    @property
    def pending_output(self) -> int:
        """Bytes queued but not yet taken by `data_to_send()`."""
        return self._out_bytes

    # -- receiving -------------------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> list[ChannelEvent]:
        """Feed received bytes; returns the resulting events."""
        if self.closed:
            return []
        return self._decoded(lambda: self._decoder.feed(data))

    def receive_buffer(self, hint: int) -> memoryview:
        """Where a transport reads the next bytes into (`hint`: how many it has); then call
        `received(n)`. Bytes read into it after the channel closed are discarded."""
        if self.closed:
            return discard_buffer()
        return self._decoder.writable(hint)

    def received(self, count: int) -> list[ChannelEvent]:
        """`count` bytes were read into the last `receive_buffer()`; the resulting events."""
        if self.closed:
            return []
        return self._decoded(lambda: self._decoder.written(count))

    def _decoded(self, decode: Callable[[], list[Message]]) -> list[ChannelEvent]:
        try:
            messages = decode()
        except FrameError as exc:
            self.closed = True
            self._out.clear()
            return [ProtocolViolation(str(exc))]
        events: list[ChannelEvent] = []
        for message in messages:
            event = self._dispatch(message)
            if event is not None:
                events.append(event)
        return events

    def _dispatch(self, message: Message) -> ChannelEvent | None:
        if self._awaiting_hello:
            self._awaiting_hello = False
            self._decoder.set_limits(MAX_HEADERS_LEN, self._max_body_len)
            if message.content_type != CONTENT_TYPE_HELLO:
                self.closed = True
                return ProtocolViolation(f"expected hello, got content type {message.content_type}")
            return MessageReceived(message)
        if message.content_type == CONTENT_TYPE_LATENCY:
            self.send_result(message, True)
            return None
        if message.content_type == CONTENT_TYPE_HEARTBEAT:
            return None
        reply_for = message.reply_for
        if reply_for is not None and self._pending.pop(reply_for, None) is not None:
            return ReplyReceived(reply_for, message)
        return MessageReceived(message)

    # -- timers ----------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        """When `handle_timer` must next be called, or None."""
        while self._deadlines and self._deadlines[0][1] not in self._pending:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def handle_timer(self, now: float) -> list[ChannelEvent]:
        """Expire requests whose deadline has passed."""
        events: list[ChannelEvent] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, sequence = heapq.heappop(self._deadlines)
            if self._pending.pop(sequence, None) is not None:
                events.append(ReplyTimedOut(sequence))
        return events

    def cancel(self, request_sequence: int) -> None:
        """Stop waiting for a reply (the caller gave up)."""
        self._pending.pop(request_sequence, None)
