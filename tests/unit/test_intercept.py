"""Intercept parsing, precision lookups (ziti's cases as data), templates and app data."""

from __future__ import annotations

import random
from collections.abc import Mapping
from ipaddress import IPv4Address, ip_address
from typing import Any

import pytest

from tunneler.configs import INTERCEPT_V1, parse_intercept
from tunneler.errors import ConfigError
from tunneler.intercept import (
    FlowAddresses,
    Intercept,
    InterceptAddress,
    InterceptTable,
    build_app_data,
    expand_template,
)


def from_json(service: str, config: Mapping[str, Any]) -> Intercept:
    """An ``intercept.v1`` JSON object the way the engine's policy builds it."""
    return Intercept.from_config(service, parse_intercept(config, f"{service}.{INTERCEPT_V1}"))


def icpt(
    service: str,
    addresses: list[str],
    ranges: list[tuple[int, int]],
    protocols: tuple[str, ...] = ("tcp",),
    **extra: Any,
) -> Intercept:
    config = {
        "protocols": list(protocols),
        "addresses": addresses,
        "portRanges": [{"low": low, "high": high} for low, high in ranges],
        **extra,
    }
    return from_json(service, config)


# ziti-tunnel-sdk-c lib/ziti-tunnel/tests/address_test.cpp, as data: the intercepts are added
# in steps, and after each step the listed (ip, port) lookups must give the listed service.
ZITI_ADDRESS_STEPS: list[tuple[Intercept, list[tuple[str, int, str | None]]]] = [
    (
        icpt("s1", ["192.168.0.88"], [(80, 80)]),
        [("127.0.0.1", 80, None), ("192.168.0.88", 80, "s1")],
    ),
    (
        icpt("s2", ["192.168.0.0/24"], [(80, 80)]),
        [("192.168.0.88", 80, "s1"), ("192.168.0.10", 80, "s2")],
    ),
    (icpt("s3", ["192.168.0.0/16"], [(80, 85)]), [("192.168.0.10", 80, "s2")]),
    (
        icpt("s4", ["192.168.0.0/16"], [(80, 90)]),
        [
            ("192.168.0.10", 81, "s3"),
            ("192.168.0.88", 83, "s3"),
            ("192.168.0.88", 80, "s1"),
            ("192.168.0.10", 80, "s2"),
            ("127.0.0.1", 80, None),
            ("192.168.5.5", 88, "s4"),
            ("192.168.5.5", 91, None),
        ],
    ),
]


def test_ziti_address_test_cases() -> None:
    table = InterceptTable()
    added: list[Intercept] = []
    for intercept, lookups in ZITI_ADDRESS_STEPS:
        added.insert(0, intercept)  # ziti inserts at the list head; order must not matter
        table.set_intercepts(added)
        for ip, port, expected in lookups:
            found = table.lookup_address("tcp", ip_address(ip), port)
            assert (found.service if found else None) == expected, (ip, port)
        table.set_intercepts(reversed(added))
        for ip, port, expected in lookups:
            found = table.lookup_address("tcp", ip_address(ip), port)
            assert (found.service if found else None) == expected, (ip, port)


# docs/intercept-address-matching.md: services, the DNS mappings, and the expected associations.
DOC_SERVICES = [
    icpt("ziti-subnet", ["192.168.0.0/16"], [(1, 65535)], ("tcp", "udp")),
    icpt("ziti-ip", ["192.168.10.88"], [(8080, 8080)], ("tcp", "udp")),
    icpt("ziti-hostname", ["host.ziti"], [(8080, 8080)]),
    icpt("ziti-wildname", ["*.ziti"], [(1, 65535)]),
]
DOC_DNS = {"100.64.0.10": "host.ziti", "100.64.0.11": "wh1.ziti", "100.64.0.12": "wh2.ziti"}
DOC_TABLE = [
    ("tcp", "192.168.10.88", 8080, "ziti-ip"),
    ("tcp", "192.168.10.88", 9090, "ziti-subnet"),
    ("tcp", "100.64.0.11", 443, "ziti-wildname"),
    ("tcp", "100.64.0.10", 9090, None),
    ("tcp", "100.64.0.10", 8080, "ziti-hostname"),
    ("udp", "100.64.0.12", 53, None),
    ("udp", "192.168.10.88", 8080, "ziti-ip"),
]


