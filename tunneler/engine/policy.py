"""Which flows are intercepted, and which identity dials them: built from every context's services.

``InterceptPolicy(contexts)`` turns the services each identity may dial and that carry an
``intercept.v1`` (or legacy ``ziti-tunneler-client.v1``) config into one ``InterceptTable``
and a ``DialTarget`` per service (the context that dials it, the connect timeout from
``dialOptions.connectTimeoutSeconds``, default 5 s as in ziti-edge-tunnel). ``rebuild()`` is
called after every service refresh; a service whose config is invalid is skipped with a
warning, never fatal. When two identities offer a service of the same name, the first wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from tunneler.configs import DEFAULT_CONNECT_TIMEOUT, InterceptV1, intercept_of
from tunneler.dns.pool import VipPool
from tunneler.errors import ConfigError
from tunneler.intercept import (
    FlowAddresses,
    Intercept,
    InterceptTable,
    build_app_data,
    expand_template,
)
from tunneler.log import get_logger
from tunneler.overlay import DialContext

log = get_logger("engine")


@dataclass(frozen=True)
class DialTarget:
    """How to dial one intercepted service."""

    service: str
    context: DialContext
    connect_timeout: float


@dataclass(frozen=True)
class Match:
    """The intercept a new flow matched, how to dial it, and the name behind its VIP."""

    intercept: Intercept
    target: DialTarget
    hostname: str | None

    def app_data(self, proto: str, src: int, src_port: int, dst: int,
                 dst_port: int) -> dict[str, str | int | None]:
        """The app data of the dial (openziti-protocol.md §6.5), with ``sourceIp`` expanded."""
        flow = self._flow(proto, src, src_port, dst, dst_port)
        return dict(build_app_data(flow, self._expand(self.intercept.source_ip, flow)))

    def terminator_identity(self, proto: str, src: int, src_port: int, dst: int,
                            dst_port: int) -> str | None:
        """``dialOptions.identity`` expanded for this flow: the terminator to ask for."""
        flow = self._flow(proto, src, src_port, dst, dst_port)
        return self._expand(self.intercept.dial_identity, flow) or None

    def _flow(self, proto: str, src: int, src_port: int, dst: int,
              dst_port: int) -> FlowAddresses:
        return FlowAddresses(proto, str(IPv4Address(src)), src_port, str(IPv4Address(dst)),
                             dst_port, self.hostname)

    def _expand(self, template: str | None, flow: FlowAddresses) -> str | None:
        if template is None:
            return None
        return expand_template(template, flow, self.target.context.name, {})


def _timeout(config: InterceptV1) -> float:
    options = config.dial_options
    if options is None or not options.connect_timeout_seconds:
        return float(DEFAULT_CONNECT_TIMEOUT)
    return float(options.connect_timeout_seconds)


class InterceptPolicy:
    """The active intercepts of every identity, and their dial targets."""

    def __init__(self, contexts: Sequence[DialContext], pool: VipPool) -> None:
        self.contexts = list(contexts)
        self.pool = pool
        self.table = InterceptTable()
        self.targets: dict[str, DialTarget] = {}

    def rebuild(self) -> None:
        """Re-read every context's services (call after a refresh changed them)."""
        intercepts: list[Intercept] = []
        targets: dict[str, DialTarget] = {}
        for ctx in self.contexts:
            for service in ctx.services.values():
                if service.name in targets or "Dial" not in service.permissions:
                    continue
                try:
                    config = intercept_of(service.configs, service.name)
                    if config is None:
                        continue
                    intercept = Intercept.from_config(service.name, config)
                except ConfigError as exc:
                    log.warning("engine.intercept_invalid", service=service.name, error=str(exc))
                    continue
                intercepts.append(intercept)
                targets[service.name] = DialTarget(service.name, ctx, _timeout(config))
        self.table.set_intercepts(intercepts)
        self.targets = targets
        log.info("engine.intercepts_updated", services=len(targets),
                 hostnames=len(self.table.hostnames()), networks=len(self.table.networks()))

    def match(self, proto: str, dst: int, dst_port: int) -> Match | None:
        """The intercept for a new ``proto`` flow to ``dst:dst_port`` (a VIP or an address)."""
        ip = IPv4Address(dst)
        hostname = None
        if ip in self.pool.network:
            hostname = self.pool.hostname_for(ip)
            if hostname is None:
                return None
            intercept = self.table.lookup_hostname(proto, hostname, dst_port)
        else:
            intercept = self.table.lookup_address(proto, ip, dst_port)
        if intercept is None:
            return None
        target = self.targets.get(intercept.service)
        return None if target is None else Match(intercept, target, hostname)
