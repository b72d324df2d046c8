"""Service config types `intercept.v1`, `host.v1` and the legacy `ziti-tunneler-*.v1`: pure models.

Validation follows the JSON schemas of the OpenZiti controller (openziti-protocol.md §6);
every error is a `ConfigError` whose message starts with the JSON path of the bad field, e.g.
`services[0].configs.intercept.v1.portRanges[0].low: must be an integer 0..65535`.

Public names (stable; the client side imports them):

- `PortRange(low, high)`, `DialOptions`, `InterceptV1(protocols, addresses, port_ranges,
  dial_options, source_ip)`, `ListenOptions`, `HostV1(...)` — frozen dataclasses.
- `parse_intercept(obj, path)`, `parse_host(obj, path)` — validate a decoded JSON object.
- `parse_tunneler_client(obj, path) -> InterceptV1` (`ziti-tunneler-client.v1`, converted the way
  the C SDK does: protocols tcp+udp, one address, one port).
- `parse_tunneler_server(obj, path) -> HostV1` (`ziti-tunneler-server.v1`).
- `parse_config(type_name, obj, path)` — dispatch on a config type name; unknown types must be
  JSON objects and are returned unchanged.
- `intercept_of(configs, service)`, `host_of(configs, service)` — a service's `intercept.v1`
  (`host.v1`), else its converted legacy config; None when it has neither.
- `INTERCEPT_V1`, `HOST_V1`, `TUNNELER_CLIENT_V1`, `TUNNELER_SERVER_V1` — the type names.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from tunneler.dnsname import is_hostname
from tunneler.errors import ConfigError

INTERCEPT_V1 = "intercept.v1"
HOST_V1 = "host.v1"
TUNNELER_CLIENT_V1 = "ziti-tunneler-client.v1"
TUNNELER_SERVER_V1 = "ziti-tunneler-server.v1"
PROTOCOLS = ("tcp", "udp")
PRECEDENCES = ("default", "required", "failed")
#: connectTimeoutSeconds when a config leaves it out (or 0): 5 s, as in ziti-edge-tunnel
DEFAULT_CONNECT_TIMEOUT = 5

_T = TypeVar("_T")


@dataclass(frozen=True)
class PortRange:
    """Inclusive port range."""

    low: int
    high: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high


@dataclass(frozen=True)
class DialOptions:
    """`intercept.v1.dialOptions`."""

    identity: str | None = None
    connect_timeout_seconds: int | None = None


@dataclass(frozen=True)
class InterceptV1:
    """Client-side intercept: which destinations a tunneler captures for a service."""

    protocols: tuple[str, ...]
    addresses: tuple[str, ...]
    port_ranges: tuple[PortRange, ...]
    dial_options: DialOptions | None = None
    source_ip: str | None = None


@dataclass(frozen=True)
class ListenOptions:
    """`host.v1.listenOptions` (bind-side terminator options)."""

    bind_using_edge_identity: bool = False
    connect_timeout_seconds: int = DEFAULT_CONNECT_TIMEOUT
    cost: int = 0
    identity: str | None = None
    max_connections: int = 3
    precedence: str = "default"


@dataclass(frozen=True)
class HostV1:
    """Host-side config: where a hosting tunneler connects each incoming flow."""

    protocol: str | None = None
    address: str | None = None
    port: int | None = None
    forward_protocol: bool = False
    forward_address: bool = False
    forward_port: bool = False
    allowed_protocols: tuple[str, ...] = ()
    allowed_addresses: tuple[str, ...] = ()
    allowed_port_ranges: tuple[PortRange, ...] = ()
    allowed_source_addresses: tuple[str, ...] = ()
    listen_options: ListenOptions | None = None
    port_checks: tuple[Mapping[str, Any], ...] = ()
    http_checks: tuple[Mapping[str, Any], ...] = ()


# -- primitive validators ----------------------------------------------------------------------


def _fail(path: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def _object(obj: object, path: str, allowed: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise _fail(path, "must be an object")
    for key in obj:
        if key not in allowed:
            raise _fail(f"{path}.{key}", "unknown field")
    return obj


def _int(obj: object, path: str, low: int, high: int) -> int:
    if isinstance(obj, bool) or not isinstance(obj, int) or not low <= obj <= high:
        raise _fail(path, f"must be an integer {low}..{high}")
    return obj


def _bool(obj: object, path: str) -> bool:
    if not isinstance(obj, bool):
        raise _fail(path, "must be true or false")
    return obj


def _str(obj: object, path: str) -> str:
    if not isinstance(obj, str) or not obj:
        raise _fail(path, "must be a non-empty string")
    return obj


def _protocol(obj: object, path: str) -> str:
    if not isinstance(obj, str) or obj.lower() not in PROTOCOLS:
        raise _fail(path, "must be 'tcp' or 'udp'")
    return obj.lower()


def _address(obj: object, path: str) -> str:
    """IPv4/IPv6 address, CIDR, hostname or wildcard domain `*.example.com`."""
    text = _str(obj, path)
    try:
        if "/" in text:
            ipaddress.ip_network(text, strict=False)
        else:
            ipaddress.ip_address(text)
        return text
    except ValueError:
        if "/" not in text and is_hostname(text, wildcard=True):
            return text
    raise _fail(path, "must be an IP address, CIDR, hostname or *.domain")


def _list(obj: object, path: str, item: Callable[[object, str], Any], *, unique: bool = True,
          non_empty: bool = True) -> tuple[Any, ...]:
    if not isinstance(obj, list):
        raise _fail(path, "must be an array")
    if non_empty and not obj:
        raise _fail(path, "must not be empty")
    values = tuple(item(value, f"{path}[{index}]") for index, value in enumerate(obj))
    if unique and len(set(values)) != len(values):
        raise _fail(path, "must not contain duplicates")
    return values


def _port_range(obj: object, path: str) -> PortRange:
    fields = _object(obj, path, ("low", "high"))
    for name in ("low", "high"):
        if name not in fields:
            raise _fail(f"{path}.{name}", "is required")
    low = _int(fields["low"], f"{path}.low", 0, 65535)
    high = _int(fields["high"], f"{path}.high", 0, 65535)
    if high < low:
        raise _fail(path, "high must be >= low")
    return PortRange(low, high)


def _require(fields: Mapping[str, Any], path: str, names: Sequence[str]) -> None:
    for name in names:
        if name not in fields:
            raise _fail(f"{path}.{name}", "is required")


# -- intercept.v1 ------------------------------------------------------------------------------


def _dial_options(obj: object, path: str) -> DialOptions:
    fields = _object(obj, path, ("identity", "connectTimeoutSeconds"))
    identity = fields.get("identity")
    timeout = fields.get("connectTimeoutSeconds")
    return DialOptions(
        identity=None if identity is None else _str(identity, f"{path}.identity"),
        connect_timeout_seconds=None if timeout is None
        else _int(timeout, f"{path}.connectTimeoutSeconds", 0, 2**31 - 1),
    )


def parse_intercept(obj: object, path: str = INTERCEPT_V1) -> InterceptV1:
    """Validate an `intercept.v1` object.

    Raises:
        ConfigError: with the JSON path of the first bad field.
    """
    allowed = ("protocols", "addresses", "portRanges", "dialOptions", "sourceIp")
    fields = _object(obj, path, allowed)
    _require(fields, path, allowed[:3])
    dial = fields.get("dialOptions")
    source_ip = fields.get("sourceIp")
    return InterceptV1(
        protocols=_list(fields["protocols"], f"{path}.protocols", _protocol),
        addresses=_list(fields["addresses"], f"{path}.addresses", _address),
        port_ranges=_list(fields["portRanges"], f"{path}.portRanges", _port_range),
        dial_options=None if dial is None else _dial_options(dial, f"{path}.dialOptions"),
        source_ip=None if source_ip is None else _str(source_ip, f"{path}.sourceIp"),
    )


def parse_tunneler_client(obj: object, path: str = TUNNELER_CLIENT_V1) -> InterceptV1:
    """Validate `ziti-tunneler-client.v1` and convert it as the C SDK does (tcp+udp, one port)."""
    fields = _object(obj, path, ("hostname", "port"))
    _require(fields, path, ("hostname", "port"))
    port = _int(fields["port"], f"{path}.port", 0, 65535)
    return InterceptV1(
        protocols=PROTOCOLS,
        addresses=(_address(fields["hostname"], f"{path}.hostname"),),
        port_ranges=(PortRange(port, port),),
    )


# -- host.v1 -----------------------------------------------------------------------------------

_LISTEN_FIELDS = ("bindUsingEdgeIdentity", "connectTimeoutSeconds", "cost", "identity",
                  "maxConnections", "precedence")


def _listen_options(obj: object, path: str) -> ListenOptions:
    fields = _object(obj, path, _LISTEN_FIELDS)
    defaults = ListenOptions()
    precedence = fields.get("precedence", defaults.precedence)
    if precedence not in PRECEDENCES:
        raise _fail(f"{path}.precedence", "must be 'default', 'required' or 'failed'")
    identity = fields.get("identity")
    return ListenOptions(
        bind_using_edge_identity=_bool(fields.get("bindUsingEdgeIdentity", False),
                                       f"{path}.bindUsingEdgeIdentity"),
        connect_timeout_seconds=_int(fields.get("connectTimeoutSeconds", DEFAULT_CONNECT_TIMEOUT),
                                     f"{path}.connectTimeoutSeconds", 0, 2**31 - 1),
        cost=_int(fields.get("cost", 0), f"{path}.cost", 0, 65535),
        identity=None if identity is None else _str(identity, f"{path}.identity"),
        max_connections=_int(fields.get("maxConnections", 3), f"{path}.maxConnections", 1,
                             2**31 - 1),
        precedence=precedence,
    )


def _check(obj: object, path: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise _fail(path, "must be an object")
    return obj


def _forwarded(fields: Mapping[str, Any], path: str, name: str, allowed: str) -> bool:
    """`forwardX: true` requires `allowedX`; otherwise `x` itself is required."""
    flag = f"forward{name.capitalize()}"
    forward = _bool(fields.get(flag, False), f"{path}.{flag}")
    if forward and allowed not in fields:
        raise _fail(f"{path}.{allowed}", f"is required when {flag} is true")
    if not forward and name not in fields:
        raise _fail(f"{path}.{name}", f"is required unless {flag} is true")
    return forward


def _optional(fields: Mapping[str, Any], name: str, path: str,
              parse: Callable[[object, str], Any]) -> Any:
    return None if fields.get(name) is None else parse(fields[name], f"{path}.{name}")


_HOST_FIELDS = ("protocol", "forwardProtocol", "allowedProtocols", "address", "forwardAddress",
                "allowedAddresses", "port", "forwardPort", "allowedPortRanges",
                "allowedSourceAddresses", "listenOptions", "portChecks", "httpChecks")


def parse_host(obj: object, path: str = HOST_V1) -> HostV1:
    """Validate a `host.v1` object (incl. forward*/allowed* variants and listenOptions).

    Raises:
        ConfigError: with the JSON path of the first bad field.
    """
    fields = _object(obj, path, _HOST_FIELDS)
    forward = {name: _forwarded(fields, path, name, allowed) for name, allowed in (
        ("protocol", "allowedProtocols"), ("address", "allowedAddresses"),
        ("port", "allowedPortRanges"))}
    def many(name: str, item: Callable[[object, str], Any]) -> tuple[Any, ...]:
        value = fields.get(name)
        return () if value is None else _list(value, f"{path}.{name}", item)
    return HostV1(
        protocol=None if forward["protocol"] else _protocol(fields["protocol"], f"{path}.protocol"),
        address=None if forward["address"] else _address(fields["address"], f"{path}.address"),
        port=None if forward["port"] else _int(fields["port"], f"{path}.port", 0, 65535),
        forward_protocol=forward["protocol"],
        forward_address=forward["address"],
        forward_port=forward["port"],
        allowed_protocols=many("allowedProtocols", _protocol),
        allowed_addresses=many("allowedAddresses", _address),
        allowed_port_ranges=many("allowedPortRanges", _port_range),
        allowed_source_addresses=many("allowedSourceAddresses", _address),
        listen_options=_optional(fields, "listenOptions", path, _listen_options),
        port_checks=_checks(fields, "portChecks", path),
        http_checks=_checks(fields, "httpChecks", path),
    )


def _checks(fields: Mapping[str, Any], name: str, path: str) -> tuple[Mapping[str, Any], ...]:
    value = fields.get(name)
    if value is None:
        return ()
    return _list(value, f"{path}.{name}", _check, unique=False, non_empty=False)


def parse_tunneler_server(obj: object, path: str = TUNNELER_SERVER_V1) -> HostV1:
    """Validate `ziti-tunneler-server.v1` and convert it to the equivalent `HostV1`."""
    fields = _object(obj, path, ("protocol", "hostname", "port", "portChecks", "httpChecks"))
    _require(fields, path, ("hostname", "port"))
    protocol = fields.get("protocol")
    return HostV1(
        protocol="tcp" if protocol is None else _protocol(protocol, f"{path}.protocol"),
        address=_address(fields["hostname"], f"{path}.hostname"),
        port=_int(fields["port"], f"{path}.port", 0, 65535),
        port_checks=_checks(fields, "portChecks", path),
        http_checks=_checks(fields, "httpChecks", path),
    )


_PARSERS: dict[str, Callable[[object, str], object]] = {
    INTERCEPT_V1: parse_intercept,
    HOST_V1: parse_host,
    TUNNELER_CLIENT_V1: parse_tunneler_client,
    TUNNELER_SERVER_V1: parse_tunneler_server,
}


def parse_config(type_name: str, obj: object, path: str) -> object:
    """Validate a config of a known type; other types need only be JSON objects."""
    parser = _PARSERS.get(type_name)
    if parser is not None:
        return parser(obj, path)
    return _check(obj, path)


def _current_or_legacy(configs: Mapping[str, object], service: str,
                       *choices: tuple[str, Callable[[object, str], _T]]) -> _T | None:
    for type_name, parse in choices:
        if type_name in configs:
            return parse(configs[type_name], f"{service}.{type_name}")
    return None


def intercept_of(configs: Mapping[str, object], service: str) -> InterceptV1 | None:
    """The `intercept.v1` of `service`'s `configs`, else its converted `ziti-tunneler-client.v1`.

    None when it has neither.

    Raises:
        ConfigError: the config is invalid (the path starts with the service name).
    """
    return _current_or_legacy(configs, service, (INTERCEPT_V1, parse_intercept),
                              (TUNNELER_CLIENT_V1, parse_tunneler_client))


def host_of(configs: Mapping[str, object], service: str) -> HostV1 | None:
    """As `intercept_of`, for `host.v1` and the legacy `ziti-tunneler-server.v1`."""
    return _current_or_legacy(configs, service, (HOST_V1, parse_host),
                              (TUNNELER_SERVER_V1, parse_tunneler_server))