@pytest.mark.parametrize(("proto", "ip", "port", "expected"), DOC_TABLE)
def test_intercept_address_matching_doc(proto: str, ip: str, port: int, expected: str) -> None:
    table = InterceptTable()
    table.set_intercepts(DOC_SERVICES)
    if ip in DOC_DNS:
        found = table.lookup_hostname(proto, DOC_DNS[ip], port)
    else:
        found = table.lookup_address(proto, ip_address(ip), port)
    assert (found.service if found else None) == expected


HOSTNAME_CASES = [
    ("api.llm.test", 443, "exact"),
    ("API.LLM.Test.", 443, "exact"),
    ("x.api.llm.test", 443, "deep-wild"),
    ("api.llm.test", 8443, "exact-wide"),
    ("other.llm.test", 443, "shallow-wild"),
    ("llm.test", 443, "shallow-wild"),
    ("notllm.test", 443, None),
    ("api.llm.test", 1, None),
    ("bad_label-.llm.test", 443, None),
    ("", 443, None),
]


@pytest.mark.parametrize(("name", "port", "expected"), HOSTNAME_CASES)
def test_hostname_precision(name: str, port: int, expected: str | None) -> None:
    table = InterceptTable()
    table.set_intercepts(
        [
            icpt("shallow-wild", ["*.llm.test"], [(1, 65535)]),
            icpt("deep-wild", ["*.api.llm.test"], [(1, 65535)]),
            icpt("exact-wide", ["api.llm.test"], [(400, 9000)]),
            icpt("exact", ["api.llm.test"], [(443, 443)]),
        ]
    )
    found = table.lookup_hostname("tcp", name, port)
    assert (found.service if found else None) == expected


def test_address_precision_outranks_port_precision_and_ties_are_stable() -> None:
    table = InterceptTable()
    table.set_intercepts(
        [
            icpt("wide-net-one-port", ["10.0.0.0/8"], [(443, 443)]),
            icpt("narrow-net-all-ports", ["10.1.0.0/16"], [(1, 65535)]),
            icpt("b", ["10.2.0.0/16"], [(1, 10)]),
            icpt("a", ["10.2.0.0/16"], [(1, 10)]),
        ]
    )
    assert (
        table.lookup_address("tcp", ip_address("10.1.2.3"), 443).service == "narrow-net-all-ports"
    )
    assert table.lookup_address("tcp", ip_address("10.9.2.3"), 443).service == "wide-net-one-port"
    assert table.lookup_address("tcp", ip_address("10.2.0.1"), 5).service == "a"
    assert table.lookup_address("udp", ip_address("10.1.2.3"), 443) is None


def _oracle(intercepts: list[Intercept], ip: IPv4Address, port: int) -> str | None:
    """Brute force: every (address, range) pair ranked by (prefix, -range size, -name)."""
    ranked = [
        (a.network.prefixlen, low - high, i.service)
        for i in intercepts
        for a in i.addresses
        for low, high in i.port_ranges
        if a.network is not None and ip in a.network and low <= port <= high
    ]
    if not ranked:
        return None
    best = max(r[:2] for r in ranked)
    return min(r[2] for r in ranked if r[:2] == best)


def test_lookup_agrees_with_brute_force_oracle() -> None:
    rng = random.Random(2024)
    for _ in range(40):
        intercepts = []
        for n in range(rng.randrange(1, 8)):
            prefixes = [rng.choice([8, 16, 24, 28, 32]) for _ in range(rng.randrange(1, 3))]
            nets = [
                f"10.{rng.randrange(2)}.{rng.randrange(2)}.{rng.randrange(16)}/{p}"
                for p in prefixes
            ]
            low = rng.randrange(1, 100)
            ranges = [(low, low + rng.randrange(0, 50))]
            intercepts.append(icpt(f"svc{n}", nets, ranges))
        table = InterceptTable(cache_size=8)
        table.set_intercepts(intercepts)
        for _ in range(50):
            ip = IPv4Address(f"10.{rng.randrange(2)}.{rng.randrange(2)}.{rng.randrange(16)}")
            port = rng.randrange(1, 160)
            found = table.lookup_address("tcp", ip, port)
            assert (found.service if found else None) == _oracle(intercepts, ip, port)


def test_cache_is_invalidated_on_change() -> None:
    table = InterceptTable()
    table.set_intercepts([icpt("one", ["10.0.0.1"], [(80, 80)])])
    assert table.lookup_address("tcp", ip_address("10.0.0.1"), 80).service == "one"
    table.set_intercepts([icpt("two", ["10.0.0.1"], [(80, 80)])])
    assert table.lookup_address("tcp", ip_address("10.0.0.1"), 80).service == "two"
    table.set_intercepts([])
    assert table.lookup_address("tcp", ip_address("10.0.0.1"), 80) is None


