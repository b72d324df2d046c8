"""Channel v2 frames: the `Message` record, header/content-type constants, encode and decode.

Wire layout (openziti/channel `message.go`, all integers little-endian)::

    magic 03 06 09 0c | content type i32 | sequence i32 | headers length u32 | body length u32
    headers: (id i32, length u32, value) * | body

`FrameDecoder` checks both lengths against its caps *before* buffering a frame's payload, so a
peer claiming a 4 GiB body costs nothing but a `FrameError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from tunneler.errors import FrameError

MAGIC = b"\x03\x06\x09\x0c"
PREFIX = struct.Struct("<4siiII")
PREFIX_LEN = PREFIX.size  # 20
_HEADER = struct.Struct("<iI")

# Channel content types (openziti/channel messages.go).
CONTENT_TYPE_HELLO = 0
CONTENT_TYPE_PING = 1
CONTENT_TYPE_RESULT = 2
CONTENT_TYPE_LATENCY = 3
CONTENT_TYPE_LATENCY_RESPONSE = 4
CONTENT_TYPE_HEARTBEAT = 5

# Channel header ids.
CONNECTION_ID_HEADER = 0
REPLY_FOR_HEADER = 1
RESULT_SUCCESS_HEADER = 2
HELLO_ROUTER_ADVERTISEMENTS_HEADER = 3
HELLO_VERSION_HEADER = 4
HEARTBEAT_HEADER = 5
HEARTBEAT_RESPONSE_HEADER = 6
LATENCY_PROBE_TIME_HEADER = 128
REFLECTED_HEADER_MIN = 128
REFLECTED_HEADER_MAX = 255

# Implementation limits (not from the specification).
MAX_HEADERS_LEN = 64 * 1024
MAX_BODY_LEN = 16 * 1024 * 1024
MAX_HEADER_COUNT = 256
RECEIVE_AREA = 256 * 1024  # a FrameDecoder's receive area: uvloop reads up to this per call
_MIN_READ = 64 * 1024


@dataclass(slots=True)
class Message:
    """One channel frame. `sequence` is assigned by the sender's `ChannelConnection`."""

    content_type: int
    headers: dict[int, bytes] = field(default_factory=dict)
    body: bytes = b""
    sequence: int = 0

    def get_int(self, header_id: int) -> int | None:
        """An integer header, read leniently (little-endian, any length up to 8) as libziti does."""
        value = self.headers.get(header_id)
        if value is None:
            return None
        return int.from_bytes(value[:8], "little", signed=len(value) == 4 and value[3] >= 0x80)

    def get_str(self, header_id: int) -> str | None:
        """A string header (UTF-8, invalid bytes replaced)."""
        value = self.headers.get(header_id)
        return None if value is None else value.decode("utf-8", "replace")

    def get_bool(self, header_id: int) -> bool:
        """A bool header: present and first byte non-zero."""
        value = self.headers.get(header_id)
        return value is not None and len(value) > 0 and value[0] != 0

    def set_int32(self, header_id: int, value: int) -> Message:
        """Set a 4-byte little-endian integer header (signed range accepted); returns self."""
        self.headers[header_id] = (value & 0xFFFFFFFF).to_bytes(4, "little")
        return self

    def set_uint64(self, header_id: int, value: int) -> Message:
        """Set an 8-byte little-endian integer header; returns self."""
        self.headers[header_id] = (value & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
        return self

    def set_str(self, header_id: int, value: str) -> Message:
        """Set a UTF-8 string header; returns self."""
        self.headers[header_id] = value.encode()
        return self

    def set_bool(self, header_id: int, value: bool) -> Message:
        """Set a one-byte bool header; returns self."""
        self.headers[header_id] = b"\x01" if value else b"\x00"
        return self

    @property
    def reply_for(self) -> int | None:
        """The sequence this message answers, if it is a reply."""
        return self.get_int(REPLY_FOR_HEADER)


def encode_head(message: Message) -> bytes:
    """The frame without its body (prefix + headers); the body follows it on the wire."""
    parts = []
    for header_id, value in message.headers.items():
        parts.append(_HEADER.pack(header_id, len(value)))
        parts.append(value)
    headers = b"".join(parts)
    prefix = PREFIX.pack(MAGIC, message.content_type, _to_i32(message.sequence), len(headers),
                         len(message.body))
    return prefix + headers


def encode(message: Message) -> bytes:
    """Serialise a message to one frame."""
    return encode_head(message) + message.body


def _to_i32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def decode_headers(block: bytes | memoryview) -> dict[int, bytes]:
    """Parse a header block; raises FrameError on overruns or too many entries."""
    headers: dict[int, bytes] = {}
    offset, end, count = 0, len(block), 0
    while offset < end:
        if end - offset < _HEADER.size:
            raise FrameError("truncated header entry")
        header_id, length = _HEADER.unpack_from(block, offset)
        offset += _HEADER.size
        if length > end - offset:
            raise FrameError(f"header {header_id} length {length} runs past the header block")
        count += 1
        if count > MAX_HEADER_COUNT:
            raise FrameError(f"more than {MAX_HEADER_COUNT} headers")
        headers[header_id] = bytes(block[offset : offset + length])
        offset += length
    return headers


def read_prefix(buf: bytes | bytearray | memoryview, offset: int, max_headers_len: int,
                max_body_len: int) -> tuple[int, int, int, int] | None:
    """The checked prefix at `offset`: (content type, sequence, headers length, body length).

    None while fewer than 20 bytes are there; FrameError for a bad magic or a length over its
    cap, decided before anything of the frame's payload is buffered.
    """
    available = len(buf) - offset
    if available < PREFIX_LEN:
        if available and not MAGIC.startswith(bytes(buf[offset : offset + 4])):
            raise FrameError("bad magic")
        return None
    magic, content_type, sequence, hlen, blen = PREFIX.unpack_from(buf, offset)
    if magic != MAGIC:
        raise FrameError(f"bad magic {magic.hex()}")
    if hlen > max_headers_len:
        raise FrameError(f"headers length {hlen} over cap {max_headers_len}")
    if blen > max_body_len:
        raise FrameError(f"body length {blen} over cap {max_body_len}")
    return content_type, sequence, hlen, blen


_DISCARDED = memoryview(bytearray(_MIN_READ))


def discard_buffer() -> memoryview:
    """Where a transport reads bytes nobody will parse (its channel is closing): one shared
    scratch buffer, written over by every such read."""
    return _DISCARDED


class ReceiveArea:
    """A channel's receive buffer: bytes [0, filled) of one bytearray, the start of which is
    always the start of a frame.

    A transport reads into `writable(hint)` and calls `commit(n)` (asyncio's BufferedProtocol,
    uvloop's TLS reads included), or bytes the caller owns are `append`ed; the parser then
    `consume`s the whole frames at the front. The area is RECEIVE_AREA bytes once a transport
    reads into it, grows by doubling (appends stay amortised O(1)), reserves room for more of
    a partial frame only up to twice what has arrived (a prefix alone never allocates its whole
    frame), and shrinks back when over 4x RECEIVE_AREA and 4x what it needs: a channel holds
    at most twice its largest frame or 4x RECEIVE_AREA. Every change of size is a new
    bytearray, never a resize, so a view a transport still holds stays valid.
    """

    def __init__(self) -> None:
        self._data = bytearray()
        self.filled = 0
        self._floor = 0  # RECEIVE_AREA once a transport reads into the area

    def view(self) -> memoryview:
        """The bytes held (release the view before the next call that changes the area)."""
        return memoryview(self._data)[:self.filled]

    def writable(self, hint: int) -> memoryview:
        """Free space after the bytes held: at least `hint` bytes up to RECEIVE_AREA."""
        self._floor = RECEIVE_AREA
        self._fit(self.filled + max(min(hint, RECEIVE_AREA), _MIN_READ))
        return memoryview(self._data)[self.filled:]

    def commit(self, count: int) -> None:
        """`count` bytes were written into the last `writable()` view."""
        self.filled += count

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Copy bytes the caller owns in after the bytes held."""
        end = self.filled + len(data)
        self._fit(end)
        self._data[self.filled:end] = data
        self.filled = end

    def consume(self, count: int) -> None:
        """Drop the first `count` bytes (whole frames); the rest moves to the front."""
        rest = self.filled - count
        if count and rest:
            self._data[:rest] = self._data[count:self.filled]  # same size: no resize
        self.filled = rest
        self._fit(0)

    def clear(self) -> None:
        """Forget everything: a new, empty area (a traceback may still view the old one)."""
        self._data, self.filled = bytearray(), 0

    def _fit(self, need: int) -> None:
        frame = 0
        if self.filled >= PREFIX_LEN:
            _magic, _type, _sequence, hlen, blen = PREFIX.unpack_from(self._data, 0)
            frame = min(PREFIX_LEN + hlen + blen, 2 * self.filled)
        size = max(need, frame, self._floor)
        capacity = len(self._data)
        if size > capacity:
            capacity = max(size, 2 * capacity)
        elif capacity > 4 * max(size, RECEIVE_AREA):
            capacity = max(size, self._floor)
        else:
            return
        data = bytearray(capacity)
        data[:self.filled] = self._data[:self.filled]
        self._data = data


class FrameDecoder:
    """Incremental decoder: bytes in, whole messages out. Caps are checked before buffering.

    Two ways in: `feed(data)` with bytes the caller owns (frames wholly inside them are parsed
    straight from them; only a partial frame is kept), or `writable(hint)` + `written(n)`, a
    transport reading into the decoder's `ReceiveArea`, so received bytes are not joined or
    appended before parsing. Either way each body byte is copied once more, into its Message.

    After a `FrameError` the decoder is broken and refuses further input: the caller must close
    the channel (a framing error cannot be resynchronised).
    """

    def __init__(self, max_headers_len: int = MAX_HEADERS_LEN,
                 max_body_len: int = MAX_BODY_LEN) -> None:
        self._area = ReceiveArea()
        self._max_headers_len = max_headers_len
        self._max_body_len = max_body_len
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return self._area.filled

    def set_limits(self, max_headers_len: int, max_body_len: int) -> None:
        """Change the caps (e.g. tighter while waiting for a hello)."""
        self._max_headers_len = max_headers_len
        self._max_body_len = max_body_len

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Add received bytes; return every message now complete."""
        self._check_usable()
        if self._area.filled:
            self._area.append(data)
            return self._parse_area()
        messages, offset = self._parse_all(data)
        if offset < len(data):
            self._area.append(memoryview(data)[offset:])
        return messages

    def writable(self, hint: int) -> memoryview:
        """Where a transport reads the next bytes into; then call `written(n)`."""
        self._check_usable()
        return self._area.writable(hint)

    def written(self, count: int) -> list[Message]:
        """`count` bytes were read into the last `writable()` view; every message now complete."""
        self._check_usable()
        self._area.commit(count)
        return self._parse_area()

    def _check_usable(self) -> None:
        if self._failed:
            raise FrameError("decoder already failed")

    def _parse_area(self) -> list[Message]:
        messages, offset = self._parse_all(self._area.view())
        self._area.consume(offset)
        return messages

    def _parse_all(self, source: bytes | bytearray | memoryview) -> tuple[list[Message], int]:
        messages: list[Message] = []
        offset = 0
        try:
            with memoryview(source) as view:
                while (parsed := self._parse_at(view, offset)) is not None:
                    message, offset = parsed
                    messages.append(message)
        except FrameError:
            self._failed = True
            self._area.clear()
            raise
        return messages, offset

    def _parse_at(self, view: memoryview, offset: int) -> tuple[Message, int] | None:
        prefix = read_prefix(view, offset, self._max_headers_len, self._max_body_len)
        if prefix is None:
            return None
        content_type, sequence, hlen, blen = prefix
        start = offset + PREFIX_LEN
        end = start + hlen + blen
        if len(view) < end:
            return None
        headers = decode_headers(view[start : start + hlen])
        return Message(content_type, headers, bytes(view[start + hlen : end]), sequence), end
