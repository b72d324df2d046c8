"""Config type validation: intercept.v1, host.v1 (incl. forward*/allowed*), legacy types, paths."""

from __future__ import annotations

from typing import Any

import pytest

from tunneler.configs import (
    DialOptions,
    HostV1,
    InterceptV1,
    ListenOptions,
    PortRange,
    host_of,
    intercept_of,
    parse_config,
    parse_host,
    parse_intercept,
    parse_tunneler_client,
    parse_tunneler_server,
)
from tunneler.errors import ConfigError

INTERCEPT = {"protocols": ["tcp", "UDP"], "addresses": ["llm.private.test", "10.0.0.0/24",
             "*.corp.test", "192.168.1.5", "fd00::1"], "portRanges": [{"low": 80, "high": 443}]}


def test_intercept_parses_all_fields() -> None:
    parsed = parse_intercept({**INTERCEPT, "dialOptions": {"identity": "$dst_ip",
                              "connectTimeoutSeconds": 10}, "sourceIp": "$src_ip:$src_port"})
    assert parsed == InterceptV1(
        protocols=("tcp", "udp"), addresses=tuple(INTERCEPT["addresses"]),
        port_ranges=(PortRange(80, 443),), dial_options=DialOptions("$dst_ip", 10),
        source_ip="$src_ip:$src_port")
    assert 100 in parsed.port_ranges[0] and 444 not in parsed.port_ranges[0]


