"""The heap trimmer: trims past the threshold only, on a fake heap and on this process's."""

from __future__ import annotations

import asyncio

from tunneler import heap


class FakeHeap:
    def __init__(self, free: int) -> None:
        self.free = free
        self.trims = 0
        self.third_trim = asyncio.Event()

    def free_bytes(self) -> int:
        return self.free

    def trim(self) -> None:
        self.trims += 1
        if self.trims == 3:
            self.third_trim.set()


def test_trims_only_when_the_free_bytes_reach_the_threshold() -> None:
    fake = FakeHeap(free=heap.THRESHOLD - 1)
    trimmer = heap.Trimmer(fake)
    assert not trimmer.check() and fake.trims == 0
    fake.free = heap.THRESHOLD
    assert trimmer.check() and fake.trims == 1 == trimmer.trims


def test_checks_every_interval_until_stopped() -> None:
    async def main() -> None:
        fake = FakeHeap(free=heap.THRESHOLD)
        trimmer = heap.Trimmer(fake, interval=0.01)
        trimmer.start(asyncio.get_running_loop())
        await fake.third_trim.wait()
        trimmer.stop()
        trims = fake.trims
        await asyncio.sleep(0.05)
        assert fake.trims == trims

    asyncio.run(main())


def test_this_process_heap_reports_freed_buffers() -> None:
    real = heap.process_heap()
    assert isinstance(real, heap.GlibcHeap)  # the Debian image and CI run glibc
    buffers = [bytearray(100_000 + i) for i in range(200)]
    # measured after the allocation: the buffers may be carved from chunks that were already
    # free, so a figure taken before would count those twice
    before = real.free_bytes()
    del buffers[::2]  # holes inside the heap: free chunks glibc keeps
    assert real.free_bytes() >= before + 50 * 100_000
    real.trim()  # returns their pages; the chunks stay on the free lists
    del buffers
