"""A real `Daemon` (contexts, engine, DNS names, reconcile) against a real network, on the fake
`HostConfigurator` and a socket-pair TUN: no root (issue 10, item 1).

The daemon is given one `HostConfig` per change; this test reads them back for a service
added, changed and removed (no longer dialable) with `network apply`, for drift (routes
removed behind our back are put back by the reconcile loop) and for stop (the resolver
released first, then close).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.overlay import Overlay, apply_policy, build_overlay, echo_server
from tunneler.daemon import RECONCILE_INTERVAL, Daemon, RunConfig
from tunneler.engine.limits import Limits
from tunneler.hostconfig.config import FakeHostConfigurator, HostConfig
from tunneler.tun.device import SocketPairTun

VIPS = ipaddress.ip_network("100.64.0.0/10")
REFRESH = 0.3


def _service(name: str, address: str, port: int) -> dict[str, Any]:
    return {"name": name, "configs": {
        "host.v1": {"protocol": "tcp", "address": "127.0.0.1", "port": port},
        "intercept.v1": {"protocols": ["tcp"], "addresses": [address],
                         "portRanges": [{"low": 8000, "high": 8000}]}}}


@pytest.fixture(name="overlay")
def _overlay(tmp_path: Path) -> Iterator[tuple[Overlay, int]]:
    with echo_server() as port:
        overlay = build_overlay(tmp_path, [_service("llm", "llm.private.test", port)])
        try:
            yield overlay, port
        finally:
            overlay.stop_all()


async def _until(fake: FakeHostConfigurator, check: Callable[[HostConfig], bool],
                 timeout: float = 30.0) -> HostConfig:
    for _ in range(int(timeout / 0.05)):
        if fake.configs and check(fake.configs[-1]):
            return fake.configs[-1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no such config in time; the last: {fake.configs[-1:]}")


def test_the_daemon_hands_one_host_config_per_change_to_its_configurator(
        overlay: tuple[Overlay, int], tmp_path: Path) -> None:
    net, port = overlay
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\n")
    config = RunConfig(identities=[net.directory / "client1.json"], refresh_interval=REFRESH,
                       runtime_dir=tmp_path / "run", resolv_conf=resolv, upstreams=[],
                       limits=Limits(drain_timeout=0.5))
    fake = FakeHostConfigurator()
    daemon = Daemon(config, configurator=fake, open_tun=SocketPairTun)

    def apply(*services: dict[str, Any]) -> None:
        apply_policy(net.directory, services, "host1", "client1")

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(daemon.run(stop))
        first = await _until(fake, lambda c: c.dns_ip is not None)
        assert fake.prepared == "tunneler0" and fake.configs[0].dns_ip is None  # DNS last
        assert first.domains == ("llm.private.test",) and first.routes.routes == (VIPS,)
        assert first.dns_ip == str(daemon.pool.dns_ip) and not first.route_all

        await asyncio.to_thread(apply, _service("llm", "llm.private.test", port),
                                _service("lab", "198.51.100.0/24", port))
        added = await _until(fake, lambda c: len(c.routes.routes) == 2)
        assert added.routes.routes == (VIPS, ipaddress.ip_network("198.51.100.0/24"))

        await asyncio.to_thread(apply, _service("llm", "*.models.test", port),
                                _service("lab", "203.0.113.0/24", port))
        changed = await _until(fake, lambda c: "*.models.test" in c.domains and
                               ipaddress.ip_network("203.0.113.0/24") in c.routes.routes)
        assert changed.domains == ("*.models.test",)
        assert changed.routes.routes == (VIPS, ipaddress.ip_network("203.0.113.0/24"))

        retired = {**_service("lab", "203.0.113.0/24", port), "roleAttributes": ["retired"]}
        await asyncio.to_thread(apply, _service("llm", "*.models.test", port), retired)
        removed = await _until(fake, lambda c: c.routes.routes == (VIPS,))
        assert removed.domains == ("*.models.test",) and removed.dns_ip is not None

        await asyncio.to_thread(apply, _service("llm", "*.models.test", port),
                                _service("lab", "198.51.100.0/24", port))
        await _until(fake, lambda c: len(c.routes.routes) == 2)
        fake.drift(keep_routes=1)     # someone deleted our intercept route
        for _ in range(int((3 * RECONCILE_INTERVAL + 10) / 0.1)):
            if any(p.add_routes for p in fake.reclaimed):
                break
            await asyncio.sleep(0.1)
        assert fake.kernel is not None and len(fake.kernel.routes) == 2

        stop.set()
        assert await running == 0
        assert fake.configs[-1].dns_ip is None and fake.configs[-2].dns_ip is not None
        assert fake.closed

    asyncio.run(scenario())


def test_with_tcp_redirect_the_configs_carry_the_table_while_dns_is_on(
        overlay: tuple[Overlay, int], tmp_path: Path) -> None:
    net, port = overlay
    config = RunConfig(identities=[net.directory / "client1.json"], refresh_interval=REFRESH,
                       runtime_dir=tmp_path / "run", resolv_conf=tmp_path / "resolv.conf",
                       upstreams=[], limits=Limits(drain_timeout=0.5), tcp_redirect=True)
    config.resolv_conf.write_text("nameserver 127.0.0.53\n")
    fake = FakeHostConfigurator()
    daemon = Daemon(config, configurator=fake, open_tun=SocketPairTun)

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(daemon.run(stop))
        first = await _until(fake, lambda c: c.dns_ip is not None)
        assert fake.configs[0].redirect is None  # before the engine listens
        assert daemon.engine is not None and daemon.engine.tcp is not None
        redirect = first.redirect
        assert redirect is not None and redirect.table == "tunneler_tunneler0"
        assert redirect.target == (str(daemon.pool.tun_ip), daemon.engine.tcp.listen_port)
        assert redirect.prefixes == (str(VIPS),)
        ours = {str(daemon.pool.tun_ip), str(daemon.engine.tcp.nat_ip), str(daemon.pool.dns_ip)}
        assert ours | {"127.0.0.1"} <= set(redirect.exclude)  # the controller and router too

        await asyncio.to_thread(apply_policy, net.directory, [
            _service("llm", "llm.private.test", port), _service("lab", "198.51.100.0/24", port)],
            "host1", "client1")
        added = await _until(fake, lambda c: c.redirect is not None
                             and len(c.redirect.prefixes) == 2)
        assert added.redirect is not None and added.redirect.prefixes[1] == "198.51.100.0/24"

        stop.set()
        assert await running == 0
        assert fake.configs[-1].redirect is None and fake.configs[-2].redirect is not None

    asyncio.run(scenario())
