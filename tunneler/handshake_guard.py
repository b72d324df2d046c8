"""Per-source budget for failed TLS handshakes (sans-IO: time is passed in).

A TLS handshake is the most expensive thing an unauthenticated peer can make a listener do
(one RSA signature and a certificate check, about 1-2 ms of CPU here with OpenSSL 3.0), and
a client certificate from a foreign CA fails only at its end. A source address that failed
more than `budget` handshakes within `window` seconds is refused at accept, before any TLS
work, until its failures age out of the window; every other source is served as before.
A real client rarely fails a handshake, so the budget only bites a flood (reliability.md
§3.6). At most `max_sources` addresses are tracked (the least recently failing is
forgotten first), so memory is bounded whatever the number of attackers.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

DEFAULT_BUDGET = 20
DEFAULT_WINDOW = 10.0
DEFAULT_MAX_SOURCES = 4096


@dataclass
class GuardCounts:
    """What the guard did (read by tests and logs)."""

    failures: int = 0        # failed handshakes recorded
    refused: int = 0         # connections closed at accept
    throttled: int = 0       # times a source went over its budget


class HandshakeGuard:
    """Failed handshakes per source in a sliding window."""

    def __init__(self, budget: int = DEFAULT_BUDGET, window: float = DEFAULT_WINDOW,
                 max_sources: int = DEFAULT_MAX_SOURCES) -> None:
        if budget < 1 or window <= 0 or max_sources < 1:
            raise ValueError("budget, window and max_sources must be positive")
        self.budget, self.window, self.max_sources = budget, window, max_sources
        self.counts = GuardCounts()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, source: str, now: float) -> deque[float] | None:
        times = self._failures.get(source)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[source]
            return None
        return times

    def admit(self, source: str, now: float) -> bool:
        """Whether a new connection from `source` may start a handshake."""
        times = self._recent(source, now)
        if times is not None and len(times) >= self.budget:
            self.counts.refused += 1
            return False
        return True

    def failed(self, source: str, now: float) -> bool:
        """Record a failed handshake; True when it put `source` over its budget."""
        self.counts.failures += 1
        times = self._recent(source, now)
        if times is None:
            times = self._failures[source] = deque(maxlen=self.budget)
            while len(self._failures) > self.max_sources:
                self._failures.popitem(last=False)
        self._failures.move_to_end(source)
        before = len(times)
        times.append(now)
        if before < self.budget <= len(times):
            self.counts.throttled += 1
            return True
        return False
