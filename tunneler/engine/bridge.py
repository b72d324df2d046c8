"""The bridge of an intercepted TCP flow: a ``StreamBridge`` that exists before its socket.

The engine dials the service while the app's SYN is held, so the edge connection is up before
the kernel hands the accepted socket over. ``InterceptBridge`` is the dial's sink from the
start; until ``connection_made`` it keeps what the service already sent (capped: above
``HELD_HIGH_WATER`` bytes the router link is paused), a FIN, or the close, and replays them
once the socket is there. From then on it is a plain ``StreamBridge`` (half-close,
backpressure, RST on an abnormal overlay close).

Bytes go to the service's meter as in ``StreamBridge`` (held bytes when they arrive); the held
buffer and the local write buffer (when it reaches its high-water mark) report their levels
to the metrics as ``Buffer.TCP_HELD`` and ``Buffer.TCP_LOCAL_WRITE``.
"""

from __future__ import annotations

import asyncio

from tunneler.bridges import ByteMeter, StreamBridge, reset
from tunneler.counters import Buffer, Metrics

HELD_HIGH_WATER = 256 * 1024


class InterceptBridge(StreamBridge):
    """A ``StreamBridge`` whose local socket arrives after the edge connection."""

    def __init__(self, meter: ByteMeter | None = None, metrics: Metrics | None = None) -> None:
        super().__init__(meter=meter)
        self._metrics = metrics
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._held_eof = False
        self._held_close: bool | None = None  # abrupt flag of a close before the socket

    def edge_data(self, data: bytes) -> None:
        if self.transport is not None:
            super().edge_data(data)
            return
        self._held.append(data)
        self._held_bytes += len(data)
        if self.meter is not None:
            self.meter.bytes_down += len(data)
        if self._metrics is not None:
            self._metrics.buffer_level(Buffer.TCP_HELD, self._held_bytes)
        if self._held_bytes > HELD_HIGH_WATER:
            self.pause_writing()

    def edge_eof(self) -> None:
        if self.transport is not None:
            super().edge_eof()
        else:
            self._held_eof = True

    def edge_closed(self, abrupt: bool) -> None:
        if self.transport is not None:
            super().edge_closed(abrupt)
        else:
            self._held_close = abrupt
            self._release_link()

    def pause_writing(self) -> None:
        if self._metrics is not None and self.transport is not None:
            self._metrics.buffer_level(Buffer.TCP_LOCAL_WRITE,
                                       self.transport.get_write_buffer_size())
        super().pause_writing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self._release_link()  # the transport's own high-water mark takes over
        for data in self._held:
            self.transport.write(data)
        self._held.clear()
        self._held_bytes = 0
        if self._held_eof:
            super().edge_eof()
        if self._held_close is not None:
            super().edge_closed(self._held_close)
            return
        self._update_reading()

    def abort(self) -> None:
        """The flow is given up before or after its socket arrived: close both sides."""
        self._release_link()
        if self.conn is not None:
            self.conn.close()
        if self.transport is not None and not self.done:
            self.done = True
            reset(self.transport)
        self.done = True
