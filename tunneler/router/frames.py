"""Raw frame splitting for the router's receive path, and the Data fast path's ConnId edit.

The router splits the TLS byte stream into whole frames itself (lengths checked against caps
before anything is buffered beyond the 20-byte prefix) so that Data frames of established
circuits can be relayed as bytes with only the 4-byte ConnId value rewritten; every other
frame is handed whole to the channel's `ChannelConnection`.
"""

from __future__ import annotations

import struct

from tunneler.channel.message import PREFIX_LEN, ReceiveArea, read_prefix
from tunneler.edge.messages import CONN_ID_HEADER

_HEADER = struct.Struct("<iI")
_HLEN = struct.Struct("<I")
EDGE_HEADER_MIN = 1000  # ids below are channel-level and never relayed


class FrameSplitter:
    """Incremental splitter: bytes in (fed, or read into its `ReceiveArea` by the transport),
    then whole frames out with `next_frame()`."""

    def __init__(self, max_headers_len: int, max_body_len: int) -> None:
        self._area = ReceiveArea()
        self._offset = 0
        self.max_headers_len = max_headers_len
        self.max_body_len = max_body_len

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes."""
        self._compact()
        self._area.append(data)

    def writable(self, hint: int) -> memoryview:
        """Where a transport reads the next bytes into; then call `written(n)`."""
        self._compact()
        return self._area.writable(hint)

    def written(self, count: int) -> None:
        """`count` bytes were read into the last `writable()` view."""
        self._area.commit(count)

    @property
    def buffered(self) -> int:
        """Bytes held that are not yet a whole frame."""
        return self._area.filled - self._offset

    def next_frame(self) -> tuple[int, bytes] | None:
        """The next whole frame as (content type, frame bytes), or None; raises FrameError."""
        offset = self._offset
        with self._area.view() as buf:
            prefix = read_prefix(buf, offset, self.max_headers_len, self.max_body_len)
            if prefix is None:
                return None
            content_type, _seq, hlen, blen = prefix
            end = offset + PREFIX_LEN + hlen + blen
            if end > len(buf):
                return None
            frame = bytes(buf[offset:end])
        self._offset = end
        return content_type, frame

    def _compact(self) -> None:
        if self._offset:
            self._area.consume(self._offset)
            self._offset = 0


def data_conn_id_offset(frame: bytes) -> int:
    """Offset of the 4-byte ConnId value of a Data frame, or -1 when the fast path must not be used.

    The fast path applies only to well-formed header blocks made solely of edge headers (ids >=
    1000) with a 4-byte ConnId; anything else takes the decoding path.
    """
    end = PREFIX_LEN + _HLEN.unpack_from(frame, 12)[0]
    offset, found = PREFIX_LEN, -1
    while offset + _HEADER.size <= end:
        header_id, length = _HEADER.unpack_from(frame, offset)
        offset += _HEADER.size
        if header_id < EDGE_HEADER_MIN or length > end - offset:
            return -1
        if header_id == CONN_ID_HEADER:
            if length != 4:
                return -1
            found = offset
        offset += length
    return found if offset == end else -1


def body_length(frame: bytes) -> int:
    """The body length field of a whole frame."""
    length: int = _HLEN.unpack_from(frame, 16)[0]
    return length
