"""`tunneler run`: the intercepting daemon (TUN, routes, DNS, resolver, the data path engine).

Start, in order (style.md §6 rule 15, reliability.md §3.3): replay a stale journal of a
crashed run → identity contexts (retrying while the controller is down) → TUN device, address,
MTU and routes (journalled before each change) → DNS server and TUN reader (the engine) →
system resolver configuration. Service changes re-plan intercepts, DNS names and routes.
Stop on SIGTERM/SIGINT in reverse: refuse new flows, restore the resolver first, drain flows
for up to 5 s, close the contexts, remove routes and the TUN, remove the journal, exit 0.

The host side is one value: `_host_config()` derives the `HostConfig` (routes, DNS IP,
domains) from the engine's intercepts, and every start step, service change and stop hands
it to the `HostConfigurator` (Linux by default; tests pass the fake and a socket-pair TUN).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tunneler import aio
from tunneler.client.context import ZitiContext
from tunneler.client.services import ServiceChanges
from tunneler.counters import Metrics
from tunneler.daemon_view import InterceptView
from tunneler.dns import system
from tunneler.dns.pool import VipPool
from tunneler.engine.dnsserver import Upstream, parse_upstream
from tunneler.engine.engine import Engine
from tunneler.engine.limits import Limits
from tunneler.errors import ControllerError, TunnelerError
from tunneler.host import identity_paths
from tunneler.hostconfig.config import HostConfig, HostConfigurator
from tunneler.hostconfig.linux import LinuxHostConfigurator
from tunneler.log import get_logger
from tunneler.ops import runtime as ops_runtime
from tunneler.ops.enroll_dir import enroll_pending
from tunneler.ops.options import NO_OPS, OpsConfig
from tunneler.tun.device import LinuxTun, TunDevice
from tunneler.tun.redirect import Redirect, nft_binary
from tunneler.tun.redirect import table_name as redirect_table
from tunneler.tun.route_plan import (
    DEFAULT_MTU,
    RouteConfig,
    RoutePlan,
    desired_config,
    validate_intercepts,
)

log = get_logger("daemon")

CONTEXT_CLOSE_TIMEOUT = 5.0
RECONCILE_INTERVAL = 5.0  # seconds between checks that our routes and resolver lines are intact


@dataclass(frozen=True)
class RunConfig:
    """Everything `tunneler run` was asked to do."""

    identities: list[Path]
    tun_name: str = "tunneler0"
    dns_ip_range: str = "100.64.0.1/10"
    upstreams: list[Upstream] | None = None  # None: what the system used before us
    dns_config: bool = True
    dns_route_all: bool = False
    refresh_interval: float = 60.0
    runtime_dir: Path = Path("/run/tunneler")
    resolv_conf: Path = system.RESOLV_CONF
    mtu: int = DEFAULT_MTU
    tcp_redirect: bool = False  # nftables DNAT of local TCP to the listener (tunneler.tun.redirect)
    limits: Limits = field(default_factory=Limits)
    ops: OpsConfig = NO_OPS


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Validate the command line (raises ConfigError)."""
    if args.tcp_redirect:
        nft_binary()  # a missing nft is a config error now, not a failed start later
    limits = Limits(max_tcp_flows=args.max_tcp_flows, max_pending_dials=args.max_pending_dials,
                    max_nat_entries=2 * args.max_tcp_flows, max_udp_flows=args.max_udp_flows,
                    max_dns_in_flight=args.max_dns_in_flight)
    return RunConfig(
        identities=identity_paths(args.identity, args.identity_dir),
        tun_name=args.tun_name,
        dns_ip_range=args.dns_ip_range,
        upstreams=[parse_upstream(text) for text in args.dns_upstream] or None,
        dns_config=not args.no_dns_config,
        dns_route_all=args.dns_route_all,
        refresh_interval=args.refresh_interval,
        runtime_dir=Path(args.runtime_dir),
        resolv_conf=Path(args.resolv_conf),
        mtu=args.mtu,
        tcp_redirect=args.tcp_redirect,
        limits=limits,
        ops=OpsConfig.from_args(args),
    )


def cmd_run(args: argparse.Namespace) -> int:
    """Entry point of `tunneler run`."""
    if args.identity_dir:
        enroll_pending(Path(args.identity_dir))
    config = config_from_args(args)
    try:
        VipPool(config.dns_ip_range)
    except ValueError as exc:
        raise TunnelerError(f"--dns-ip-range {config.dns_ip_range}: {exc}") from None
    return aio.run(lambda stop: Daemon(config).run(stop))


