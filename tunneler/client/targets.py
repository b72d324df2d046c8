"""Where a hosting tunneler connects an incoming flow: `host.v1` target selection (pure).

With `forwardProtocol`/`forwardAddress`/`forwardPort` the dialer's app data chooses
(`dst_protocol`; `dst_hostname`, else `dst_ip`; `dst_port`), checked against
`allowedProtocols`/`allowedAddresses`/`allowedPortRanges`; otherwise the config's fixed
`protocol`/`address`/`port` apply and the app data is ignored (openziti-protocol.md §6.2, §6.5).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tunneler.configs import HostV1, PortRange
from tunneler.errors import DialError


@dataclass(frozen=True)
class Target:
    """A host-side endpoint."""

    protocol: str
    host: str
    port: int


def select_target(config: HostV1, app_data: Mapping[str, str]) -> Target:
    """The endpoint for one incoming dial.

    Raises:
        DialError: the app data lacks a forwarded field or asks for a disallowed value; the
            message is the reason sent back in DialFailed.
    """
    return Target(_protocol(config, app_data), _address(config, app_data),
                  _port(config, app_data))


def _protocol(config: HostV1, app_data: Mapping[str, str]) -> str:
    if not config.forward_protocol:
        assert config.protocol is not None
        return config.protocol
    protocol = app_data.get("dst_protocol", "").lower()
    if protocol not in config.allowed_protocols:
        raise DialError(f"protocol {protocol or '(none)'!r} is not allowed")
    return protocol


def _address(config: HostV1, app_data: Mapping[str, str]) -> str:
    if not config.forward_address:
        assert config.address is not None
        return config.address
    address = app_data.get("dst_hostname") or app_data.get("dst_ip") or ""
    if not address or not is_address_allowed(address, config.allowed_addresses):
        raise DialError(f"address {address or '(none)'!r} is not allowed")
    return address


def _port(config: HostV1, app_data: Mapping[str, str]) -> int:
    if not config.forward_port:
        assert config.port is not None
        return config.port
    text = app_data.get("dst_port", "")
    port = int(text) if text.isdigit() and len(text) <= 5 else -1
    if not 0 < port <= 65535 or not is_port_allowed(port, config.allowed_port_ranges):
        raise DialError(f"port {text or '(none)'!r} is not allowed")
    return port


def is_port_allowed(port: int, ranges: Sequence[PortRange]) -> bool:
    """True if `port` lies in one of the inclusive ranges."""
    return any(port in port_range for port_range in ranges)


def is_address_allowed(address: str, allowed: Sequence[str]) -> bool:
    """True if `address` (IP or hostname) matches an IP, CIDR, hostname or `*.domain` entry."""
    ip = _ip(address)
    name = address.rstrip(".").lower()
    for entry in allowed:
        if "/" in entry:
            if ip is not None and ip in ipaddress.ip_network(entry, strict=False):
                return True
        elif (entry_ip := _ip(entry)) is not None:
            if ip is not None and ip == entry_ip:
                return True
        elif ip is None and _name_matches(name, entry.rstrip(".").lower()):
            return True
    return False


def _name_matches(name: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        domain = pattern[2:]
        return name == domain or name.endswith("." + domain)
    return name == pattern


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
