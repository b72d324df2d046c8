"""host.v1 target selection: fixed targets, forward* with allowed* checks."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from tunneler.client.targets import (
    Target,
    is_address_allowed,
    permitted_addresses,
    select_target,
)
from tunneler.configs import parse_host
from tunneler.errors import DialError

FORWARD_ALL = parse_host({
    "forwardProtocol": True, "allowedProtocols": ["tcp"],
    "forwardAddress": True,
    "allowedAddresses": ["10.0.0.0/24", "db.internal", "*.svc.example", "192.168.1.7", "fd00::1"],
    "forwardPort": True, "allowedPortRanges": [{"low": 80, "high": 90}, {"low": 443, "high": 443}],
})


def test_fixed_target_ignores_app_data() -> None:
    config = parse_host({"protocol": "tcp", "address": "127.0.0.1", "port": 8000})
    app_data = {"dst_hostname": "evil.example", "dst_port": "22", "dst_protocol": "udp"}
    assert select_target(config, app_data) == Target("tcp", "127.0.0.1", 8000)


@pytest.mark.parametrize(("app_data", "expected"), [
    ({"dst_protocol": "tcp", "dst_ip": "10.0.0.9", "dst_port": "80"},
     Target("tcp", "10.0.0.9", 80, forwarded=True)),
    ({"dst_protocol": "TCP", "dst_hostname": "db.internal", "dst_ip": "1.2.3.4", "dst_port": "443"},
     Target("tcp", "db.internal", 443, forwarded=True)),
    ({"dst_protocol": "tcp", "dst_hostname": "a.b.svc.example", "dst_port": "85"},
     Target("tcp", "a.b.svc.example", 85, forwarded=True)),
    ({"dst_protocol": "tcp", "dst_hostname": "SVC.example.", "dst_port": "90"},
     Target("tcp", "SVC.example.", 90, forwarded=True)),
    ({"dst_protocol": "tcp", "dst_ip": "192.168.1.7", "dst_port": "80"},
     Target("tcp", "192.168.1.7", 80, forwarded=True)),
    ({"dst_protocol": "tcp", "dst_ip": "fd00::1", "dst_port": "80"},
     Target("tcp", "fd00::1", 80, forwarded=True)),
])
def test_forwarded_values_within_allowed(app_data: dict[str, str], expected: Target) -> None:
    assert select_target(FORWARD_ALL, app_data) == expected


@pytest.mark.parametrize(("app_data", "reason"), [
    ({"dst_protocol": "udp", "dst_ip": "10.0.0.9", "dst_port": "80"}, "protocol 'udp'"),
    ({"dst_ip": "10.0.0.9", "dst_port": "80"}, "protocol '(none)'"),
    ({"dst_protocol": "tcp", "dst_ip": "10.0.1.9", "dst_port": "80"}, "address '10.0.1.9'"),
    ({"dst_protocol": "tcp", "dst_hostname": "svc.example.evil", "dst_port": "80"}, "address"),
    ({"dst_protocol": "tcp", "dst_hostname": "xsvc.example", "dst_port": "80"}, "address"),
    ({"dst_protocol": "tcp", "dst_port": "80"}, "address '(none)'"),
    ({"dst_protocol": "tcp", "dst_ip": "10.0.0.9", "dst_port": "91"}, "port '91'"),
    ({"dst_protocol": "tcp", "dst_ip": "10.0.0.9", "dst_port": "0"}, "port '0'"),
    ({"dst_protocol": "tcp", "dst_ip": "10.0.0.9", "dst_port": "-80"}, "port '-80'"),
    ({"dst_protocol": "tcp", "dst_ip": "10.0.0.9", "dst_port": "99999999"}, "port"),
    ({"dst_protocol": "tcp", "dst_ip": "10.0.0.9"}, "port '(none)'"),
])
def test_forwarded_values_outside_allowed_are_refused(app_data: dict[str, str],
                                                       reason: str) -> None:
    with pytest.raises(DialError, match="not allowed") as info:
        select_target(FORWARD_ALL, app_data)
    assert reason in str(info.value)


def test_partial_forwarding_mixes_fixed_and_forwarded_fields() -> None:
    config = parse_host({"protocol": "tcp", "address": "backend", "forwardPort": True,
                         "allowedPortRanges": [{"low": 1, "high": 65535}]})
    assert select_target(config, {"dst_port": "5432"}) == Target("tcp", "backend", 5432)


def test_hostname_never_matches_ip_entries_and_vice_versa() -> None:
    assert not is_address_allowed("10.0.0.1", ["*.example.com", "example.com"])
    assert not is_address_allowed("example.com", ["10.0.0.0/8", "10.0.0.1"])
    assert is_address_allowed("example.com", ["*.example.com"])


# -- hostile app data (security.md SEC-01..03) -------------------------------------------------

WILDCARD = parse_host({
    "forwardProtocol": True, "allowedProtocols": ["tcp", "udp"],
    "forwardAddress": True, "allowedAddresses": ["*.allowed.test", "db.internal", "127.0.0.5"],
    "forwardPort": True, "allowedPortRanges": [{"low": 1, "high": 65535}],
})


@pytest.mark.parametrize("name", [
    "127.0.0.2\x00.allowed.test", "::1\x00.allowed.test", "a b.allowed.test", "a\t.allowed.test",
    "a\n.allowed.test", "a%25.allowed.test", "a/b.allowed.test", "x" * 64 + ".allowed.test",
    "a..allowed.test", "-a.allowed.test", "é.allowed.test", ".allowed.test",
    ("a." * 127) + "allowed.test",
])
def test_names_that_are_not_dns_names_are_refused_before_any_check(name: str) -> None:
    with pytest.raises(DialError, match="not a valid IP address or DNS name"):
        select_target(WILDCARD, {"dst_protocol": "tcp", "dst_hostname": name, "dst_port": "80"})


@pytest.mark.parametrize("address", ["0x7f000002", "2130706434", "127.1", "0177.0.0.2",
                                     "127.0.0.2%lo", "::1%lo", "fe80::1%1"])
def test_resolver_address_forms_are_neither_names_nor_ips(address: str) -> None:
    for key in ("dst_hostname", "dst_ip"):
        with pytest.raises(DialError, match="not a valid"):
            select_target(WILDCARD, {"dst_protocol": "tcp", key: address, "dst_port": "80"})


def test_ipv4_mapped_ipv6_is_checked_as_ipv4() -> None:
    with pytest.raises(DialError, match="not allowed"):
        select_target(WILDCARD, {"dst_protocol": "tcp", "dst_ip": "::ffff:127.0.0.2",
                                 "dst_port": "80"})
    target = select_target(WILDCARD, {"dst_protocol": "tcp", "dst_ip": "::ffff:127.0.0.5",
                                      "dst_port": "80"})
    assert permitted_addresses(WILDCARD, target, [ip_address("::ffff:127.0.0.5")]) == (
        ip_address("127.0.0.5"),)


@pytest.mark.parametrize("port", ["\u00b2", "\uff18\uff10", "\u0668\u0660", "1e3", " 80",
                                  "80 ", "+80", "0x50", ""])
def test_ports_must_be_ascii_digits(port: str) -> None:
    with pytest.raises(DialError, match="not allowed"):
        select_target(WILDCARD, {"dst_protocol": "tcp", "dst_ip": "127.0.0.5", "dst_port": port})


def test_wildcard_names_never_resolve_into_loopback_unless_an_ip_entry_allows_it() -> None:
    target = select_target(WILDCARD, {"dst_protocol": "tcp", "dst_hostname": "x.allowed.test",
                                      "dst_port": "80"})
    resolved = [ip_address(a) for a in ("127.0.0.2", "::1", "0.0.0.0", "169.254.1.1",
                                        "224.0.0.1", "fe80::1", "::ffff:127.0.0.2")]
    with pytest.raises(DialError, match="resolves to no allowed address"):
        permitted_addresses(WILDCARD, target, resolved)
    mixed = [*resolved, ip_address("127.0.0.5"), ip_address("10.1.2.3")]
    assert permitted_addresses(WILDCARD, target, mixed) == (ip_address("127.0.0.5"),
                                                             ip_address("10.1.2.3"))


def test_exactly_named_hosts_and_fixed_targets_may_resolve_anywhere() -> None:
    target = select_target(WILDCARD, {"dst_protocol": "tcp", "dst_hostname": "DB.internal.",
                                      "dst_port": "80"})
    assert permitted_addresses(WILDCARD, target, [ip_address("127.0.0.1")]) == (
        ip_address("127.0.0.1"),)
    fixed = parse_host({"protocol": "tcp", "address": "localhost", "port": 80})
    fixed_target = select_target(fixed, {"dst_hostname": "evil\x00"})
    assert not fixed_target.forwarded
    assert permitted_addresses(fixed, fixed_target, [ip_address("::1")]) == (ip_address("::1"),)
