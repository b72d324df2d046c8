"""What a running daemon reports about itself: plain dataclasses and the `DaemonView` protocol.

The daemon builds these values on request (cheap, no I/O); the control socket sends them as
JSON (`to_json`) and the CLI reads them back (`from_json`, which validates every field so a
bad answer is a clear error, never a crash). `problems(status)` is the one definition of
health and readiness shared by `tunneler status`, `/ready` and sd_notify READY=1: a router
channel is up, services are loaded, and (in intercept mode) the TUN, its routes and DNS are
applied.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from tunneler.counters import Counters

T = TypeVar("T")


@dataclass(frozen=True)
class InterceptRow:
    """One intercepted address joined with everything that serves it."""

    address: str                       # hostname, *.wildcard or CIDR as configured
    service: str
    identity: str
    vips: tuple[str, ...] = ()         # virtual IPs handed out for it (empty for CIDRs);
                                       # for a wildcard the most recently used few
    protocols: tuple[str, ...] = ()    # "tcp", "udp"
    ports: tuple[str, ...] = ()        # "443" or "8000-8100"
    router: str | None = None          # name of the edge router new flows go through now
    router_latency_ms: float | None = None
    active_flows: int = 0
    last_error: str | None = None
    vip_count: int = 0                 # all VIPs handed out for it (may exceed len(vips))


@dataclass(frozen=True)
class IdentityStatus:
    """One loaded (or failed) identity."""

    name: str
    loaded: bool
    controller_reachable: bool
    api_session_expires_at: str | None = None   # ISO 8601, UTC
    services: int = 0
    error: str | None = None
    controller_checked_at: str | None = None    # ISO 8601, UTC: the last refresh's answer
    cert_expires_at: str | None = None          # ISO 8601, UTC: the client certificate's end
    cert_renewed_at: str | None = None          # ISO 8601, UTC: the last renewal (this run)
    cert_renewal_error: str | None = None       # why the last renewal attempt failed
    cert_expiring: bool = False                 # near its end while renewal keeps failing
    services_cached_at: str | None = None       # ISO 8601, UTC: services come from the cache
                                                # saved then (controller unreachable at start)


@dataclass(frozen=True)
class RouterStatus:
    """One edge router known to an identity."""

    name: str                          # the router's name (its URL when the controller has none)
    identity: str
    connected: bool
    latency_ms: float | None = None
    url: str = ""                      # tls://host:port


@dataclass(frozen=True)
class TunStatus:
    """The TUN device and its routes (intercept mode only)."""

    name: str
    up: bool
    routes_applied: bool
    routes: int = 0


@dataclass(frozen=True)
class DnsStatus:
    """Our DNS server and the OS resolver configuration pointing at it."""

    address: str
    method: str                        # systemd-resolved | resolv.conf | none
    applied: bool
    upstreams: tuple[str, ...] = ()


@dataclass(frozen=True)
class Status:
    version: str
    mode: str                          # intercept | host
    uptime_s: float
    services_loaded: bool
    identities: tuple[IdentityStatus, ...] = ()
    routers: tuple[RouterStatus, ...] = ()
    tun: TunStatus | None = None
    dns: DnsStatus | None = None
    counters: Counters = field(default_factory=Counters)


class DaemonView(Protocol):
    """What a running daemon exposes to the ops layer (implemented by the daemon itself)."""

    def intercepts(self) -> list[InterceptRow]:
        """One row per intercepted address, in a stable order."""

    def status(self) -> Status:
        """A consistent snapshot of state and counters."""

    async def refresh(self) -> dict[str, int]:
        """Re-fetch services from the controller now; returns {"added": n, ...} totals."""

    def set_log_level(self, level: str) -> None:
        """Change the log level; raises ValueError for an unknown level."""


def problems(status: Status) -> list[str]:
    """Why the daemon is not ready/healthy; empty when it is."""
    found = [f"identity {i.name} not loaded: {i.error or 'not authenticated yet'}"
             for i in status.identities if not i.loaded]
    found += [f"identity {i.name} certificate expires {i.cert_expires_at} and renewal keeps "
              f"failing: {i.cert_renewal_error}" for i in status.identities if i.cert_expiring]
    if not status.identities:
        found.append("no identity loaded")
    if not any(r.connected for r in status.routers):
        found.append("no edge router connected")
    if not status.services_loaded:
        found.append("services not loaded")
    if status.tun is not None and not status.tun.up:
        found.append(f"TUN {status.tun.name} is down")
    if status.tun is not None and not status.tun.routes_applied:
        found.append("routes not applied")
    if status.dns is not None and not status.dns.applied:
        found.append("DNS not applied")
    return found


# ---- JSON ------------------------------------------------------------------------------------


def to_json(value: Any) -> Any:
    """A dataclass (or list of them) as JSON-ready dicts and lists, fields in declared order."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def from_json(cls: type[T], data: Any, where: str = "$") -> T:
    """Rebuild dataclass `cls` from `to_json` output.

    Raises:
        ValueError: a field is missing or has the wrong type (the message names its path).
    """
    decoded = _decode(cls, data, where)
    return typing.cast(T, decoded)


def _decode(tp: Any, data: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _decode_dataclass(tp, data, where)
    if origin in (types.UnionType, typing.Union):
        if data is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _decode(inner[0], data, where)
    if origin is tuple:
        _expect(isinstance(data, list), where, "a list")
        return tuple(_decode(args[0], v, f"{where}[{n}]") for n, v in enumerate(data))
    if origin is dict:
        _expect(isinstance(data, dict), where, "an object")
        return {str(k): _decode(args[1], v, f"{where}.{k}") for k, v in data.items()}
    if tp is float:
        _expect(isinstance(data, int | float) and not isinstance(data, bool), where, "a number")
        return float(data)
    _expect(isinstance(data, tp) and (tp is bool or not isinstance(data, bool)), where,
            f"a {tp.__name__}")
    return data


def _decode_dataclass(cls: Any, data: Any, where: str) -> Any:
    _expect(isinstance(data, dict), where, "an object")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            values[f.name] = _decode(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{where}.{f.name}: missing")
    return cls(**values)


def _expect(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise ValueError(f"{where}: expected {what}")
