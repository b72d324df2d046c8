"""Where a hosting tunneler connects an incoming flow: `host.v1` target selection (pure).

With `forwardProtocol`/`forwardAddress`/`forwardPort` the dialer's app data chooses
(`dst_protocol`; `dst_hostname`, else `dst_ip`; `dst_port`), checked against
`allowedProtocols`/`allowedAddresses`/`allowedPortRanges`; otherwise the config's fixed
`protocol`/`address`/`port` apply and the app data is ignored (openziti-protocol.md §6.2, §6.5).

The dialer is not trusted (security.md, SEC-01..03): a forwarded name must be a valid DNS host
name (no NUL, space, `%`, `/`, over-long label, numeric last label), an IP must be a plain
literal (no scope id), and a port plain ASCII digits. Checking happens twice: `select_target`
checks what the dialer asked for, then `permitted_addresses` checks what the name resolved to,
and the caller connects to exactly those addresses (never re-resolving the name):

- an IP literal is allowed by an IP or CIDR entry (IPv4-mapped IPv6 is checked as IPv4);
- a name is allowed by a hostname or `*.domain` entry (never by an IP entry). A name that an
  exact hostname entry names may resolve to anything: the operator named that host. A name
  allowed only by a wildcard may not resolve to a loopback, unspecified, link-local or
  multicast address unless an IP or CIDR entry allows that address, so a DNS record under an
  allowed domain cannot point run-host at its own loopback services.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tunneler import dnsname
from tunneler.configs import HostV1, PortRange
from tunneler.errors import DialError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Target:
    """A host-side endpoint as configured or asked for (before name resolution)."""

    protocol: str
    host: str
    port: int
    forwarded: bool = False  # host chosen by the dialer: resolved addresses are checked too


def select_target(config: HostV1, app_data: Mapping[str, str]) -> Target:
    """The endpoint for one incoming dial.

    Raises:
        DialError: the app data lacks a forwarded field, is malformed or asks for a disallowed
            value; the message is the reason sent back in DialFailed.
    """
    return Target(_protocol(config, app_data), _address(config, app_data),
                  _port(config, app_data), forwarded=config.forward_address)


def permitted_addresses(config: HostV1, target: Target,
                        resolved: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
    """Of the addresses `target.host` resolved to, those the flow may connect to (in order).

    Raises:
        DialError: none is allowed.
    """
    addresses = tuple(dict.fromkeys(unmapped(ip) for ip in resolved))
    if target.forwarded and ip_literal(target.host) is None and \
            not _named_exactly(target.host, config.allowed_addresses):
        addresses = tuple(ip for ip in addresses if not is_special(ip)
                          or _ip_allowed(ip, config.allowed_addresses))
    if not addresses:
        raise DialError(f"address {target.host!r} resolves to no allowed address")
    return addresses


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
    if not address:
        raise DialError("address '(none)' is not allowed")
    if ip_literal(address) is None and dnsname.normalize(address) is None:
        raise DialError(f"address {address!r} is not a valid IP address or DNS name")
    if not is_address_allowed(address, config.allowed_addresses):
        raise DialError(f"address {address!r} is not allowed")
    return address


def _port(config: HostV1, app_data: Mapping[str, str]) -> int:
    if not config.forward_port:
        assert config.port is not None
        return config.port
    text = app_data.get("dst_port", "")
    port = int(text) if text.isascii() and text.isdigit() and len(text) <= 5 else -1
    if not 0 < port <= 65535 or not is_port_allowed(port, config.allowed_port_ranges):
        raise DialError(f"port {text or '(none)'!r} is not allowed")
    return port


def is_port_allowed(port: int, ranges: Sequence[PortRange]) -> bool:
    """True if `port` lies in one of the inclusive ranges."""
    return any(port in port_range for port_range in ranges)


def is_address_allowed(address: str, allowed: Sequence[str]) -> bool:
    """True if `address` (IP or host name) matches an IP, CIDR, hostname or `*.domain` entry."""
    ip = ip_literal(address)
    if ip is not None:
        return _ip_allowed(ip, allowed)
    name = dnsname.normalize(address)
    return name is not None and any(_name_matches(name, entry) for entry in allowed
                                    if _is_name_entry(entry))


def ip_literal(text: str) -> IPAddress | None:
    """`text` as an IP address if it is a plain literal (no `%scope`), IPv4-mapped unmapped."""
    if "%" in text:
        return None
    try:
        return unmapped(ipaddress.ip_address(text))
    except ValueError:
        return None


def unmapped(ip: IPAddress) -> IPAddress:
    """`::ffff:a.b.c.d` as `a.b.c.d`; any other address unchanged."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_special(ip: IPAddress) -> bool:
    """Loopback, unspecified, link-local or multicast: never reached through a wildcard name."""
    return ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip.is_multicast


def _ip_allowed(ip: IPAddress, allowed: Sequence[str]) -> bool:
    for entry in allowed:
        if "/" in entry:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        elif (entry_ip := ip_literal(entry)) is not None and ip == entry_ip:
            return True
    return False


def _is_name_entry(entry: str) -> bool:
    return "/" not in entry and ip_literal(entry) is None


def _named_exactly(host: str, allowed: Sequence[str]) -> bool:
    name = dnsname.normalize(host)
    return name is not None and any(
        _is_name_entry(entry) and not entry.startswith("*.") and _name_matches(name, entry)
        for entry in allowed)


def _name_matches(name: str, pattern: str) -> bool:
    pattern = pattern.rstrip(".").lower()
    if pattern.startswith("*."):
        domain = pattern[2:]
        return name == domain or name.endswith("." + domain)
    return name == pattern
