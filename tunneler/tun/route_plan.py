"""What the TUN link should look like, and the diff from what it looks like now (pure).

`RouteConfig` describes the link: name, addresses with prefix, MTU, txqueuelen and the routes
into it (the VIP range and every intercepted address or CIDR, nothing else). ``plan(current,
desired)`` returns the `RoutePlan` that `tunneler.tun.routes` applies; ``current`` is None when
the link has not been configured yet. Routes equal to an address's own subnet are left out of
plans: the kernel adds those itself ("proto kernel").

``validate_intercepts`` refuses CIDRs that would swallow traffic the host or the tunneler
itself needs: the default route, loopback, link-local, and the excluded addresses (controller
and edge routers, whose traffic would otherwise loop into the TUN).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from tunneler.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
T = TypeVar("T")

DEFAULT_TUN_NAME = "tunneler0"
DEFAULT_TUN_ADDRESS = "100.64.0.1/10"
DEFAULT_MTU = 65000  # large segments are what make the Python data path fast (design.md §3)
DEFAULT_TXQUEUELEN = 4096
MIN_MTU = 1280  # IPv6 minimum; smaller MTUs only cost throughput
MAX_MTU = 65535
MAX_TXQUEUELEN = 1 << 20
MAX_ROUTES = 65536

_FORBIDDEN: tuple[tuple[IPNetwork, str], ...] = (
    (ipaddress.ip_network("127.0.0.0/8"), "loopback: local services would stop working"),
    (ipaddress.ip_network("::1/128"), "loopback: local services would stop working"),
    (ipaddress.ip_network("169.254.0.0/16"), "link-local: DHCP, cloud metadata and ARP live there"),
    (ipaddress.ip_network("fe80::/10"), "link-local: neighbour discovery lives there"),
)


@dataclass(frozen=True)
class RouteConfig:
    """The desired (or observed) state of the TUN link."""

    tun_name: str
    addresses: tuple[IPInterface, ...] = ()
    mtu: int = DEFAULT_MTU
    txqueuelen: int = DEFAULT_TXQUEUELEN
    routes: tuple[IPNetwork, ...] = ()
    up: bool = True

    def __post_init__(self) -> None:
        if not MIN_MTU <= self.mtu <= MAX_MTU:
            raise ConfigError(f"TUN MTU {self.mtu} is out of range {MIN_MTU}-{MAX_MTU}")
        if not 0 <= self.txqueuelen <= MAX_TXQUEUELEN:
            raise ConfigError(f"txqueuelen {self.txqueuelen} is out of range 0-{MAX_TXQUEUELEN}")
        if len(self.routes) > MAX_ROUTES:
            raise ConfigError(f"{len(self.routes)} routes exceed the cap of {MAX_ROUTES}; "
                              "merge intercept addresses into CIDRs")


@dataclass(frozen=True)
class RoutePlan:
    """Changes that turn the current link state into the desired one, in apply order."""

    tun_name: str
    set_mtu: int | None = None
    set_txqueuelen: int | None = None
    remove_routes: tuple[IPNetwork, ...] = ()
    remove_addresses: tuple[IPInterface, ...] = ()
    add_addresses: tuple[IPInterface, ...] = ()
    set_up: bool | None = None
    add_routes: tuple[IPNetwork, ...] = ()

    @property
    def empty(self) -> bool:
        """True when the link already matches."""
        return self == RoutePlan(self.tun_name)


def own_routes(config: RouteConfig) -> tuple[IPNetwork, ...]:
    """The routes we must add: configured ones minus the subnets the kernel adds per address."""
    connected = {iface.network for iface in config.addresses}
    return tuple(route for route in config.routes if route not in connected)


def _missing(have: Iterable[T], want: Iterable[T]) -> tuple[T, ...]:
    present = set(have)
    return tuple(item for item in want if item not in present)


def plan(current: RouteConfig | None, desired: RouteConfig) -> RoutePlan:
    """The diff from ``current`` (None: nothing configured) to ``desired``."""
    mtu: int | None = desired.mtu
    txq: int | None = desired.txqueuelen
    if current is None:
        current = RouteConfig(desired.tun_name, mtu=desired.mtu, up=not desired.up)
    else:
        mtu = mtu if mtu != current.mtu else None
        txq = txq if txq != current.txqueuelen else None
    have_routes, want_routes = own_routes(current), own_routes(desired)
    return RoutePlan(
        tun_name=desired.tun_name,
        set_mtu=mtu,
        set_txqueuelen=txq,
        remove_routes=_missing(want_routes, have_routes),
        remove_addresses=_missing(desired.addresses, current.addresses),
        add_addresses=_missing(current.addresses, desired.addresses),
        set_up=desired.up if desired.up != current.up else None,
        add_routes=_missing(have_routes, want_routes),
    )


def _forbidden_reason(network: IPNetwork, excluded: Iterable[IPAddress]) -> str | None:
    if network.prefixlen == 0:
        return "it is a default route: every connection, ours included, would enter the TUN"
    for banned, why in _FORBIDDEN:
        if network.version == banned.version and network.overlaps(banned):
            return f"it overlaps {banned} ({why})"
    for address in excluded:
        if address.version == network.version and address in network:
            return (f"it covers {address}, an excluded address (controller or edge router): "
                    "our own connections to it would loop into the TUN")
    return None


def validate_intercepts(cidrs: Iterable[str],
                        excluded: Iterable[str] = ()) -> tuple[IPNetwork, ...]:
    """Parse intercept addresses/CIDRs; refuse the ones that must never be routed into the TUN.

    Raises ConfigError naming the CIDR and the reason. Duplicates are dropped, order is kept.
    """
    try:
        excluded_ips = [ipaddress.ip_address(item) for item in excluded]
    except ValueError as exc:
        raise ConfigError(f"bad excluded address: {exc}") from None
    networks: dict[IPNetwork, None] = {}
    for text in cidrs:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise ConfigError(f"bad intercept address {text!r}: {exc}") from None
        reason = _forbidden_reason(network, excluded_ips)
        if reason:
            raise ConfigError(f"refusing to intercept {text}: {reason}")
        networks[network] = None
    return tuple(networks)


def desired_config(*, tun_name: str = DEFAULT_TUN_NAME, addresses: Iterable[str] = (
                   DEFAULT_TUN_ADDRESS,), vip_cidr: str = "100.64.0.0/10",
                   intercepts: Iterable[str] = (), excluded: Iterable[str] = (),
                   mtu: int = DEFAULT_MTU, txqueuelen: int = DEFAULT_TXQUEUELEN) -> RouteConfig:
    """Build a validated `RouteConfig`: the VIP range plus every intercept, nothing else."""
    try:
        ifaces = tuple(ipaddress.ip_interface(text) for text in addresses)
    except ValueError as exc:
        raise ConfigError(f"bad TUN address: {exc}") from None
    routes = validate_intercepts([vip_cidr, *intercepts], excluded)
    return RouteConfig(tun_name, ifaces, mtu, txqueuelen, routes)