def test_name_sets_for_dns_and_routes() -> None:
    table = InterceptTable()
    table.set_intercepts(DOC_SERVICES)
    assert table.hostnames() == {"host.ziti"}
    assert table.wildcard_domains() == {"ziti"}
    assert {str(n) for n in table.networks()} == {"192.168.0.0/16", "192.168.10.88/32"}


@pytest.mark.parametrize(
    ("text", "field", "value"),
    [
        ("10.1.2.0/24", "network", "10.1.2.0/24"),
        ("10.1.2.3/24", "network", "10.1.2.0/24"),
        ("fd00::1", "network", "fd00::1/128"),
        ("Host.Example.", "hostname", "host.example"),
        ("*.Example.com", "wildcard", "example.com"),
        ("localhost", "hostname", "localhost"),
    ],
)
def test_address_parsing(text: str, field: str, value: str) -> None:
    assert str(getattr(InterceptAddress.parse(text), field)) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "*.",
        "*",
        "a..b",
        "-a.b",
        "a b",
        "x" * 64 + ".com",
        "*.*.com",
        "a.*.com",
        "10.0.0.0/33",
        "é.com",
    ],
)
def test_bad_addresses_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        InterceptAddress.parse(text)


BAD_CONFIGS: list[dict[str, Any]] = [
    {"protocols": [], "addresses": ["a.b"], "portRanges": [{"low": 1, "high": 2}]},
    {"protocols": ["icmp"], "addresses": ["a.b"], "portRanges": [{"low": 1, "high": 2}]},
    {"protocols": ["tcp"], "addresses": "a.b", "portRanges": [{"low": 1, "high": 2}]},
    {"protocols": ["tcp"], "addresses": ["a.b"], "portRanges": []},
    {"protocols": ["tcp"], "addresses": ["a.b"], "portRanges": [{"low": 2, "high": 1}]},
    {"protocols": ["tcp"], "addresses": ["a.b"], "portRanges": [{"low": 1, "high": 70000}]},
    {"protocols": ["tcp"], "addresses": ["a.b"], "portRanges": [{"low": True, "high": 2}]},
    {"protocols": ["tcp"], "addresses": ["a.b"], "portRanges": [[1, 2]]},
    {
        "protocols": ["tcp"],
        "addresses": ["a.b"],
        "portRanges": [{"low": 1, "high": 2}],
        "sourceIp": "$nope",
    },
    {
        "protocols": ["tcp"],
        "addresses": ["a.b"],
        "portRanges": [{"low": 1, "high": 2}],
        "dialOptions": "x",
    },
    {
        "protocols": ["tcp"],
        "addresses": ["a.b"],
        "portRanges": [{"low": 1, "high": 2}],
        "dialOptions": {"identity": 5},
    },
]


@pytest.mark.parametrize("config", BAD_CONFIGS)
def test_bad_configs_are_rejected(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        from_json("svc", config)


FLOW = FlowAddresses("tcp", "100.64.0.1", 53618, "100.64.0.10", 443, "llm.private.test")


def test_template_expansion() -> None:
    intercept = icpt(
        "s",
        ["llm.private.test"],
        [(443, 443)],
        sourceIp="$tunneler_id.name-$tunneler_id.tag[site]:$src_ip:$src_port",
        dialOptions={"identity": "$dst_protocol:$dst_ip:$dst_port"},
    )
    assert intercept.source_ip is not None and intercept.dial_identity is not None
    source = expand_template(intercept.source_ip, FLOW, "laptop", {"site": "berlin"})
    assert source == "laptop-berlin:100.64.0.1:53618"
    assert expand_template(intercept.source_ip, FLOW, "laptop", {}) == "laptop-:100.64.0.1:53618"
    assert expand_template(intercept.dial_identity, FLOW, "x", {}) == "tcp:100.64.0.10:443"


def test_app_data() -> None:
    data = build_app_data(FLOW, source_addr="10.0.0.1:1")
    assert data == {
        "dst_protocol": "tcp",
        "dst_hostname": "llm.private.test",
        "dst_ip": "100.64.0.10",
        "dst_port": "443",
        "src_protocol": "tcp",
        "src_ip": "100.64.0.1",
        "src_port": "53618",
        "source_addr": "10.0.0.1:1",
    }
    bare = build_app_data(FLOW._replace(dst_hostname=None))
    assert "dst_hostname" not in bare and "source_addr" not in bare
    assert all(isinstance(v, str) for v in bare.values())
