"""Counters of the data path and a rate-limited logger (never a log line per packet).

``Stats.count(name)`` bumps a named counter; ``Stats.warn(event, **fields)`` logs ``event`` at
most once per ``interval`` seconds per event name and counts how many were suppressed.
``flow_opened``/``flow_closed`` count a flow and log ``flow.opened``/``flow.closed`` at debug
level (who talked to what through which service; never payload).
"""

from __future__ import annotations

import time
from collections import Counter
from ipaddress import IPv4Address
from typing import Any

from tunneler.log import get_logger
from tunneler.nat import OriginalDestination

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

    def flow_opened(self, proto: str, service: str, key: OriginalDestination) -> None:
        """Count a new intercepted flow and log it at debug level."""
        self.counters[f"{proto}_flows_opened"] += 1
        log.debug("flow.opened", proto=proto, service=service, **_endpoints(key))

    def flow_closed(self, proto: str, service: str, key: OriginalDestination) -> None:
        """Count an ended flow and log it at debug level."""
        self.counters[f"{proto}_flows_closed"] += 1
        log.debug("flow.closed", proto=proto, service=service, **_endpoints(key))

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter, sorted by name."""
        return dict(sorted(self.counters.items()))


def _endpoints(key: OriginalDestination) -> dict[str, str]:
    return {"src": f"{IPv4Address(key.src_ip)}:{key.src_port}",
            "dst": f"{IPv4Address(key.dst_ip)}:{key.dst_port}"}
