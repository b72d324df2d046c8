"""host.v1 target selection: fixed targets, forward* with allowed* checks."""

from __future__ import annotations

import pytest

from tunneler.client.targets import Target, is_address_allowed, select_target
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
     Target("tcp", "10.0.0.9", 80)),
    ({"dst_protocol": "TCP", "dst_hostname": "db.internal", "dst_ip": "1.2.3.4", "dst_port": "443"},
     Target("tcp", "db.internal", 443)),
    ({"dst_protocol": "tcp", "dst_hostname": "a.b.svc.example", "dst_port": "85"},
     Target("tcp", "a.b.svc.example", 85)),
    ({"dst_protocol": "tcp", "dst_hostname": "SVC.example.", "dst_port": "90"},
     Target("tcp", "SVC.example.", 90)),
    ({"dst_protocol": "tcp", "dst_ip": "192.168.1.7", "dst_port": "80"},
     Target("tcp", "192.168.1.7", 80)),
    ({"dst_protocol": "tcp", "dst_ip": "fd00::1", "dst_port": "80"}, Target("tcp", "fd00::1", 80)),
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
