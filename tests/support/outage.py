"""A controller outage on a split network (tests/integration/test_failover.py, bench/outage.py).

run-host binds "echo" and "echo2" on the network of `overlay.split_network`; a proxy serves
both on local ports; both refresh every second, so they meet the dead controller constantly.
`keep_flowing` then drives, for a given time, one long-lived flow and a stream of new flows
alternating between the two services, and counts what worked.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.overlay import Overlay, free_port, roundtrip

SERVICES = ("echo", "echo2")
PAUSE = 0.5   # seconds between new flows


@dataclass(frozen=True)
class Clients:
    """The running run-host (with a control socket) and proxy, and the proxy's ports."""

    ports: dict[str, int]
    control: Path


@dataclass
class FlowCounts:
    """What `keep_flowing` saw."""

    new_ok: int = 0
    new_failed: int = 0
    long_lived_echoes: int = 0
    long_lived_lost: bool = False


def start_clients(overlay: Overlay) -> Clients:
    """run-host ("host") bound on router1, the proxy ("proxy") listening for both services."""
    clients = Clients({name: free_port() for name in SERVICES},
                      overlay.directory / "host.sock")
    overlay.start("host", "run-host", "--identity", "host1.json", "--refresh-interval", "1",
                  "--control-socket", str(clients.control))
    overlay.wait_for_log("host", "host.service_bound", count=2)   # router1; edge2 is down
    overlay.start("proxy", "proxy", "--identity", "client1.json", "--refresh-interval", "1",
                  *(f"{name}={port}" for name, port in clients.ports.items()))
    overlay.wait_for_log("proxy", "proxy.listening", count=2)
    return clients


def wait_for_caches(overlay: Overlay, timeout: float = 30.0) -> None:
    """Until run-host saved its Bind sessions and the proxy its Dial sessions."""
    for name, kind in (("host1", b'"Bind"'), ("client1", b'"Dial"')):
        cache = overlay.directory / f"{name}.json.cache"
        deadline = time.monotonic() + timeout
        while kind not in (cache.read_bytes() if cache.exists() else b""):
            assert time.monotonic() < deadline, f"{cache.name}: no {kind!r} session saved"
            time.sleep(0.1)
        assert cache.stat().st_mode & 0o777 == 0o600, f"{cache.name} is not 0600"


def restart_from_cache(overlay: Overlay, already_bound: int) -> None:
    """Restart run-host and the proxy (controller down): both serve from their caches."""
    overlay.restart("host")
    overlay.restart("proxy")
    overlay.wait_for_log("host", "host.service_bound", count=already_bound + 2)
    overlay.wait_for_log("proxy", "proxy.listening", count=4)
    for name in ("host", "proxy"):
        assert "context.serving_cached_services" in overlay.log(name), name


def keep_flowing(clients: Clients, long_lived: socket.socket | None,
                 seconds: float) -> FlowCounts:
    """For `seconds`: the long-lived flow echoes, and new flows alternate between services."""
    counts = FlowCounts()
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if long_lived is not None and not counts.long_lived_lost:
            try:
                long_lived.sendall(b"still")
                counts.long_lived_lost = long_lived.recv(64) != b"still"
                counts.long_lived_echoes += not counts.long_lived_lost
            except OSError:
                counts.long_lived_lost = True
        service = SERVICES[(counts.new_ok + counts.new_failed) % 2]
        try:
            roundtrip(clients.ports[service]).close()
            counts.new_ok += 1
        except (OSError, AssertionError):
            counts.new_failed += 1
        time.sleep(PAUSE)
    return counts


def host_identity_status(overlay: Overlay, clients: Clients) -> dict[str, Any]:
    """run-host's one identity as `tunneler status --json` shows it."""
    result = subprocess.run([sys.executable, "-m", "tunneler", "status", "--control-socket",
                             str(clients.control), "--json"], capture_output=True, text=True,
                            timeout=60, cwd=overlay.directory)
    assert result.returncode in (0, 1), result.stderr
    (identity,) = json.loads(result.stdout)["identities"]
    assert isinstance(identity, dict)
    return identity


def controller_back(overlay: Overlay, timeout: float = 30.0) -> None:
    """Start the controller again; both clients take up their API sessions again."""
    overlay.start("controller", *overlay.commands["controller"])
    for name in ("host", "proxy"):
        overlay.wait_for_log(name, "context.controller_back", timeout=timeout)
        (back,) = [json.loads(line) for line in overlay.log(name).splitlines()
                   if "context.controller_back" in line]
        assert back["same_api_session"] is True, back


def kill_controller(overlay: Overlay) -> None:
    """SIGKILL, as a crash would."""
    overlay.stop("controller", signal.SIGKILL)
