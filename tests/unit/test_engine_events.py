"""Engine events: rate-limited warnings, flows counted and logged at debug level."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest
import structlog
from structlog.testing import capture_logs

from tunneler.counters import Count, Metrics
from tunneler.engine.events import Events
from tunneler.nat import OriginalDestination


@pytest.fixture(autouse=True)
def _every_level_logged() -> Iterator[None]:
    """Another test may have configured an info-level filter: debug events must reach us."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def test_warnings_are_rate_limited_and_suppressions_counted() -> None:
    events = Events(Metrics(), interval=60.0)
    with capture_logs() as logs:
        for _ in range(5):
            events.warn("engine.tcp_dial_failed", service="llm")
    assert [entry["event"] for entry in logs] == ["engine.tcp_dial_failed"]
    assert events.metrics.counts[Count.LOG_SUPPRESSED] == 4


def test_flows_are_counted_and_logged_with_their_endpoints() -> None:
    events = Events(Metrics())
    key = OriginalDestination(int(IPv4Address("100.64.0.1")), 45000,
                              int(IPv4Address("100.64.0.4")), 8000)
    with capture_logs() as logs:
        events.flow_opened("tcp", "llm", key)
        events.flow_closed("tcp", "llm", key)
    assert [(e["event"], e["log_level"]) for e in logs] == [("flow.opened", "debug"),
                                                             ("flow.closed", "debug")]
    assert logs[0]["src"] == "100.64.0.1:45000" and logs[0]["dst"] == "100.64.0.4:8000"
    assert logs[0]["service"] == "llm" and logs[0]["proto"] == "tcp"
    assert events.metrics.totals() == {"tcp_flows_closed": 1, "tcp_flows_opened": 1}
    assert events.metrics.snapshot().services["llm"].flows_opened == 1
    assert events.metrics.active_flows("llm") == 0
