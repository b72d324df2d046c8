"""Process runner: first SIGTERM/SIGINT asks for a graceful stop, a second one forces it."""

from __future__ import annotations

import asyncio
import os
import resource
import signal

from tunneler import aio


def test_first_signal_sets_stop_and_main_returns_its_code() -> None:
    async def main(stop: asyncio.Event) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 5)
        return 0

    assert aio.run(main) == 0


def test_second_signal_forces_exit() -> None:
    async def main(stop: asyncio.Event) -> int:
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.wait_for(stop.wait(), 5)
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(30)  # a shutdown that hangs
        return 0

    assert aio.run(main) == 130



def test_fd_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        assert aio.raise_fd_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
