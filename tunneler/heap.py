"""Give freed heap memory back to the kernel while a daemon runs (glibc `malloc_trim`).

Bulk transfers churn 16-256 KiB buffers (TLS reads, 64 KiB Data bodies, socket writes). Once
glibc's dynamic mmap threshold has risen past them they come from the heap, and what a burst
freed stays resident until something at the very top of the heap is freed. Fixing the
threshold instead (MALLOC_MMAP_THRESHOLD_) costs an mmap + munmap per buffer and halved
throughput. So every `INTERVAL` seconds the `Trimmer` asks the heap how many free bytes it
holds (`mallinfo2`, a walk of the free lists: microseconds) and, past `THRESHOLD`, returns
them (`malloc_trim(0)`, which also madvises free pages inside the heap): after a round of
bench/peers.py, run-host stays at 62 MiB instead of 70 and network serve at 61 instead of 63.
The free chunks stay free chunks (only their pages go), so a heap over the threshold is trimmed
at every check: 0.45 ms with 48 MiB free in 500 chunks, 6 ms the first time, i.e. < 0.01 % of
a core at one check per 5 s.

`Heap` is the OS surface; `GlibcHeap` the real one, `NoHeap` where the C library is not glibc.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from typing import Protocol

from tunneler.log import get_logger

log = get_logger("heap")

INTERVAL = 5.0
THRESHOLD = 1024 * 1024


class Heap(Protocol):
    """The C heap of this process."""

    def free_bytes(self) -> int:
        """Bytes in free chunks the heap keeps."""

    def trim(self) -> None:
        """Return free memory to the kernel."""


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


class GlibcHeap:
    """glibc's malloc: `mallinfo2().fordblks` and `malloc_trim(0)`."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        self._mallinfo2 = libc.mallinfo2
        self._mallinfo2.restype = _MallInfo2
        self._malloc_trim = libc.malloc_trim
        self._malloc_trim.argtypes = [ctypes.c_size_t]

    def free_bytes(self) -> int:
        return int(self._mallinfo2().fordblks)

    def trim(self) -> None:
        self._malloc_trim(0)


class NoHeap:
    """A C library without the glibc calls: nothing to do."""

    def free_bytes(self) -> int:
        return 0

    def trim(self) -> None:
        pass


def process_heap() -> Heap:
    """This process's heap: glibc's when the C library has `mallinfo2` and `malloc_trim`."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return GlibcHeap(libc)
    except (OSError, AttributeError, TypeError):
        return NoHeap()


class Trimmer:
    """Every `interval` seconds: trim the heap if it holds `threshold` free bytes or more."""

    def __init__(self, heap: Heap, *, interval: float = INTERVAL,
                 threshold: int = THRESHOLD) -> None:
        self._heap = heap
        self._interval = interval
        self._threshold = threshold
        self._timer: asyncio.TimerHandle | None = None
        self.trims = 0

    def check(self) -> bool:
        """One check; True if it trimmed."""
        free = self._heap.free_bytes()
        if free < self._threshold:
            return False
        self._heap.trim()
        self.trims += 1
        log.debug("heap.trimmed", free_bytes=free)
        return True

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = loop.call_later(self._interval, self._tick, loop)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self.check()
        finally:
            self.start(loop)
