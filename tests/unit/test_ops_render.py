"""Ops layer, pure parts: snapshot JSON round trip, problems(), stats, table and status text."""

from __future__ import annotations

import dataclasses
import json

import pytest
from ops_support import SampleView, llm_rows

from tunneler.counters import MAX_LABELS, OTHER, Buffer, Metrics
from tunneler.errors import DialError, DialFailure
from tunneler.ops.render import (
    fit_widths,
    human_bytes,
    human_duration,
    intercept_cells,
    render_intercepts,
    render_json,
    render_status,
    status_json,
    truncate,
)
from tunneler.ops.snapshot import IdentityStatus, InterceptRow, Status, from_json, problems, to_json
from tunneler.packet.parse import DropReason


def busy_view() -> SampleView:
    view = SampleView(rows=llm_rows())
    for _ in range(3):
        view.stats.flow_opened("llm")
    view.stats.flow_closed("llm")
    view.stats.meter("llm").bytes_up += 1500
    view.stats.meter("llm").bytes_down += 3 * 1024 * 1024
    view.stats.dial_succeeded("llm", 0.02)
    view.stats.dial_failed("models-wildcard-service-with-a-long-name",
                           DialError("dial 'models' timed out after 5s", DialFailure.TIMEOUT))
    view.dns_counts["answered"] = 1
    view.stats.drop(DropReason.TRUNCATED)
    view.stats.buffer_level(Buffer.TCP_HELD, 65536)
    view.stats.buffer_level(Buffer.TCP_HELD, 1024)
    return view


def test_status_round_trips_through_json() -> None:
    status = busy_view().status()
    wire = json.loads(json.dumps(to_json(status)))
    assert from_json(Status, wire) == status


def test_intercept_rows_round_trip() -> None:
    rows = busy_view().intercepts()
    assert [from_json(InterceptRow, json.loads(json.dumps(to_json(r)))) for r in rows] == rows


@pytest.mark.parametrize(("data", "message"), [
    ({"service": "s", "identity": "i"}, r"\$\.address: missing"),
    ({"address": 5, "service": "s", "identity": "i"}, r"\$\.address: expected a str"),
    ({"address": "a", "service": "s", "identity": "i", "active_flows": True},
     r"active_flows: expected a int"),
    ({"address": "a", "service": "s", "identity": "i", "vips": "1.2.3.4"},
     r"vips: expected a list"),
    ({"address": "a", "service": "s", "identity": "i", "router_latency_ms": "x"},
     r"router_latency_ms: expected a number"),
    ([], r"expected an object"),
])
def test_from_json_rejects_bad_fields(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_json(InterceptRow, data)


def test_problems_name_each_failed_condition() -> None:
    assert problems(SampleView().status()) == []
    view = SampleView(router_up=False, services_loaded=False, dns_applied=False)
    assert problems(view.status()) == ["no edge router connected", "services not loaded",
                                       "DNS not applied"]


def test_stats_counts_and_keeps_high_water() -> None:
    counters = busy_view().status().counters
    assert counters.flows.flows_opened == 3
    assert counters.flows.flows_active == 2
    assert counters.flows.bytes_up == 1500
    assert counters.services["llm"].bytes_down == 3 * 1024 * 1024
    assert counters.dial_failures == {"timeout": 1}
    assert counters.dns == {"answered": 1, "forwarded": 0, "refused": 0, "dropped": 0}
    assert counters.buffer_high_water == {"tcp_held": 65536}
    assert counters.packets_dropped == {"truncated": 1}
    assert counters.dial_latency.count == 1
    assert sum(counters.dial_latency.counts) == 1
    assert counters.dial_latency.counts[2] == 1          # 0.02 s falls in the 0.025 bucket


def test_service_labels_are_capped() -> None:
    stats = Metrics()
    for n in range(MAX_LABELS + 50):
        stats.flow_opened(f"service-{n}")
    counters = stats.snapshot()
    assert counters.services[OTHER].flows_opened == 50
    assert len(counters.services) == MAX_LABELS + 1


def test_closed_flow_count_never_goes_negative() -> None:
    stats = Metrics()
    stats.flow_closed("ghost")
    assert stats.active_flows("ghost") == 0


def test_table_fits_80_columns_and_is_aligned() -> None:
    text = render_intercepts(busy_view().intercepts(), width=80)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines)
    header = lines[0]
    assert header.split() == ["ADDRESS", "VIP", "SERVICE", "PORTS", "IDENTITY", "ROUTER", "FLOWS",
                              "ERROR"]
    starts = [header.index(h) for h in ("VIP", "SERVICE", "FLOWS")]
    assert lines[1][starts[0]:].startswith("100.64.0.3")
    assert lines[2][starts[0]:].startswith("100.64.0.4+1")
    assert lines[1][starts[2]:].startswith("2 ")
    assert "…" in lines[2]                                 # long names are cut, marked
    assert "\x1b" not in text


