"""`tunneler run-host`: bind every service this identity hosts and connect each flow to its target.

For each service with Bind permission and a `host.v1` (or legacy `ziti-tunneler-server.v1`)
config, keep a bind on an edge router; for every incoming dial choose the target from the
config and the dialer's app data (`client.targets`), connect it within
`listenOptions.connectTimeoutSeconds`, and answer DialSuccess only once that worked (DialFailed
with the reason otherwise). Only outbound connections are made. Services appearing, changing
or disappearing in the controller are bound, re-bound or unbound on the next refresh.
Flows, bytes, target connect times and failures are counted per service for the ops layer.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tunneler import __version__, aio
from tunneler.bridges import (
    DatagramBridge,
    StreamBridge,
    connect_datagram,
    connect_stream,
)
from tunneler.client.context import Binding, ZitiContext
from tunneler.client.ctrl import ServiceInfo
from tunneler.client.listener import BindOptions, DialHandler, IncomingDial
from tunneler.client.resolve import Resolver, resolve_within, system_resolve
from tunneler.client.services import ServiceChanges, config_or_warn
from tunneler.client.targets import permitted_addresses, select_target
from tunneler.configs import DEFAULT_CONNECT_TIMEOUT, PRECEDENCES, HostV1, ListenOptions, host_of
from tunneler.counters import Metrics
from tunneler.errors import ConfigError, DialError
from tunneler.log import get_logger
from tunneler.ops import runtime as ops_runtime
from tunneler.ops.enroll_dir import enroll_pending
from tunneler.ops.options import NO_OPS, OpsConfig
from tunneler.ops.snapshot import InterceptRow, Status
from tunneler.ops.views import ContextsView
from tunneler.overlay import OverlaySink

log = get_logger("host")

SHUTDOWN_TIMEOUT = 10.0


def cmd_run_host(args: argparse.Namespace) -> int:
    """Entry point of `tunneler run-host`."""
    if args.identity_dir:
        enroll_pending(Path(args.identity_dir))
    paths = identity_paths(args.identity, args.identity_dir)
    ops_config = OpsConfig.from_args(args)
    if not args.refresh_interval > 0:
        raise ConfigError("--refresh-interval must be a positive number of seconds")
    return aio.run(lambda stop: run_host(paths, stop, refresh_interval=args.refresh_interval,
                                         ops_config=ops_config))


def identity_paths(files: Sequence[str], directory: str | None) -> list[Path]:
    """The identity files named on the command line and found in `directory`.

    Raises:
        ConfigError: none given, or the directory does not exist.
    """
    paths = [Path(f) for f in files]
    if directory is not None:
        folder = Path(directory)
        if not folder.is_dir():
            raise ConfigError(f"--identity-dir {directory}: not a directory")
        paths.extend(sorted(folder.glob("*.json")))
    if not paths:
        raise ConfigError("no identity: pass --identity FILE or --identity-dir DIR")
    return paths


async def run_host(paths: Sequence[Path], stop: asyncio.Event, *,
                   refresh_interval: float = 60.0,
                   ops_config: OpsConfig = NO_OPS) -> int:
    """Host services for every identity until `stop` is set; then unbind."""
    stats = Metrics()
    hosts = [ServiceHost(ZitiContext(path, refresh_interval=refresh_interval), stats)
             for path in paths]
    view = HostView(hosts, stats)
    async with ops_runtime.serve(view, ops_config) as ops:
        return await _host(hosts, view, stop, ops)


async def _host(hosts: Sequence[ServiceHost], view: HostView, stop: asyncio.Event,
                ops: ops_runtime.Ops) -> int:
    try:
        for host in hosts:
            if not await host.ctx.start_retrying(stop):
                return 0
            host.start()
        view.services_loaded = True
        await stop.wait()
    finally:
        ops.stopping()
        async with asyncio.timeout(SHUTDOWN_TIMEOUT):
            await asyncio.gather(*(host.close() for host in hosts), return_exceptions=True)
    log.info("host.stopped")
    return 0


@dataclass(frozen=True)
class HostedService:
    """One bound service as `tunneler status`/`intercepts` show it in host mode."""

    service: str
    identity: str
    target: str                       # "tcp:127.0.0.1:8000"; a forwarded part shows as "*"
    protocols: tuple[str, ...]
    bound_on: tuple[str, ...]         # routers with a live terminator of this identity


def _target(config: HostV1) -> tuple[str, tuple[str, ...]]:
    protocols = config.allowed_protocols if config.forward_protocol else (
        (config.protocol,) if config.protocol else ())
    address = "*" if config.forward_address else config.address or "-"
    port = "*" if config.forward_port else str(config.port or "-")
    return f"{'/'.join(protocols) or '-'}:{address}:{port}", tuple(protocols)


class ServiceHost:
    """Keeps one identity's hostable services bound."""

    def __init__(self, ctx: ZitiContext, stats: Metrics | None = None) -> None:
        self.ctx = ctx
        self.stats = stats or Metrics()
        self.bindings: dict[str, Binding] = {}
        self._configs: dict[str, HostV1] = {}   # the config each binding was made with

    def start(self) -> None:
        """Bind what is hostable now and follow later changes."""
        self.ctx.subscribe(self.apply)
        self.apply(ServiceChanges(added=tuple(self.ctx.services.values())))

    def apply(self, changes: ServiceChanges) -> None:
        """Unbind removed/changed services, bind added/changed ones."""
        for service in changes.removed + changes.changed:
            binding = self.bindings.pop(service.name, None)
            self._configs.pop(service.name, None)
            if binding is not None:
                log.info("host.service_unbinding", service=service.name)
                self.ctx.spawn(binding.stop())
        for service in changes.added + changes.changed:
            self._bind(service)

    def _bind(self, service: ServiceInfo) -> None:
        if "Bind" not in service.permissions:
            return
        config = host_config(service)
        if config is None:
            log.info("host.service_skipped", service=service.name, reason="no host config")
            return
        self._configs[service.name] = config
        self.bindings[service.name] = self.ctx.bind(
            service, dial_handler(service.name, config, self.stats),
            bind_options(config, self.ctx.name))

    def snapshot(self) -> tuple[HostedService, ...]:
        """Every service bound (or being bound) now, by name."""
        rows = []
        for name, binding in sorted(self.bindings.items()):
            target, protocols = _target(self._configs[name])
            rows.append(HostedService(name, self.ctx.name, target, protocols,
                                      binding.bound_on()))
        return tuple(rows)

    async def close(self) -> None:
        """Unbind everything and close the context."""
        await asyncio.gather(*(b.stop() for b in self.bindings.values()))
        self.bindings.clear()
        self._configs.clear()
        await self.ctx.close()


