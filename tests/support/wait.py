"""Polling until a condition holds, for tests that watch real processes change state."""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually(check: Callable[[], bool], timeout: float = 15.0, interval: float = 0.25) -> None:
    """Call `check` every `interval` seconds until it is true; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)
