"""Two edge routers in separate processes, one killed and restarted (issue 9, items 1 and 2).

`network init` + `network add-router edge2`; the controller runs alone (`serve
--controller-only`), each router in its own process (`serve-router`), all sharing the network
directory. run-host binds the echo service on every router; the proxy dials through the
fastest connected router and keeps a standby link to the other. Killing the router that
carries a flow resets that flow at once; new flows go through the other router; when the
router returns, run-host binds there again. The figures are printed and bounded.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.outage import (
    controller_back,
    host_identity_status,
    keep_flowing,
    kill_controller,
    restart_from_cache,
    start_clients,
    wait_for_caches,
)
from tests.support.overlay import (
    Overlay,
    echo_server,
    free_port,
    host_service,
    roundtrip,
    split_network,
    wait_for_port,
)

FLOW_RESET_LIMIT = 1.0
NEW_FLOW_LIMIT = 2.0
REBIND_LIMIT = 10.0
OUTAGE_SECONDS = 30.0


def _first_working_flow(port: int, limit: float) -> float:
    """Seconds until a new flow through the proxy echoes (tried again until `limit` x 5)."""
    start = time.monotonic()
    while True:
        try:
            roundtrip(port, timeout=limit).close()
            return time.monotonic() - start
        except OSError:
            assert time.monotonic() - start < 5 * limit, "no new flow got through"
            time.sleep(0.05)


@pytest.fixture(name="net")
def _net(tmp_path: Path) -> Iterator[tuple[Overlay, dict[str, int]]]:
    with echo_server() as echo, split_network(
            tmp_path, [host_service("echo", echo), host_service("echo2", echo)]) as net:
        yield net


def test_network_list_shows_both_routers(net: tuple[Overlay, dict[str, int]],
                                         tmp_path: Path) -> None:
    _overlay, ports = net
    listed = subprocess.run([sys.executable, "-m", "tunneler", "network", "list",
                             str(tmp_path / "net"), "routers", "--json"], capture_output=True,
                            text=True, timeout=60, check=True).stdout
    assert {row["name"]: row["url"] for row in json.loads(listed)} == {
        "router1": f"tls://localhost:{ports['router1']}",
        "edge2": f"tls://localhost:{ports['edge2']}"}


def test_a_killed_router_fails_over_and_is_bound_again_when_it_returns(
        net: tuple[Overlay, dict[str, int]]) -> None:
    overlay, ports = net
    proxy_port = free_port()
    overlay.start("host", "run-host", "--identity", "host1.json")
    overlay.wait_for_log("host", "host.service_bound", count=2)   # router1; edge2 is down
    overlay.start("proxy", "proxy", "--identity", "client1.json", f"echo={proxy_port}")
    wait_for_port(proxy_port)
    carried = roundtrip(proxy_port, b"on router1")   # only router1 has a terminator
    net_dir = str(overlay.programs.dir / "net")
    overlay.start("edge2", "network", "serve-router", net_dir, "edge2", "--listen", "127.0.0.1")
    wait_for_port(ports["edge2"])
    overlay.wait_for_log("host", "host.service_bound", count=4, timeout=REBIND_LIMIT + 5)
    assert f"localhost:{ports['edge2']}" in overlay.log("host").split("host.service_bound")[-2]
    # a new flow makes the proxy open its standby link to edge2
    roundtrip(proxy_port).close()
    overlay.wait_for_log("proxy", "link.connected", count=2, timeout=15)

    killed = time.monotonic()
    overlay.stop("router1", signal.SIGKILL)
    carried.settimeout(FLOW_RESET_LIMIT * 5)
    try:
        ended = carried.recv(64)
    except ConnectionResetError:
        ended = b""
    reset = time.monotonic() - killed
    carried.close()
    assert ended == b"", "the flow outlived its router"
    new_flow = _first_working_flow(proxy_port, NEW_FLOW_LIMIT)

    overlay.start("router1", *overlay.commands["router1"])
    returned = time.monotonic()
    overlay.wait_for_log("host", "host.service_bound", count=6, timeout=REBIND_LIMIT * 3)
    rebind = time.monotonic() - returned
    print(f"failover: flow reset {reset:.3f} s, new flow {new_flow:.3f} s, "
          f"re-bind {rebind:.3f} s")
    assert reset <= FLOW_RESET_LIMIT and new_flow <= NEW_FLOW_LIMIT and rebind <= REBIND_LIMIT
    roundtrip(proxy_port).close()


def test_flows_old_and_new_keep_working_while_the_controller_is_down(
        net: tuple[Overlay, dict[str, int]]) -> None:
    """Routers up, controller SIGKILLed: the open flow lives on, and new flows start, also to
    a service never dialled before (its Dial session was fetched ahead); the clients refresh
    every second meanwhile, so they meet the dead controller dozens of times.
    bench/outage.py runs this for 10 minutes."""
    overlay, _ports = net
    clients = start_clients(overlay)   # no connection to echo2 yet
    long_lived = roundtrip(clients.ports["echo"], b"before")
    kill_controller(overlay)
    counts = keep_flowing(clients, long_lived, OUTAGE_SECONDS)
    long_lived.close()
    print(f"controller outage: {OUTAGE_SECONDS:g} s, {counts}")
    assert counts.new_failed == 0 and not counts.long_lived_lost and counts.new_ok > 10
    assert "context.session_prefetch_failed" not in overlay.log("proxy")


def test_daemons_restarted_while_the_controller_is_down_serve_their_cached_services(
        net: tuple[Overlay, dict[str, int]]) -> None:
    """run-host and the proxy save their services, routers and sessions (0600); both are
    restarted while the controller is dead: run-host binds again from its cache and says so
    in `status`, the proxy dials both services (one never dialled before) from its cache;
    when the controller returns they take up the same API sessions."""
    overlay, _ports = net
    clients = start_clients(overlay)
    roundtrip(clients.ports["echo"]).close()
    wait_for_caches(overlay)
    kill_controller(overlay)
    restart_from_cache(overlay, already_bound=2)
    for port in (clients.ports["echo2"], clients.ports["echo"]):
        roundtrip(port).close()
    ident = host_identity_status(overlay, clients)
    assert not ident["controller_reachable"] and ident["services"] == 2
    assert ident["services_cached_at"] is not None
    controller_back(overlay)
    ident = host_identity_status(overlay, clients)
    assert ident["controller_reachable"] and ident["services_cached_at"] is None
    roundtrip(clients.ports["echo2"]).close()
