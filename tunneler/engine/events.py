"""What the data path reports besides its counters: a rate-limited log and the flow log lines.

``Events(metrics)`` is shared by every part of the engine. ``warn(event, **fields)`` logs
``event`` at most once per ``interval`` seconds per event name and counts the suppressed ones
(``Count.LOG_SUPPRESSED``), so a flood never becomes a log line per packet.
``flow_opened``/``flow_closed`` count a flow (per protocol and per service) and log
``flow.opened``/``flow.closed`` at debug level (who talked to what through which service;
never payload). The counters themselves are ``metrics`` (`tunneler.counters.Metrics`).
"""

from __future__ import annotations

import time
from ipaddress import IPv4Address
from typing import Any, Literal

from tunneler.counters import Count, Metrics
from tunneler.log import get_logger
from tunneler.nat import OriginalDestination

log = get_logger("engine")

LOG_INTERVAL = 10.0
#: the protocols the engine intercepts (a typo is a mypy error, not a KeyError at run time)
Proto = Literal["tcp", "udp"]
_OPENED: dict[Proto, Count] = {"tcp": Count.TCP_FLOWS_OPENED, "udp": Count.UDP_FLOWS_OPENED}
_CLOSED: dict[Proto, Count] = {"tcp": Count.TCP_FLOWS_CLOSED, "udp": Count.UDP_FLOWS_CLOSED}


class Events:
    """The engine's counters plus a per-event log rate limit."""

    def __init__(self, metrics: Metrics, *, interval: float = LOG_INTERVAL) -> None:
        self.metrics = metrics
        self._interval = interval
        self._last_logged: dict[str, float] = {}

    def warn(self, event: str, **fields: Any) -> None:
        """Log a warning, at most once per interval for each ``event``."""
        now = time.monotonic()
        last = self._last_logged.get(event)
        if last is not None and now - last < self._interval:
            self.metrics.count(Count.LOG_SUPPRESSED)
            return
        self._last_logged[event] = now
        log.warning(event, **fields)

    def flow_opened(self, proto: Proto, service: str, key: OriginalDestination) -> None:
        """Count a new intercepted flow and log it at debug level."""
        self.metrics.count(_OPENED[proto])
        self.metrics.flow_opened(service)
        log.debug("flow.opened", proto=proto, service=service, **_endpoints(key))

    def flow_closed(self, proto: Proto, service: str, key: OriginalDestination) -> None:
        """Count an ended flow and log it at debug level."""
        self.metrics.count(_CLOSED[proto])
        self.metrics.flow_closed(service)
        log.debug("flow.closed", proto=proto, service=service, **_endpoints(key))


def _endpoints(key: OriginalDestination) -> dict[str, str]:
    return {"src": f"{IPv4Address(key.src_ip)}:{key.src_port}",
            "dst": f"{IPv4Address(key.dst_ip)}:{key.dst_port}"}
