"""The single reader and writer of the TUN device (design.md §2: one owner, batched reads).

``TunPump(tun, events)`` registers the TUN fd with ``loop.add_reader``; each time it is
readable up to ``batch`` packets are read into one reused buffer and passed to
``handler(packet)`` as a writable ``memoryview`` of exactly the packet's bytes, valid only
during the call (a handler that keeps a packet copies it). A handler exception is counted and
logged (rate-limited); the loop goes on with the next packet. ``write(packet)`` writes one
packet and counts the ones the kernel refused (queue full).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tunneler.counters import Count, Drop
from tunneler.engine.events import Events
from tunneler.tun.device import MAX_FRAME, TunDevice

DEFAULT_BATCH = 64
PacketHandler = Callable[[memoryview], None]


class TunPump:
    """Reads packets from a TUN device into a handler; writes packets back."""

    def __init__(self, tun: TunDevice, events: Events, *, batch: int = DEFAULT_BATCH) -> None:
        self.tun = tun
        self.events = events
        self.metrics = events.metrics
        self.batch = batch
        self._handler: PacketHandler | None = None
        self._buffer = bytearray(MAX_FRAME)
        self._view = memoryview(self._buffer)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, handler: PacketHandler) -> None:
        """Start delivering packets to ``handler``."""
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.tun.fileno(), self._readable)

    def stop(self) -> None:
        """Stop reading (the device stays open)."""
        if self._loop is not None:
            self._loop.remove_reader(self.tun.fileno())
            self._loop = None

    def write(self, packet: bytes | bytearray | memoryview) -> None:
        """Write one IP packet into the TUN; a full kernel queue drops it (counted)."""
        try:
            written = self.tun.write(packet)
        except OSError as exc:
            self.metrics.count(Count.TUN_WRITE_ERRORS)
            self.events.warn("engine.tun_write_failed", error=str(exc))
            return
        if written:
            self.metrics.count(Count.TUN_PACKETS_OUT)
        else:
            self.metrics.drop(Drop.TUN_WRITE)

    def _readable(self) -> None:
        handler = self._handler
        assert handler is not None
        view = self._view
        for _ in range(self.batch):
            try:
                size = self.tun.read_into(self._buffer)
            except OSError as exc:
                self.metrics.count(Count.TUN_READ_ERRORS)
                self.events.warn("engine.tun_read_failed", error=str(exc))
                return
            if size <= 0:
                return
            self.metrics.count(Count.TUN_PACKETS_IN)
            try:
                handler(view[:size])
            except Exception as exc:  # noqa: BLE001  (boundary: one packet must never stop the loop)
                self.metrics.count(Count.HANDLER_ERRORS)
                self.events.warn("engine.packet_handler_failed", error=repr(exc), exc_info=exc)
