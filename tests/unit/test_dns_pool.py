"""Virtual-IP pool: reserved addresses, stability, exhaustion, quarantine, flows, quotas."""

from __future__ import annotations

import re
from ipaddress import IPv4Address

import pytest

from tunneler.dns.pool import VipPool
from tunneler.errors import PoolExhausted, WildcardQuotaExceeded


def test_default_range_layout() -> None:
    pool = VipPool()
    assert pool.tun_ip == IPv4Address("100.64.0.1")
    assert pool.dns_ip == IPv4Address("100.64.0.2")
    assert pool.assign("a.test", 0.0) == IPv4Address("100.64.0.3")
    assert pool.assign("b.test", 0.0) == IPv4Address("100.64.0.4")
    assert pool.capacity == 2**22 - 4


def test_names_are_stable_and_reverse_lookup_works() -> None:
    pool = VipPool("10.9.0.1/24")
    ip = pool.assign("llm.private.test", 0.0)
    assert pool.assign("llm.private.test", 50.0) == ip
    assert pool.lookup("llm.private.test") == ip
    assert pool.hostname_for(ip) == "llm.private.test"
    assert pool.hostname_for(IPv4Address("10.9.0.200")) is None
    assert pool.lookup("other.test") is None


def test_exhaustion_on_a_24_never_hands_out_reserved_addresses() -> None:
    pool = VipPool("192.168.7.1/24")
    assert pool.capacity == 252
    given = {pool.assign(f"h{i}.test", 0.0) for i in range(252)}
    assert len(given) == 252
    reserved = {IPv4Address(f"192.168.7.{n}") for n in (0, 1, 2, 255)}
    assert not given & reserved
    with pytest.raises(PoolExhausted):
        pool.assign("one-too-many.test", 0.0)
    assert pool.counters["exhausted"] == 1
    assert pool.assign("h7.test", 0.0) == IPv4Address("192.168.7.10")  # held names still work


def test_retired_name_is_quarantined_then_reused() -> None:
    pool = VipPool("192.168.7.1/29", quarantine=120.0)  # offsets 3..6: four VIPs
    ips = [pool.assign(f"h{i}.test", 0.0) for i in range(4)]
    pool.retain(lambda name: name != "h0.test", 10.0)
    assert pool.lookup("h0.test") is None and pool.hostname_for(ips[0]) is None
    with pytest.raises(PoolExhausted):
        pool.assign("new.test", 129.9)  # still quarantined
    assert pool.assign("new.test", 130.0) == ips[0]
    assert pool.counters["retired"] == 1


def test_quarantined_name_gets_its_address_back() -> None:
    pool = VipPool("10.0.0.1/24")
    ip = pool.assign("back.test", 0.0)
    pool.retain(lambda name: False, 1.0)
    assert pool.lookup("back.test") is None
    other = pool.assign("other.test", 2.0)
    assert other != ip
    assert pool.assign("back.test", 3.0) == ip
    assert pool.counters["restored"] == 1


def test_address_with_live_flows_is_never_reassigned() -> None:
    pool = VipPool("10.0.0.1/29", quarantine=10.0)
    ip = pool.assign("busy.test", 0.0)
    pool.acquire(ip, 1.0)
    pool.acquire(ip, 1.0)
    pool.retain(lambda name: False, 2.0)
    assert pool.lookup("busy.test") is None  # no longer answered in DNS
    assert pool.hostname_for(ip) == "busy.test"  # but live flows still map back
    for i in range(3):
        assert pool.assign(f"x{i}.test", 100.0) != ip
    with pytest.raises(PoolExhausted):
        pool.assign("x3.test", 100.0)
    pool.release(ip, 101.0)
    assert pool.hostname_for(ip) == "busy.test"
    pool.release(ip, 102.0)
    pool.release(ip, 102.0)  # extra releases are ignored
    assert pool.hostname_for(ip) is None
    with pytest.raises(PoolExhausted):
        pool.assign("x3.test", 111.9)
    assert pool.assign("x3.test", 112.0) == ip


