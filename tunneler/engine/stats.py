"""Counters of the data path and a rate-limited logger (never a log line per packet).

``Stats.count(name)`` bumps a named counter; ``Stats.warn(event, **fields)`` logs ``event`` at
most once per ``interval`` seconds per event name and counts how many were suppressed.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from tunneler.log import get_logger

log = get_logger("engine")

LOG_INTERVAL = 10.0


class Stats:
    """Named counters plus a per-event log rate limit."""

    def __init__(self, *, interval: float = LOG_INTERVAL) -> None:
        self.counters: Counter[str] = Counter()
        self._interval = interval
        self._last_logged: dict[str, float] = {}

    def count(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to counter ``name``."""
        self.counters[name] += amount

    def warn(self, event: str, **fields: Any) -> None:
        """Log a warning, at most once per interval for each ``event``."""
        now = time.monotonic()
        last = self._last_logged.get(event)
        if last is not None and now - last < self._interval:
            self.counters["log_suppressed"] += 1
            return
        self._last_logged[event] = now
        log.warning(event, **fields)

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter, sorted by name."""
        return dict(sorted(self.counters.items()))
