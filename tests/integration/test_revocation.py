"""Revocation across processes (issue 9, item 3): the controller and the router are separate
processes on one network directory (tests.support.overlay.split_network).

- `network delete-identity`: every flow of that identity is closed by the router within 5 s,
  its certificate no longer logs in, and another client's flow carries on untouched.
- `network apply --prune` of a file without the Dial policy: the circuits it allowed close
  within 5 s; the host stays bound.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.overlay import (
    Overlay,
    apply_policy,
    echo_server,
    free_port,
    host_service,
    roundtrip,
    split_network,
    tunneler,
    wait_for_port,
)
from tunneler.client.context import ZitiContext
from tunneler.errors import ControllerError

REVOCATION_LIMIT = 5.0


@pytest.fixture(name="net")
def _net(tmp_path: Path) -> Iterator[tuple[Overlay, dict[str, int], int]]:
    with echo_server() as echo, split_network(tmp_path, [host_service("echo", echo)],
                                              clients=("client1", "client2")) as (overlay, ports):
        overlay.start("host", "run-host", "--identity", "host1.json")
        overlay.wait_for_log("host", "host.service_bound")
        yield overlay, ports, echo


def _proxy(overlay: Overlay, identity: str) -> int:
    port = free_port()
    overlay.start(f"proxy-{identity}", "proxy", "--identity", f"{identity}.json", f"echo={port}")
    wait_for_port(port)
    return port


def _closed_within(sock: socket.socket, limit: float) -> float:
    """Seconds until the proxy ends the flow (EOF or reset); AssertionError if it lives on."""
    start = time.monotonic()
    sock.settimeout(limit * 3)
    try:
        ended = sock.recv(64)
    except ConnectionResetError:
        ended = b""
    except TimeoutError:
        raise AssertionError(f"the flow was still open after {limit * 3:g} s") from None
    assert ended == b""
    return time.monotonic() - start


def _login_refused(identity: Path) -> bool:
    async def attempt() -> bool:
        ctx = ZitiContext(identity)
        try:
            await ctx.start()
        except ControllerError:
            return True
        finally:
            await ctx.close()
        return False
    return asyncio.run(attempt())


def test_a_deleted_identity_loses_its_flows_and_its_login_and_nobody_else_notices(
        net: tuple[Overlay, dict[str, int], int], tmp_path: Path) -> None:
    overlay, _ports, _echo = net
    first, second = _proxy(overlay, "client1"), _proxy(overlay, "client2")
    revoked, bystander = roundtrip(first, b"client1"), roundtrip(second, b"client2")
    tunneler(tmp_path, "network", "delete-identity", str(tmp_path / "net"), "client1")
    closed = _closed_within(revoked, REVOCATION_LIMIT)   # from the committed deletion
    print(f"revocation: client1's flow closed {closed:.3f} s after delete-identity returned")
    assert closed <= REVOCATION_LIMIT
    bystander.sendall(b"still here")
    assert bystander.recv(64) == b"still here"
    bystander.close()
    revoked.close()
    assert _login_refused(tmp_path / "client1.json")
    assert not _login_refused(tmp_path / "client2.json")


def test_pruning_the_dial_policy_closes_the_circuits_it_allowed(
        net: tuple[Overlay, dict[str, int], int], tmp_path: Path) -> None:
    overlay, _ports, echo = net
    flow = roundtrip(_proxy(overlay, "client1"), b"allowed")
    apply_policy(tmp_path, [host_service("echo", echo)], "host1", "client1", dial=False,
                 prune=True)
    closed = _closed_within(flow, REVOCATION_LIMIT)   # from the committed change
    flow.close()
    print(f"policy removal: the circuit closed {closed:.3f} s after apply --prune returned")
    assert closed <= REVOCATION_LIMIT
    assert "host.service_unbound" not in overlay.log("host")