def test_wildcard_quota_evicts_lru_without_flows() -> None:
    pool = VipPool("10.0.0.1/24", wildcard_quota=3)
    a, b, c = (pool.assign(f"{n}.wild.test", 0.0, wildcard="wild.test") for n in "abc")
    pool.touch(a, 1.0)
    pool.acquire(b, 1.0)
    d = pool.assign("d.wild.test", 2.0, wildcard="wild.test")
    assert pool.lookup("c.wild.test") is None  # LRU without flows
    assert {pool.lookup(f"{n}.wild.test") for n in "abd"} == {a, b, d}
    assert pool.counters["evicted"] == 1
    assert c not in {a, b, d}
    exact = pool.assign("exact.test", 2.0)  # exact names do not count against a wildcard
    assert exact not in {a, b, c, d}


def test_wildcard_quota_with_every_name_busy_is_an_error() -> None:
    pool = VipPool("10.0.0.1/24", wildcard_quota=2)
    for name in ("a.w.test", "b.w.test"):
        pool.acquire(pool.assign(name, 0.0, wildcard="w.test"), 0.0)
    with pytest.raises(WildcardQuotaExceeded):
        pool.assign("c.w.test", 1.0, wildcard="w.test")
    assert pool.counters["quota_exceeded"] == 1
    assert pool.assign("c.other.test", 1.0, wildcard="other.test") is not None


def test_unknown_addresses_are_ignored_by_flow_calls() -> None:
    pool = VipPool("10.0.0.1/24")
    stray = IPv4Address("10.0.0.77")
    pool.acquire(stray, 0.0)
    pool.release(stray, 0.0)
    pool.touch(stray, 0.0)
    assert pool.in_use == 0


@pytest.mark.parametrize("cidr", ["10.0.0.1/30", "10.0.0.1/32", "10.0.0.6/29"])
def test_too_small_ranges_are_rejected(cidr: str) -> None:
    with pytest.raises(ValueError, match=re.escape(cidr)):
        VipPool(cidr)


def test_cursor_wraps_and_skips_quarantine() -> None:
    pool = VipPool("10.0.0.1/29", quarantine=5.0)
    first = [pool.assign(f"n{i}.test", 0.0) for i in range(4)]
    pool.retain(lambda name: name in {"n1.test", "n2.test", "n3.test"}, 0.0)
    assert pool.in_use == 4
    assert pool.assign("late.test", 6.0) == first[0]


def test_wildcard_names_lists_active_members_most_recent_first() -> None:
    pool = VipPool("10.0.0.1/24", wildcard_quota=3)
    a, b, c = (pool.assign(f"{n}.wild.test", 0.0, wildcard="wild.test") for n in "abc")
    pool.assign("exact.wild.test", 0.0)                 # an exact name is no member
    pool.touch(a, 1.0)
    assert pool.wildcard_names("wild.test") == [
        ("a.wild.test", a), ("c.wild.test", c), ("b.wild.test", b)]
    pool.acquire(b, 2.0)
    pool.retain(lambda name: name != "b.wild.test", 3.0)  # retired, kept by its flow
    assert [name for name, _ in pool.wildcard_names("wild.test")] == ["a.wild.test",
                                                                      "c.wild.test"]
    assert pool.wildcard_names("other.test") == []


def test_a_reserved_address_is_never_assigned_nor_counted_in_use() -> None:
    pool = VipPool("100.64.0.1/29")  # .1 TUN, .2 DNS, .3-.6 usable
    nat = pool.reserve()
    assert str(nat) == "100.64.0.3" and pool.capacity == 3 and pool.in_use == 0
    assigned = {pool.assign(f"n{i}.test", 0.0) for i in range(3)}
    assert nat not in assigned and pool.hostname_for(nat) is None
    with pytest.raises(PoolExhausted):
        pool.reserve()
