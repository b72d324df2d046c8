"""Reconnect backoff: exponential growth, jitter bounds, cap, flap detection."""

from __future__ import annotations

import random

from tunneler.client.backoff import Backoff


def test_failures_grow_exponentially_within_jitter_bounds() -> None:
    backoff = Backoff(base=1.0, cap=60.0, jitter=0.5, rng=random.Random(7))
    for n in range(1, 12):
        ceiling = min(60.0, 2.0 ** (n - 1))
        delay = backoff.failed()
        assert ceiling * 0.5 <= delay <= ceiling


def test_delay_never_exceeds_cap_after_many_failures() -> None:
    backoff = Backoff(rng=random.Random(1))
    delays = [backoff.failed() for _ in range(200)]
    assert max(delays) <= 60.0
    assert min(delays[10:]) >= 30.0


def test_loss_after_stable_connection_retries_immediately_and_resets() -> None:
    backoff = Backoff(rng=random.Random(3))
    for _ in range(5):
        backoff.failed()
    backoff.connected(now=100.0)
    assert backoff.lost(now=131.0) == 0.0
    assert backoff.failures == 0
    assert 0.5 <= backoff.failed() <= 1.0


def test_flapping_connection_counts_as_failure() -> None:
    backoff = Backoff(rng=random.Random(3))
    backoff.failed()
    backoff.connected(now=100.0)
    delay = backoff.lost(now=105.0)
    assert backoff.failures == 2
    assert 1.0 <= delay <= 2.0


def test_jitter_spreads_reconnects() -> None:
    rng = random.Random(11)
    delays = [Backoff(base=8.0, rng=rng).failed() for _ in range(1000)]
    buckets = [0] * 4
    for delay in delays:
        buckets[min(3, int(delay - 4.0))] += 1
    assert max(buckets) <= 350
