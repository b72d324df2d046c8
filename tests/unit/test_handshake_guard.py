"""The failed-handshake budget per source: over it a source is refused until its failures
age out of the window; other sources are untouched; memory is bounded by `max_sources`."""

from __future__ import annotations

import pytest

from tunneler.handshake_guard import HandshakeGuard


def test_a_source_over_its_budget_is_refused_until_its_failures_age_out() -> None:
    guard = HandshakeGuard(budget=3, window=10.0)
    assert [guard.failed("10.0.0.9", t) for t in (0.0, 1.0, 2.0)] == [False, False, True]
    assert not guard.admit("10.0.0.9", 5.0)
    assert guard.admit("10.0.0.1", 5.0)          # everyone else is served
    assert not guard.admit("10.0.0.9", 9.5)      # all three still in the window
    assert guard.admit("10.0.0.9", 10.5)         # the oldest aged out: under budget again
    assert guard.counts.refused == 2 and guard.counts.throttled == 1
    assert guard.counts.failures == 3


def test_failures_below_the_budget_never_refuse() -> None:
    guard = HandshakeGuard(budget=5, window=1.0)
    for second in range(100):                    # 4 a second for 100 s: a flaky client
        for quarter in range(4):
            guard.failed("192.0.2.7", second + quarter / 4)
        assert guard.admit("192.0.2.7", second + 0.99)
    assert guard.counts.throttled == 0 and guard.counts.refused == 0


def test_tracked_sources_are_capped() -> None:
    guard = HandshakeGuard(budget=2, window=60.0, max_sources=100)
    for n in range(10_000):
        guard.failed(f"198.51.{n // 256}.{n % 256}", 1.0)
    assert len(guard._failures) == 100
    guard.failed("203.0.113.5", 2.0)
    guard.failed("203.0.113.5", 2.0)
    assert not guard.admit("203.0.113.5", 3.0)   # the newest are the ones kept


@pytest.mark.parametrize("args", [(0, 1.0, 1), (1, 0.0, 1), (1, 1.0, 0)])
def test_nonsense_limits_are_refused(args: tuple[int, float, int]) -> None:
    with pytest.raises(ValueError):
        HandshakeGuard(*args)