def host_config(service: ServiceInfo) -> HostV1 | None:
    """The service's host.v1 config (or converted ziti-tunneler-server.v1); None if absent/bad."""
    return config_or_warn(service, host_of, "host.config_invalid")


def bind_options(config: HostV1, identity_name: str) -> BindOptions:
    """Cost, precedence and terminator identity from `listenOptions`."""
    listen = config.listen_options or ListenOptions()
    identity = listen.identity
    if identity is not None:
        identity = identity.replace("$tunneler_id.name", identity_name)
    elif listen.bind_using_edge_identity:
        identity = identity_name
    return BindOptions(cost=listen.cost, precedence=PRECEDENCES.index(listen.precedence),
                       terminator_identity=identity)


def dial_handler(service_name: str, config: HostV1, stats: Metrics | None = None, *,
                 resolve: Resolver = system_resolve) -> DialHandler:
    """Connect each incoming dial to its target (raises DialError → DialFailed), counted in
    `stats` (the connect time as dial latency).

    The target's name is resolved once with `resolve`; the resolved addresses are checked
    against `allowedAddresses` and the connection goes to exactly those (targets.py)."""
    listen = config.listen_options or ListenOptions()
    timeout = float(listen.connect_timeout_seconds or DEFAULT_CONNECT_TIMEOUT)
    counters = stats or Metrics()
    meter = counters.meter(service_name)

    async def on_dial(incoming: IncomingDial) -> OverlaySink:
        started = time.perf_counter()
        try:
            target = select_target(config, incoming.app_data)
            resolved = await resolve_within(resolve, target.host, timeout)
            addresses = permitted_addresses(config, target, resolved)
            sink: StreamBridge | DatagramBridge
            if target.protocol == "udp":
                sink = await connect_datagram(addresses, target.port, meter)
            else:
                sink = await connect_stream(addresses, target.port, timeout, meter)
        except DialError as exc:
            counters.dial_failed(service_name, exc)
            raise
        counters.dial_succeeded(service_name, time.perf_counter() - started)
        counters.flow_opened(service_name)
        sink.on_lost(lambda: counters.flow_closed(service_name))
        log.debug("host.flow_connected", service=service_name, caller=incoming.caller_id,
                  dst=f"{target.protocol}:{target.host}:{target.port}")
        return sink

    return on_dial


class HostView(ContextsView):
    """The view of `tunneler run-host` (no intercepts, no TUN, no DNS)."""

    def __init__(self, hosts: Sequence[ServiceHost], stats: Metrics | None = None) -> None:
        super().__init__([h.ctx for h in hosts], stats)
        self.hosts = list(hosts)
        self.services_loaded = False

    def intercepts(self) -> list[InterceptRow]:
        """Host mode intercepts nothing: one row per hosted service, its target as the
        address and the routers it is bound on."""
        return [InterceptRow(row.target, row.service, row.identity, protocols=row.protocols,
                             router=", ".join(row.bound_on) or None,
                             active_flows=self.stats.active_flows(row.service),
                             last_error=self.stats.last_error(row.service))
                for host in self.hosts for row in host.snapshot()]

    def status(self) -> Status:
        return Status(__version__, "host", self.uptime(), self.services_loaded,
                      self.identities(), self.routers(), counters=self.stats.snapshot())
