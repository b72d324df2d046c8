"""Our clients on OIDC sessions (issue 8): refreshes, a controller outage, several controllers.

`tunneler proxy` and `tunneler run-host` against `network serve` with 10-second access tokens:
a flow opened at the start keeps working across three token refreshes of each client (each
refresh is handed to the router with UpdateToken), and new flows keep working. Then the
network is stopped for 90 s and started again: without restarting either client, a new flow
succeeds within 10 s of the router accepting connections again. Last, an identity whose first
controller is unreachable works through the second.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.overlay import (
    Overlay,
    build_overlay,
    echo_server,
    free_port,
    host_service,
    wait_for_port,
)
from tunneler.client.context import ZitiContext

ACCESS_SECONDS = 10
OUTAGE_SECONDS = 90
RECOVERY_SECONDS = 10


@pytest.fixture(scope="module", name="echo_port")
def _echo_port() -> Iterator[int]:
    with echo_server() as port:
        yield port


@pytest.fixture(scope="module", name="overlay")
def _overlay(tmp_path_factory: pytest.TempPathFactory, echo_port: int) -> Iterator[Overlay]:
    overlay = build_overlay(tmp_path_factory.mktemp("oidc"), [host_service("echo", echo_port)],
                            init_args=("--access-token-lifetime", f"{ACCESS_SECONDS}s"))
    try:
        yield overlay
    finally:
        overlay.stop_all()


def _round_trip(sock: socket.socket, text: bytes) -> bytes:
    sock.sendall(text)
    answer = b""
    while len(answer) < len(text):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def _new_flow(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        return _round_trip(sock, b"new flow\n")


def _updates(overlay: Overlay, identity: str) -> int:
    return sum(1 for line in overlay.log("network").splitlines()
               if "router.token_updated" in line and f'"identity": "{identity}"' in line)


def test_clients_authenticate_with_oidc(overlay: Overlay) -> None:
    for name in ("host", "proxy"):
        assert '"method": "oidc"' in overlay.log(name)


def test_a_flow_lives_across_three_token_refreshes_of_each_client(overlay: Overlay) -> None:
    port = overlay.proxy_ports["echo"]
    start = {name: _updates(overlay, name) for name in ("client1", "host1")}
    deadline = time.monotonic() + 6 * ACCESS_SECONDS
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        rounds = 0
        while any(_updates(overlay, name) < start[name] + 3 for name in start):
            assert time.monotonic() < deadline, "fewer than three token refreshes"
            message = f"ping {rounds}\n".encode()
            assert _round_trip(sock, message) == message
            assert _new_flow(port) == b"new flow\n"
            rounds += 1
            time.sleep(0.5)
        assert _round_trip(sock, b"still here\n") == b"still here\n"
    network = overlay.log("network")
    assert "router.token_expired" not in network
    assert "router.token_update_refused" not in network


def test_clients_recover_from_a_network_outage_without_a_restart(overlay: Overlay) -> None:
    port = overlay.proxy_ports["echo"]
    assert _new_flow(port) == b"new flow\n"
    clients = {name: overlay.processes[name].pid for name in ("host", "proxy")}
    router_port = json.loads((overlay.directory / "net" / "network.json").read_text())[
        "router_port"]
    overlay.stop("network", signal.SIGTERM)
    time.sleep(OUTAGE_SECONDS)
    overlay.start("network", *overlay.commands["network"])
    wait_for_port(router_port)
    back = time.monotonic()
    while True:
        try:
            if _new_flow(port) == b"new flow\n":
                break
        except OSError:
            pass
        assert time.monotonic() - back < RECOVERY_SECONDS, "no new flow within 10 s of return"
        time.sleep(0.2)
    print(f"new flow {time.monotonic() - back:.1f} s after the router accepted again")
    assert {name: overlay.processes[name].pid for name in clients} == clients  # no restart


def test_an_identity_whose_first_controller_is_unreachable_works_through_the_second(
        overlay: Overlay, tmp_path: Path) -> None:
    original = json.loads((overlay.directory / "client1.json").read_text())
    dead = f"https://127.0.0.1:{free_port()}"
    both = {**original, "ztAPI": dead, "ztAPIs": [dead, original["ztAPI"]]}
    path = tmp_path / "two-controllers.json"
    path.write_text(json.dumps(both))
    path.chmod(0o600)

    async def scenario() -> tuple[str, str, list[str]]:
        ctx = ZitiContext(path)
        await ctx.start()
        try:
            return ctx.ctrl.controllers[0], ctx.ctrl.auth_method, sorted(ctx.services)
        finally:
            await ctx.close()

    assert asyncio.run(scenario()) == (original["ztAPI"], "oidc", ["echo"])
