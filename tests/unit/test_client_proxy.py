"""Proxy argument parsing, proxy app data and router link helpers (pure parts)."""

from __future__ import annotations

import pytest

from tunneler.client.ctrl import ServiceInfo
from tunneler.client.link import MAX_HELLO_BODY, hello_body, parse_router_url
from tunneler.errors import ConfigError, DialError
from tunneler.proxy import ProxyBinding, app_data_for, parse_binding


@pytest.mark.parametrize(("text", "expected"), [
    ("web=8080", ProxyBinding("web", "127.0.0.1", 8080)),
    ("web=0.0.0.0:80", ProxyBinding("web", "0.0.0.0", 80)),
    ("my=svc=[::1]:9000", ProxyBinding("my=svc", "::1", 9000)),
])
def test_parse_binding(text: str, expected: ProxyBinding) -> None:
    assert parse_binding(text) == expected


@pytest.mark.parametrize("text", ["web", "=80", "web=", "web=host:", "web=70000", "web=0",
                                  "web=x:y"])
def test_parse_binding_rejects_malformed(text: str) -> None:
    with pytest.raises(ConfigError, match="SERVICE=\\[HOST:\\]PORT"):
        parse_binding(text)


def _service(configs: dict[str, object]) -> ServiceInfo:
    return ServiceInfo("id", "svc", frozenset({"Dial"}), True, dict(configs))


def test_app_data_from_intercept_hostname_and_ip() -> None:
    by_name = _service({"intercept.v1": {"protocols": ["tcp"], "addresses": ["llm.private"],
                                         "portRanges": [{"low": 443, "high": 444}]}})
    assert app_data_for(by_name) == {"dst_protocol": "tcp", "dst_hostname": "llm.private",
                                     "dst_port": 443}
    by_ip = _service({"ziti-tunneler-client.v1": {"hostname": "10.1.2.3", "port": 22}})
    assert app_data_for(by_ip) == {"dst_protocol": "tcp", "dst_ip": "10.1.2.3", "dst_port": 22}


def test_app_data_without_or_with_bad_intercept_is_protocol_only() -> None:
    assert app_data_for(_service({})) == {"dst_protocol": "tcp"}
    assert app_data_for(_service({"intercept.v1": {"protocols": []}})) == {"dst_protocol": "tcp"}
    wildcard = _service({"intercept.v1": {"protocols": ["tcp"], "addresses": ["*.corp"],
                                          "portRanges": [{"low": 1, "high": 2}]}})
    assert app_data_for(wildcard) == {"dst_protocol": "tcp", "dst_port": 1}


def test_hello_body_fits_libziti_buffer() -> None:
    body = hello_body(123456789)
    assert body.startswith(b"tunneler[123456789]@") or len(body) == MAX_HELLO_BODY
    assert len(body) <= MAX_HELLO_BODY


def test_router_url_parsing() -> None:
    assert parse_router_url("tls://router.example:3022") == ("router.example", 3022)
    for bad in ("tcp://r:1", "tls://r", "r:3022"):
        with pytest.raises(DialError):
            parse_router_url(bad)