def test_table_uses_natural_widths_when_wide() -> None:
    text = render_intercepts(busy_view().intercepts(), width=300)
    assert "…" not in text
    assert "models-wildcard-service-with-a-long-name" in text
    assert "router-with-a-rather-long-name.example 12ms" in text
    assert "tcp/udp:8000-8100,9000" in text
    assert "dial 'models' timed out after 5s" in text


def test_empty_table() -> None:
    assert render_intercepts([]) == "no intercepts"


def test_fit_and_truncate() -> None:
    assert truncate("abcdef", 4) == "abc…"
    assert truncate("abc", 4) == "abc"
    assert fit_widths([10, 30, 5], [3, 3, 3], 30) == [10, 11, 5]
    assert sum(fit_widths([50, 50], [5, 5], 20)) == 18


def test_status_text_healthy_and_unhealthy() -> None:
    text = render_status(busy_view().status())
    assert text.splitlines()[0] == "tunneler 0.1.0 (intercept), up 1h02m03s: healthy"
    assert "router1 tls://localhost:3022 (laptop): connected, 1.2ms" in text
    assert "flows       opened 3, active 2" in text
    assert "bytes       up 1.5 KiB, down 3.0 MiB" in text
    assert "dial fails  timeout 1" in text
    assert "problem:" not in text and "\x1b" not in text
    bad = render_status(SampleView(router_up=False).status(), color=True)
    assert "\x1b[31munhealthy\x1b[0m" in bad
    assert "problem: no edge router connected" in bad


def test_status_json_is_stable() -> None:
    data = status_json(busy_view().status())
    assert list(data)[:5] == ["healthy", "problems", "version", "mode", "uptime_s"]
    assert data["healthy"] is True
    assert data["counters"]["vip_pool"] == {"size": 65534, "used": 2}
    assert json.loads(render_json(busy_view().status()))["routers"][0]["connected"] is True


def test_human_units() -> None:
    assert human_bytes(12) == "12 B"
    assert human_bytes(5 * 1024**3) == "5.0 GiB"
    assert human_duration(59) == "0m59s"
    assert human_duration(90061) == "1d1h01m01s"


def test_wildcard_row_shows_first_vip_and_the_total_count() -> None:
    row = InterceptRow("*.models.test", "models", "laptop", ("100.64.0.9", "100.64.0.8"),
                       ("tcp",), ("443",), vip_count=12)
    assert intercept_cells(row)[1] == "100.64.0.9+11"
    assert intercept_cells(InterceptRow("*.none.test", "x", "laptop"))[1] == "-"


def test_unreachable_controller_shows_its_error() -> None:
    status = busy_view().status()
    ident = IdentityStatus("laptop", True, False, None, 2, "controller: CONTROLLER_UNAVAILABLE",
                           "2030-01-01T00:00:00+00:00")
    text = render_status(dataclasses.replace(status, identities=(ident,)))
    assert "laptop: loaded, controller UNREACHABLE (controller: CONTROLLER_UNAVAILABLE)" in text


def test_services_served_from_the_cache_say_so() -> None:
    status = busy_view().status()
    ident = IdentityStatus("laptop", True, False, None, 2, "controller: CONTROLLER_UNAVAILABLE",
                           services_cached_at="2030-01-01T00:00:00+00:00")
    text = render_status(dataclasses.replace(status, identities=(ident,)))
    assert "2 services (from the cache saved 2030-01-01T00:00:00+00:00)" in text
    assert "from the cache" not in render_status(status)
