"""Intercept records (``intercept.v1``), best-match lookup, templates and app data (sans-IO).

Precision rules (ziti-tunnel-sdk-c ``docs/intercept-address-matching.md``): among intercepts
whose protocol, address and port range all match, the most precise wins —

- a longer CIDR prefix beats a shorter one (a bare IP is a /32 or /128);
- an exact hostname beats a wildcard domain; a longer wildcard suffix beats a shorter one;
- a smaller port range beats a larger one;
- address precision outranks port precision; remaining ties go to the smaller service name.

A wildcard ``*.d`` matches ``d`` itself and every name ending in ``.d`` (case-insensitive),
except names that some intercept lists exactly: as in ziti, whose DNS entry for an exact
hostname belongs to the services naming it, such a name matches exact-hostname intercepts only.

API:

- ``Intercept.from_config(service, InterceptV1)`` (a config validated by ``tunneler.configs``)
  -> ``Intercept`` (raises ``ConfigError``).
- ``InterceptTable.set_intercepts(intercepts)``; ``lookup_address(proto, ip, port)`` for packets
  to IP/CIDR intercepts; ``lookup_hostname(proto, name, port)`` for packets to a virtual IP
  (the engine maps the VIP to its name with ``VipPool.hostname_for``); both return the best
  ``Intercept`` or None, through a bounded cache that ``set_intercepts`` clears.
  ``hostnames()`` / ``wildcard_domains()`` feed ``DnsResponder.set_intercepts``.
- ``FlowAddresses`` + ``expand_template(template, flow, identity_name, tags)`` expand
  ``sourceIp`` / ``dialOptions.identity`` (``$tunneler_id.name``, ``$tunneler_id.tag[x]``,
  ``$src_ip``, ``$src_port``, ``$dst_ip``, ``$dst_port``, ``$dst_protocol``; a missing tag
  expands to ""); ``build_app_data(flow, source_addr)`` -> the app data dict (strings only).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Any, NamedTuple

from tunneler import dnsname
from tunneler.configs import InterceptV1
from tunneler.errors import ConfigError

DEFAULT_CACHE_SIZE = 4096
_TEMPLATE_VAR = re.compile(
    r"\$(tunneler_id\.name|tunneler_id\.tag\[([^\]]+)\]|src_ip|src_port|dst_ip|dst_port"
    r"|dst_protocol)"
)

Network = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address
_Scorer = Callable[["InterceptAddress"], Any]  # int for networks, (kind, length) for names


@dataclass(frozen=True)
class InterceptAddress:
    """One entry of ``addresses``: a network (IP or CIDR), a hostname or a wildcard domain."""

    network: Network | None = None
    hostname: str | None = None
    wildcard: str | None = None  # the domain after "*."

    @classmethod
    def parse(cls, text: str) -> InterceptAddress:
        """Parse an address string from a config (raises ``ConfigError``)."""
        with contextlib.suppress(ValueError):  # not a network: a hostname or wildcard
            return cls(network=ip_network(text, strict=False))
        if text.startswith("*."):
            domain = dnsname.normalize(text[2:])
            if domain is not None:
                return cls(wildcard=domain)
        else:
            name = dnsname.normalize(text)
            if name is not None:
                return cls(hostname=name)
        raise ConfigError(f"intercept address {text!r} is not an IP, CIDR, hostname or *.domain")

    def address_score(self, ip: IPAddress) -> int | None:
        """Return the prefix length if ``ip`` is inside this network, else None."""
        if self.network is None or ip not in self.network:
            return None
        return self.network.prefixlen

    def exact_score(self, name: str) -> tuple[int, int] | None:
        """Return the precision of an exact-hostname match of ``name``, else None."""
        return (2, len(name)) if name == self.hostname else None

    def name_score(self, name: str) -> tuple[int, int] | None:
        """Return the precision of matching normalized ``name``, else None."""
        if self.hostname is not None:
            return self.exact_score(name)
        domain = self.wildcard
        if domain is not None and (name == domain or name.endswith("." + domain)):
            return (1, len(domain))
        return None


@dataclass(frozen=True)
class Intercept:
    """An ``intercept.v1`` config bound to the service that carries it."""

    service: str
    protocols: frozenset[str]
    addresses: tuple[InterceptAddress, ...]
    port_ranges: tuple[tuple[int, int], ...]
    source_ip: str | None = None
    dial_identity: str | None = None

    @classmethod
    def from_config(cls, service: str, config: InterceptV1) -> Intercept:
        """Build from a validated ``intercept.v1`` (or converted legacy) config.

        Raises:
            ConfigError: an address this matcher cannot use, or an unknown template variable.
        """
        identity = config.dial_options.identity if config.dial_options is not None else None
        return cls(service, frozenset(config.protocols),
                   tuple(InterceptAddress.parse(a) for a in config.addresses),
                   tuple((r.low, r.high) for r in config.port_ranges),
                   _template(config.source_ip, service, "sourceIp"),
                   _template(identity, service, "dialOptions.identity"))

    def port_score(self, port: int) -> int | None:
        """Return minus the size of the smallest range holding ``port``, else None."""
        sizes = [low - high for low, high in self.port_ranges if low <= port <= high]
        return max(sizes) if sizes else None


def _template(value: object, service: str, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or "$" in _TEMPLATE_VAR.sub("", value):
        raise ConfigError(f"service {service!r}: {field} has an unknown template variable")
    return value


class InterceptTable:
    """The active intercepts with best-match lookups and a bounded result cache."""

    def __init__(self, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._intercepts: tuple[Intercept, ...] = ()
        self._hostnames: frozenset[str] = frozenset()
        self._cache: dict[tuple[str, object, int], Intercept | None] = {}
        self._cache_size = cache_size

    @property
    def intercepts(self) -> tuple[Intercept, ...]:
        return self._intercepts

    def set_intercepts(self, intercepts: Iterable[Intercept]) -> None:
        """Replace the active set (services changed) and clear the cache."""
        self._intercepts = tuple(intercepts)
        self._hostnames = frozenset(
            a.hostname for i in self._intercepts for a in i.addresses if a.hostname
        )
        self._cache.clear()

    def hostnames(self) -> frozenset[str]:
        """Exact hostnames of every intercept (they get virtual IPs)."""
        return self._hostnames

    def wildcard_domains(self) -> frozenset[str]:
        """Wildcard domains (without ``*.``) of every intercept."""
        return frozenset(a.wildcard for i in self._intercepts for a in i.addresses if a.wildcard)

    def networks(self) -> frozenset[Network]:
        """IP/CIDR networks of every intercept (routed into the TUN)."""
        return frozenset(a.network for i in self._intercepts for a in i.addresses if a.network)

    def lookup_address(self, proto: str, ip: IPAddress, port: int) -> Intercept | None:
        """Return the most precise intercept for a packet to ``ip:port`` over ``proto``."""
        return self._cached((proto, ip, port), lambda a: a.address_score(ip))

    def lookup_hostname(self, proto: str, hostname: str, port: int) -> Intercept | None:
        """Return the most precise intercept for ``hostname:port`` over ``proto``."""
        name = dnsname.normalize(hostname)
        if name is None:
            return None
        if name in self._hostnames:
            return self._cached((proto, name, port), lambda a: a.exact_score(name))
        return self._cached((proto, name, port), lambda a: a.name_score(name))

    def _cached(self, key: tuple[str, object, int], score: _Scorer) -> Intercept | None:
        if key in self._cache:
            return self._cache[key]
        result = self._best(key[0].lower(), key[2], score)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[key] = result
        return result

    def _best(self, proto: str, port: int, score: _Scorer) -> Intercept | None:
        best: tuple[object, int, Intercept] | None = None
        for intercept in self._intercepts:
            if proto not in intercept.protocols:
                continue
            port_score = intercept.port_score(port)
            scores = [s for s in map(score, intercept.addresses) if s is not None]
            if port_score is None or not scores:
                continue
            candidate = (max(scores), port_score, intercept)
            if best is None or _beats(candidate, best):
                best = candidate
        return best[2] if best is not None else None


def _beats(a: tuple[Any, int, Intercept], b: tuple[Any, int, Intercept]) -> bool:
    if a[:2] != b[:2]:
        return bool(a[:2] > b[:2])
    return a[2].service < b[2].service


class FlowAddresses(NamedTuple):
    """The addresses of one intercepted flow, as the app data and templates need them."""

    protocol: str
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    dst_hostname: str | None = None


def expand_template(
    template: str, flow: FlowAddresses, identity_name: str, tags: Mapping[str, str]
) -> str:
    """Expand a ``sourceIp`` / ``dialOptions.identity`` template for ``flow``."""
    values = {
        "tunneler_id.name": identity_name,
        "src_ip": flow.src_ip,
        "src_port": str(flow.src_port),
        "dst_ip": flow.dst_ip,
        "dst_port": str(flow.dst_port),
        "dst_protocol": flow.protocol,
    }

    def substitute(match: re.Match[str]) -> str:
        tag = match.group(2)
        return tags.get(tag, "") if tag is not None else values[match.group(1)]

    return _TEMPLATE_VAR.sub(substitute, template)


def build_app_data(flow: FlowAddresses, source_addr: str | None = None) -> dict[str, str]:
    """Return the app data dict (openziti-protocol.md §6.5); unset fields are omitted."""
    data = {
        "dst_protocol": flow.protocol,
        "dst_ip": flow.dst_ip,
        "dst_port": str(flow.dst_port),
        "src_protocol": flow.protocol,
        "src_ip": flow.src_ip,
        "src_port": str(flow.src_port),
    }
    if flow.dst_hostname is not None:
        data["dst_hostname"] = flow.dst_hostname
    if source_addr is not None:
        data["source_addr"] = source_addr
    return data