async def _resolve_hosts(hosts: Iterable[str]) -> list[str]:
    """IP addresses of the controllers and routers (never routed into the TUN)."""
    loop = asyncio.get_running_loop()
    found: dict[str, None] = {}
    for host in hosts:
        try:
            infos = await loop.getaddrinfo(host, None)
        except OSError as exc:
            log.warning("daemon.host_unresolved", host=host, error=str(exc))
            continue
        for info in infos:
            found[str(info[4][0]).split("%", 1)[0]] = None
    return list(found)


class Daemon:
    """One run of the intercepting daemon."""

    def __init__(self, config: RunConfig, *, configurator: HostConfigurator | None = None,
                 open_tun: Callable[[str], TunDevice] = LinuxTun) -> None:
        self.config = config
        self.pool = VipPool(config.dns_ip_range)
        self.contexts = [ZitiContext(path, refresh_interval=config.refresh_interval)
                         for path in config.identities]
        self.configurator: HostConfigurator = configurator or LinuxHostConfigurator(
            config.runtime_dir, resolv_conf=config.resolv_conf, dns_config=config.dns_config)
        self._open_tun = open_tun
        self.tun: TunDevice | None = None
        self.engine: Engine | None = None
        self.host_config: HostConfig | None = None   # the last one handed to the configurator
        self._dns_on = False
        self.excluded: list[str] = []
        self.stats = Metrics()  # per-service counters: the engine counts, the ops layer reads
        self._routes_lock = asyncio.Lock()
        self._updates: set[asyncio.Task[None]] = set()

    @property
    def tun_name(self) -> str:
        """The TUN device's name."""
        return self.config.tun_name

    async def run(self, stop: asyncio.Event) -> int:
        """Start, serve until `stop` is set, stop; returns the exit code."""
        view = InterceptView(self, self.stats)
        async with ops_runtime.serve(view, self.config.ops, background=[view.keep_links()]) as ops:
            return await self._run(stop, ops)

    async def _run(self, stop: asyncio.Event, ops: ops_runtime.Ops) -> int:
        # pyroute2 runs its own event loop: every netlink call goes to a worker thread.
        await asyncio.to_thread(self.configurator.prepare, self.config.tun_name)
        upstreams = self._upstreams()
        try:
            started = await asyncio.gather(*(ctx.start_retrying(stop) for ctx in self.contexts))
            if all(started):
                await self._start(upstreams)
                log.info("daemon.ready", tun=self.config.tun_name,
                         dns_ip=str(self.pool.dns_ip), identities=len(self.contexts),
                         upstreams=[f"{h}:{p}" for h, p in upstreams])
                await self._reconcile_until(stop)
        finally:
            ops.stopping()
            await self._stop()
        return 0

    def _upstreams(self) -> list[Upstream]:
        if self.config.upstreams is not None:
            return self.config.upstreams
        found = system.read_upstreams(self.config.resolv_conf, str(self.pool.dns_ip))
        result = []
        for text in found:
            try:
                result.append(parse_upstream(text if ":" not in text else f"[{text}]"))
            except TunnelerError as exc:
                log.warning("daemon.upstream_skipped", upstream=text, error=str(exc))
        return result

    async def _start(self, upstreams: Sequence[Upstream]) -> None:
        hosts = [ctx.identity.controller_address[0] for ctx in self.contexts]
        for ctx in self.contexts:
            for router in ctx.routers:
                try:
                    hosts.append(router.address[0])
                except ControllerError as exc:
                    log.warning("daemon.router_address_invalid", router=router.url,
                                error=str(exc))
        self.excluded = await _resolve_hosts(hosts)
        self.tun = self._open_tun(self.config.tun_name)
        self.engine = Engine(self.tun, self.contexts, self.pool, limits=self.config.limits,
                             upstreams=upstreams, metrics=self.stats)
        await self._apply()
        await self.engine.start()
        for ctx in self.contexts:
            ctx.subscribe(self._services_changed)
        self._dns_on = True
        await self._apply()

    def _intercept_networks(self) -> list[str]:
        """Intercepted IPs/CIDRs that may be routed into the TUN (others are logged, skipped)."""
        networks = []
        table = self.engine.policy.table if self.engine is not None else None
        for network in sorted(table.networks() if table else (), key=str):
            if not isinstance(network, ipaddress.IPv4Network) or network.subnet_of(
                    self.pool.network):
                continue
            try:
                validate_intercepts([str(network)], self.excluded)
            except TunnelerError as exc:
                log.warning("daemon.intercept_not_routed", network=str(network), error=str(exc))
                continue
            networks.append(str(network))
        return networks

    async def _reconcile_until(self, stop: asyncio.Event) -> None:
        """Every few seconds, put back routes or resolver lines that something else removed
        (another tool, a DHCP client rewriting resolv.conf): setup is idempotent."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECONCILE_INTERVAL):
                    await stop.wait()
            if stop.is_set():
                return
            try:
                async with self._routes_lock:
                    plan = await asyncio.to_thread(self.configurator.reclaim)
                if not plan.empty:
                    log.warning("daemon.routes_restored", added=len(plan.add_routes),
                                addresses=len(plan.add_addresses))
            except (TunnelerError, OSError) as exc:
                log.error("daemon.reconcile_failed", error=str(exc))

    def _host_config(self) -> HostConfig:
        """What the host should look like now (DNS only between engine start and stop)."""
        routes = desired_config(
            tun_name=self.config.tun_name,
            addresses=[f"{self.pool.tun_ip}/{self.pool.network.prefixlen}"],
            vip_cidr=str(self.pool.network), intercepts=self._intercept_networks(),
            excluded=self.excluded, mtu=self.config.mtu)
        if not self._dns_on:
            return HostConfig(routes)
        return HostConfig(routes, str(self.pool.dns_ip), tuple(self._domains()),
                          self.config.dns_route_all, self._redirect(routes))

    def _redirect(self, routes: RouteConfig) -> Redirect | None:
        """With --tcp-redirect: local TCP to what the TUN catches goes to the listener, except
        to our own addresses and the controller's and routers' (never our own links)."""
        if not self.config.tcp_redirect or self.engine is None or self.engine.tcp is None:
            return None
        tcp = self.engine.tcp
        ours = (self.pool.tun_ip, tcp.nat_ip, self.pool.dns_ip)
        return Redirect(
            table=redirect_table(self.config.tun_name),
            target=(str(self.pool.tun_ip), tcp.listen_port),
            prefixes=tuple(str(r) for r in routes.routes if r.version == 4),
            exclude=tuple(dict.fromkeys([*map(str, ours), *(
                h for h in self.excluded if ipaddress.ip_address(h).version == 4)])))

    async def _apply(self) -> RoutePlan:
        """Compute the host config and hand it to the configurator (one change at a time)."""
        async with self._routes_lock:
            self.host_config = self._host_config()
            return await asyncio.to_thread(self.configurator.set, self.host_config)

    def _domains(self) -> list[str]:
        assert self.engine is not None
        table = self.engine.policy.table
        return sorted(table.hostnames()) + sorted(f"*.{d}" for d in table.wildcard_domains())

    def _services_changed(self, changes: ServiceChanges) -> None:
        """A refresh changed some identity's services: re-plan intercepts, DNS and routes."""
        if self.engine is None:
            return
        self.engine.update_intercepts()
        task = asyncio.get_running_loop().create_task(self._update_host())
        self._updates.add(task)
        task.add_done_callback(self._updates.discard)

    async def _update_host(self) -> None:
        try:
            await self._apply()
        except (TunnelerError, OSError) as exc:
            log.error("daemon.policy_update_failed", error=str(exc))
        else:
            log.info("daemon.policy_applied", networks=len(self._intercept_networks()))

    async def _stop(self) -> None:
        """Reverse order of `_start`; every step runs even when an earlier one failed."""
        if self.engine is not None:
            self.engine.drain()
        if self._dns_on:
            self._dns_on = False
            try:
                await self._apply()   # the resolver first: no new name leads to us
            except (TunnelerError, OSError) as exc:
                log.error("daemon.dns_release_failed", error=str(exc))
        if self.engine is not None:
            seconds = self.config.limits.drain_timeout + 1
            try:
                async with asyncio.timeout(seconds):
                    await self.engine.close()
            except TimeoutError:
                log.warning("daemon.engine_close_timed_out", seconds=seconds)
        try:
            async with asyncio.timeout(CONTEXT_CLOSE_TIMEOUT):
                results = await asyncio.gather(*(ctx.close() for ctx in self.contexts),
                                               return_exceptions=True)
            for ctx, result in zip(self.contexts, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning("daemon.context_close_failed", identity=ctx.name,
                                error=str(result) or repr(result))
        except TimeoutError:
            log.warning("daemon.context_close_timed_out", seconds=CONTEXT_CLOSE_TIMEOUT)
        if self.tun is not None:
            self.tun.close()
        for task in list(self._updates):
            task.cancel()
        async with self._routes_lock:
            failed = await asyncio.to_thread(self.configurator.close)
        log.info("daemon.stopped", undo_failures=failed)

