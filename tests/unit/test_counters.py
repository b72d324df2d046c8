"""The typed metrics model (`tunneler.counters`): enum keys become the names ops shows."""

from __future__ import annotations

import enum

from tunneler.counters import (
    DNS_OUTCOMES,
    Buffer,
    Count,
    Drop,
    Metrics,
    PoolUsage,
    Refusal,
)
from tunneler.errors import DialError, DialFailure
from tunneler.packet.parse import DropReason


def _values(*enums: type[enum.Enum]) -> list[str]:
    return [member.value for kind in enums for member in kind]


def test_names_that_share_a_table_never_collide() -> None:
    """Refusals and dial failures share `dial_failures`; parser and engine drops share
    `packets_dropped`: a value used twice would add two different things together."""
    for group in ((DialFailure, Refusal), (DropReason, Drop), (Count,), (Buffer,)):
        names = _values(*group)
        assert len(names) == len(set(names)), group


def test_snapshot_shows_each_counter_under_its_stable_name() -> None:
    metrics = Metrics()
    metrics.refuse(Refusal.NO_INTERCEPT)
    metrics.refuse(Refusal.NO_INTERCEPT)
    metrics.refuse(Refusal.NAT_TABLE_FULL)
    assert metrics.dial_failed("llm", DialError("no terminators")) is DialFailure.REFUSED
    metrics.dial_failed("llm", DialError("slow", DialFailure.TIMEOUT))
    metrics.drop(DropReason.BAD_IP_CHECKSUM)
    metrics.drop(Drop.TUN_WRITE)
    metrics.buffer_level(Buffer.UDP_DIAL_QUEUE, 300)
    metrics.buffer_level(Buffer.UDP_DIAL_QUEUE, 100)
    metrics.count(Count.TUN_PACKETS_IN, 7)
    counters = metrics.snapshot(PoolUsage(10, 2))
    assert counters.dial_failures == {"no_intercept": 2, "nat_table_full": 1, "refused": 1,
                                      "timeout": 1}
    assert counters.packets_dropped == {"bad_ip_checksum": 1, "tun_write_dropped": 1}
    assert counters.buffer_high_water == {"udp_dial_queue": 300}
    assert counters.dns == dict.fromkeys(DNS_OUTCOMES, 0)      # run-host answers no DNS
    assert counters.vip_pool == PoolUsage(10, 2)
    assert metrics.last_error("llm") == "slow"
    assert metrics.totals() == {"drop_bad_ip_checksum": 1, "drop_tun_write_dropped": 1,
                                "refused_nat_table_full": 1, "refused_no_intercept": 2,
                                "tun_packets_in": 7}


def test_dns_outcomes_given_by_the_engine_replace_the_zeros() -> None:
    dns = {"answered": 3, "forwarded": 1, "refused": 0, "dropped": 2}
    assert Metrics().snapshot(dns=dns).dns == dns


def test_a_success_clears_the_last_error() -> None:
    metrics = Metrics()
    metrics.dial_failed("llm", OSError("unreachable"))
    assert metrics.snapshot().dial_failures == {"error": 1}
    metrics.dial_succeeded("llm", 0.01)
    assert metrics.last_error("llm") is None
