"""Unit tests for the pure route diff and the intercept CIDR validation."""

from __future__ import annotations

import ipaddress

import pytest

from tunneler.errors import ConfigError
from tunneler.tun.route_plan import (
    RouteConfig,
    RoutePlan,
    desired_config,
    own_routes,
    plan,
    validate_intercepts,
)

net = ipaddress.ip_network
iface = ipaddress.ip_interface


def config(**kwargs: object) -> RouteConfig:
    base: dict[str, object] = {
        "tun_name": "tunneler0",
        "addresses": (iface("100.64.0.1/10"),),
        "mtu": 65000,
        "txqueuelen": 4096,
        "routes": (net("100.64.0.0/10"), net("198.51.100.7/32")),
    }
    base.update(kwargs)
    return RouteConfig(**base)  # type: ignore[arg-type]


def test_fresh_link_gets_everything_except_the_kernel_subnet() -> None:
    result = plan(None, config())
    assert result.set_mtu == 65000
    assert result.set_txqueuelen == 4096
    assert result.add_addresses == (iface("100.64.0.1/10"),)
    assert result.set_up is True
    # 100.64.0.0/10 is the address's own subnet: the kernel adds that route itself
    assert result.add_routes == (net("198.51.100.7/32"),)
    assert result.remove_routes == () and result.remove_addresses == ()


def test_identical_state_gives_an_empty_plan() -> None:
    current = config(routes=(net("198.51.100.7/32"),))  # as read from the kernel
    result = plan(current, config())
    assert result.empty
    assert result == RoutePlan("tunneler0")


def test_diff_adds_and_removes_only_what_changed() -> None:
    current = config(mtu=1500, routes=(net("198.51.100.7/32"), net("203.0.113.0/24")),
                     addresses=(iface("100.64.0.1/10"), iface("10.9.9.9/32")), up=False)
    desired = config(routes=(net("100.64.0.0/10"), net("198.51.100.7/32"), net("192.0.2.0/24")))
    result = plan(current, desired)
    assert result.set_mtu == 65000
    assert result.set_txqueuelen is None
    assert result.remove_routes == (net("203.0.113.0/24"),)
    assert result.add_routes == (net("192.0.2.0/24"),)
    assert result.remove_addresses == (iface("10.9.9.9/32"),)
    assert result.add_addresses == ()
    assert result.set_up is True


def test_own_routes_keeps_ipv6_and_drops_connected_subnets() -> None:
    cfg = config(addresses=(iface("100.64.0.1/10"), iface("fd00:7::1/64")),
                 routes=(net("100.64.0.0/10"), net("fd00:7::/64"), net("fd00:8::/64")))
    assert own_routes(cfg) == (net("fd00:8::/64"),)


@pytest.mark.parametrize(
    ("cidr", "reason"),
    [
        ("0.0.0.0/0", "default route"),
        ("::/0", "default route"),
        ("127.0.0.1", "loopback"),
        ("64.0.0.0/2", "loopback"),  # covers 127/8
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::/64", "link-local"),
        ("10.0.0.0/8", "excluded address"),  # covers the controller below
    ],
)
def test_validation_refuses_dangerous_cidrs_and_says_why(cidr: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        validate_intercepts(["198.51.100.0/24", cidr], excluded=["10.1.2.3"])
    assert cidr in str(info.value)


def test_validation_parses_dedupes_and_keeps_order() -> None:
    result = validate_intercepts(["198.51.100.9", "192.0.2.0/24", "198.51.100.9/32",
                                  "192.0.2.77/24"], excluded=["10.1.2.3", "2001:db8::1"])
    assert result == (net("198.51.100.9/32"), net("192.0.2.0/24"))


@pytest.mark.parametrize("bad", ["300.1.1.1", "llm.private.test", ""])
def test_validation_rejects_garbage_with_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="bad intercept address"):
        validate_intercepts([bad])


def test_bad_excluded_address_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="excluded"):
        validate_intercepts(["192.0.2.0/24"], excluded=["router.example"])


def test_desired_config_defaults_follow_the_design() -> None:
    cfg = desired_config(intercepts=["198.51.100.7"], excluded=["198.18.0.1"])
    assert cfg.tun_name == "tunneler0"
    assert cfg.mtu == 65000
    assert cfg.addresses == (iface("100.64.0.1/10"),)
    assert cfg.routes == (net("100.64.0.0/10"), net("198.51.100.7/32"))


def test_desired_config_validates_the_vip_range_too() -> None:
    with pytest.raises(ConfigError, match="excluded address"):
        desired_config(vip_cidr="198.18.0.0/15", excluded=["198.18.0.1"])
    with pytest.raises(ConfigError, match="bad TUN address"):
        desired_config(addresses=["100.64.0.1/40"])


@pytest.mark.parametrize("field_values", [{"mtu": 500}, {"mtu": 70000}, {"txqueuelen": -1}])
def test_route_config_bounds(field_values: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match="out of range"):
        config(**field_values)


def test_route_count_is_capped() -> None:
    routes = tuple(ipaddress.IPv4Network((0xC6120000 + i, 32)) for i in range(65537))
    with pytest.raises(ConfigError, match="cap"):
        config(routes=routes)