@pytest.mark.parametrize(("change", "message"), [
    ({"portRanges": [{"low": 70000, "high": 80}]},
     "x.portRanges[0].low: must be an integer 0..65535"),
    ({"portRanges": [{"low": True, "high": 80}]}, "x.portRanges[0].low: must be an integer"),
    ({"portRanges": [{"low": 90, "high": 80}]}, "x.portRanges[0]: high must be >= low"),
    ({"portRanges": [{"low": 90}]}, "x.portRanges[0].high: is required"),
    ({"portRanges": []}, "x.portRanges: must not be empty"),
    ({"protocols": ["icmp"]}, "x.protocols[0]: must be 'tcp' or 'udp'"),
    ({"protocols": ["tcp", "tcp"]}, "x.protocols: must not contain duplicates"),
    ({"protocols": "tcp"}, "x.protocols: must be an array"),
    ({"addresses": ["bad host!"]}, "x.addresses[0]: must be an IP address, CIDR"),
    ({"addresses": ["10.0.0.0/33"]}, "x.addresses[0]: must be an IP address, CIDR"),
    ({"addresses": [""]}, "x.addresses[0]: must be a non-empty string"),
    ({"extra": 1}, "x.extra: unknown field"),
    ({"dialOptions": {"connectTimeoutSeconds": -1}}, "x.dialOptions.connectTimeoutSeconds"),
])
def test_intercept_errors_name_the_path(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_intercept({**INTERCEPT, **change}, "x")
    assert str(excinfo.value).startswith(message)


def test_intercept_requires_fields() -> None:
    with pytest.raises(ConfigError, match=r"^intercept\.v1\.addresses: is required"):
        parse_intercept({"protocols": ["tcp"], "portRanges": [{"low": 1, "high": 1}]})
    with pytest.raises(ConfigError, match="must be an object"):
        parse_intercept(["tcp"])


def test_host_fixed_endpoint() -> None:
    assert parse_host({"protocol": "tcp", "address": "127.0.0.1", "port": 8000}) == HostV1(
        protocol="tcp", address="127.0.0.1", port=8000)


def test_host_forward_variants_and_listen_options() -> None:
    parsed = parse_host({
        "forwardProtocol": True, "allowedProtocols": ["tcp", "udp"],
        "forwardAddress": True, "allowedAddresses": ["10.0.0.0/8", "*.corp.test"],
        "forwardPort": True, "allowedPortRanges": [{"low": 1, "high": 1024}],
        "allowedSourceAddresses": ["192.168.0.0/16"],
        "listenOptions": {"bindUsingEdgeIdentity": True, "cost": 5, "maxConnections": 2,
                          "precedence": "required", "identity": "$tunneler_id.name"},
        "portChecks": [{"address": "localhost:80", "interval": "5s"}],
    })
    assert parsed.protocol is None and parsed.address is None and parsed.port is None
    assert (parsed.forward_protocol, parsed.forward_address, parsed.forward_port) == (
        True, True, True)
    assert parsed.allowed_port_ranges == (PortRange(1, 1024),)
    assert parsed.listen_options == ListenOptions(True, 5, 5, "$tunneler_id.name", 2, "required")
    assert len(parsed.port_checks) == 1


@pytest.mark.parametrize(("config", "message"), [
    ({"address": "a", "port": 1}, "h.protocol: is required unless forwardProtocol is true"),
    ({"forwardProtocol": True, "address": "a", "port": 1},
     "h.allowedProtocols: is required when forwardProtocol is true"),
    ({"protocol": "tcp", "port": 1}, "h.address: is required unless forwardAddress"),
    ({"protocol": "tcp", "address": "a", "port": 65536}, "h.port: must be an integer 0..65535"),
    ({"protocol": "tcp", "address": "a", "port": 1, "listenOptions": {"precedence": "x"}},
     "h.listenOptions.precedence: must be"),
    ({"protocol": "tcp", "address": "a", "port": 1, "listenOptions": {"maxConnections": 0}},
     "h.listenOptions.maxConnections: must be an integer 1.."),
    ({"protocol": "tcp", "address": "a", "port": 1, "forwardPort": "yes"},
     "h.forwardPort: must be true or false"),
    ({"protocol": "tcp", "address": "a", "port": 1, "httpChecks": [1]},
     "h.httpChecks[0]: must be an object"),
])
def test_host_errors_name_the_path(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_host(config, "h")
    assert str(excinfo.value).startswith(message)


def test_legacy_client_converts_like_the_sdk() -> None:
    assert parse_tunneler_client({"hostname": "echo.ziti", "port": 7}) == InterceptV1(
        ("tcp", "udp"), ("echo.ziti",), (PortRange(7, 7),))
    with pytest.raises(ConfigError, match=r"^ziti-tunneler-client\.v1\.port: is required"):
        parse_tunneler_client({"hostname": "echo.ziti"})


def test_legacy_server_converts() -> None:
    assert parse_tunneler_server({"protocol": None, "hostname": "localhost", "port": 7}) == \
        HostV1(protocol="tcp", address="localhost", port=7)
    assert parse_tunneler_server({"protocol": "udp", "hostname": "h", "port": 9}).protocol == "udp"
    with pytest.raises(ConfigError, match=r"\.protocol: must be 'tcp' or 'udp'"):
        parse_tunneler_server({"protocol": "sctp", "hostname": "h", "port": 9})


def test_parse_config_dispatch() -> None:
    assert isinstance(parse_config("intercept.v1", INTERCEPT, "p"), InterceptV1)
    assert parse_config("host.v2", {"terminators": []}, "p") == {"terminators": []}
    with pytest.raises(ConfigError, match=r"^p: must be an object"):
        parse_config("host.v2", [], "p")


def test_current_config_wins_over_legacy_and_paths_name_the_service() -> None:
    legacy_client = {"hostname": "old.test", "port": 1}
    configs = {"intercept.v1": INTERCEPT, "ziti-tunneler-client.v1": legacy_client}
    assert intercept_of(configs, "llm") == parse_intercept(INTERCEPT)
    assert intercept_of({"ziti-tunneler-client.v1": legacy_client}, "llm") == \
        parse_tunneler_client(legacy_client)
    assert intercept_of({"host.v1": {}}, "llm") is None
    assert host_of({"ziti-tunneler-server.v1": {"hostname": "b", "port": 2}}, "llm") == \
        parse_tunneler_server({"hostname": "b", "port": 2})
    assert host_of({}, "llm") is None
    with pytest.raises(ConfigError, match=r"^llm\.host\.v1\.protocol"):
        host_of({"host.v1": {"protocol": "icmp", "address": "a", "port": 1}}, "llm")
