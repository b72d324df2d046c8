"""Event loop helpers for the long-running commands: uvloop runner and signal handling.

`run(main)` runs `main(stop)` on uvloop when it is installed; the first SIGTERM/SIGINT sets
`stop` (graceful shutdown is `main`'s job), a second one cancels `main` (forced exit).
"""

from __future__ import annotations

import asyncio
import resource
import signal
import socket
from collections.abc import Awaitable, Callable

from tunneler import heap
from tunneler.log import get_logger

log = get_logger("aio")

MainFunction = Callable[[asyncio.Event], Awaitable[int]]


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def no_delay(transport: asyncio.BaseTransport) -> None:
    """Send small writes at once (TCP_NODELAY): a lone edge message or echo must not wait
    for Nagle behind the peer's delayed ACK (40 ms). Unix sockets are left alone."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one (every flow holds a descriptor)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.debug("process.fd_limit_raised", soft=soft, limit=hard)
    return hard


def run(main: MainFunction) -> int:
    """Run `main(stop_event)` to completion and return its exit code (130 if forced)."""
    raise_fd_limit()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        try:
            return runner.run(_with_signals(main))
        except asyncio.CancelledError:
            return 130


async def _with_signals(main: MainFunction) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            log.info("process.stop_requested", signal=signal.Signals(signum).name)
            stop.set()
        else:
            log.warning("process.stop_forced", signal=signal.Signals(signum).name)
            task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    trimmer = heap.Trimmer(heap.process_heap())
    trimmer.start(loop)
    try:
        return await main(stop)
    finally:
        trimmer.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)

