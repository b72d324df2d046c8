"""`LinuxHostConfigurator`: routes through netlink (`tunneler.tun.routes`) and the system
resolver (`tunneler.dns.system`), every change journaled first (`tunneler.journal`).

With `--tcp-redirect` a config carries a `Redirect` (from the engine's start to its drain):
its nftables table is journaled before it is first installed, replaced when it changes and
deleted when a config no longer has it.

The resolver method (systemd-resolved per link, or our header in resolv.conf, or none) is
chosen when a config first carries a DNS IP; later configs only change the routed domains.
A config without a DNS IP reverts the resolver before anything else (the stop sequence).
"""

from __future__ import annotations

from pathlib import Path

from tunneler.dns import system
from tunneler.errors import TunnelerError
from tunneler.hostconfig import cleanup
from tunneler.hostconfig.config import HostConfig
from tunneler.journal import Journal, Step
from tunneler.log import get_logger
from tunneler.tun import routes
from tunneler.tun.redirect import Nft, Redirect
from tunneler.tun.route_plan import RoutePlan

log = get_logger("hostconfig")


class LinuxHostConfigurator:
    """The real `HostConfigurator` (needs CAP_NET_ADMIN)."""

    def __init__(self, runtime_dir: Path, *, resolv_conf: Path = system.RESOLV_CONF,
                 dns_config: bool = True, nft: Nft | None = None) -> None:
        self._runtime_dir = runtime_dir
        self._nft = nft or Nft()
        self._redirect: Redirect | None = None
        self._nft_journaled: set[str] = set()
        self._resolv_conf = resolv_conf
        self._dns_config = dns_config
        self._journal: Journal | None = None
        self._resolver: system.SystemResolver | None = None
        self._config: HostConfig | None = None

    @property
    def dns_method(self) -> str | None:
        return self._resolver.method.value if self._resolver is not None else None

    def prepare(self, tun_name: str) -> None:
        self._journal = cleanup.start_journal(self._runtime_dir)
        self._journal.record(Step.delete_link(tun_name))

    def set(self, config: HostConfig) -> RoutePlan:
        if config.dns_ip is None:
            self._revert_resolver()
        applied = routes.configure(config.routes, self._journal)
        self._set_redirect(config.redirect)
        if config.dns_ip is not None:
            self._set_resolver(config, config.dns_ip)
        self._config = config
        return applied

    def _set_redirect(self, wanted: Redirect | None) -> None:
        current, self._redirect = self._redirect, wanted
        if wanted == current:
            return
        if wanted is None:
            assert current is not None
            self._nft.delete(current.table)
            log.info("hostconfig.redirect_removed", table=current.table)
            return
        if self._journal is not None and wanted.table not in self._nft_journaled:
            self._journal.record(Step.delete_nft_table(wanted.table))
            self._nft_journaled.add(wanted.table)
        self._nft.apply(wanted)
        log.info("hostconfig.redirect_applied", table=wanted.table, prefixes=len(wanted.prefixes),
                 target=f"{wanted.target[0]}:{wanted.target[1]}")

    def _set_resolver(self, config: HostConfig, dns_ip: str) -> None:
        if self._resolver is None:
            method, reason = system.detect_method(self._resolv_conf,
                                                  no_dns_config=not self._dns_config)
            log.info("daemon.resolver_method_chosen", method=method.value, reason=reason)
            self._resolver = system.SystemResolver(
                method, link=config.routes.tun_name, dns_ip=dns_ip, domains=config.domains,
                resolv_conf=self._resolv_conf, route_all=config.route_all,
                journal=self._journal)
            self._resolver.apply()
        elif self._config is None or (config.domains, config.route_all) != (
                self._config.domains, self._config.route_all):
            self._resolver.set_domains(config.domains, route_all=config.route_all)

    def _revert_resolver(self) -> None:
        """Best effort: a failure is logged, and the journal undoes it at `close`."""
        resolver, self._resolver = self._resolver, None
        if resolver is None:
            return
        try:
            resolver.revert()
        except (TunnelerError, OSError) as exc:
            log.error("daemon.resolver_revert_failed", method=resolver.method.value,
                      error=str(exc))

    def reclaim(self) -> RoutePlan:
        if self._config is None:
            return RoutePlan("")
        restored = routes.configure(self._config.routes, self._journal)
        if self._resolver is not None:
            self._resolver.reclaim()
        return restored

    def close(self) -> int:
        self._revert_resolver()
        self._redirect = None  # the journal deletes its table
        if self._journal is None:
            return 0
        failed = cleanup.rollback(self._journal)
        self._journal = None
        return failed
