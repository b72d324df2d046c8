"""Reconnect delays: exponential backoff with jitter and flap detection (reliability.md §3.2).

Sans-IO: time (`now`) and randomness (`rng`) are passed in. The n-th consecutive failure waits
`uniform(d * (1 - jitter), d)` with `d = min(cap, base * 2**(n-1))`. A connection that lived at
least `stable_after` seconds resets the count, and its loss is retried immediately; one that dies
younger counts as a failure. Keep one `Backoff` per router and one per binding.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delay before the next attempt, given the history of attempts."""

    base: float = 1.0
    cap: float = 60.0
    jitter: float = 0.5
    stable_after: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0
    _connected_at: float | None = None

    def connected(self, now: float) -> None:
        """The attempt succeeded."""
        self._connected_at = now

    def failed(self) -> float:
        """An attempt failed; returns the delay before the next one."""
        self._connected_at = None
        self.failures += 1
        return self._delay()

    def lost(self, now: float) -> float:
        """An established connection ended; returns the delay before reconnecting."""
        connected_at, self._connected_at = self._connected_at, None
        if connected_at is not None and now - connected_at >= self.stable_after:
            self.failures = 0
            return 0.0
        self.failures += 1
        return self._delay()

    def _delay(self) -> float:
        ceiling = min(self.cap, self.base * 2.0 ** min(self.failures - 1, 32))
        return self.rng.uniform(ceiling * (1.0 - self.jitter), ceiling)
