"""Ops runtime: /healthz, /ready, /metrics over real HTTP; sd_notify over a real datagram socket."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from ops_support import SampleView, llm_rows
from prometheus_client.parser import text_string_to_metric_families

from tunneler.errors import ConfigError
from tunneler.ops import control, runtime
from tunneler.ops.metrics import parse_listen
from tunneler.ops.options import OpsConfig, add_arguments
from tunneler.ops.sdnotify import Notifier, watchdog_interval


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9100", ("127.0.0.1", 9100)), ("[::1]:80", ("::1", 80)),
])
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["localhost:9100", "127.0.0.1", "127.0.0.1:0",
                                  "127.0.0.1:70000", "127.0.0.1:http"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="--metrics-listen"):
        parse_listen(text)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None), ({"WATCHDOG_USEC": "0"}, None), ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),
    ({"WATCHDOG_USEC": "junk"}, None),
])
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    try:
        yield sock
    finally:
        sock.close()


def test_notifier_sends_datagrams(notify_socket: socket.socket) -> None:
    notifier = Notifier(notify_socket.getsockname())
    assert notifier.ready("serving 2 services")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=serving 2 services"
    assert notifier.status("line\nbreak")
    assert notify_socket.recv(4096) == b"STATUS=line break"
    assert notifier.watchdog() and notify_socket.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping() and notify_socket.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
    notifier.close()


def test_notifier_outside_systemd_and_unreachable_socket(tmp_path: Path) -> None:
    assert not Notifier("").enabled and Notifier("").ready() is False
    assert Notifier(str(tmp_path / "nobody-listens")).watchdog() is False


def test_abstract_notify_address() -> None:
    name = f"tunneler-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier("@" + name).watchdog()
        assert sock.recv(100) == b"WATCHDOG=1"


def _drain(sock: socket.socket, into: list[bytes]) -> None:
    """Read datagrams until a STOPPING=1 one (or 5 s of silence)."""
    while not into or not into[-1].startswith(b"STOPPING=1"):
        try:
            into.append(sock.recv(4096))
        except TimeoutError:
            return


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


def test_http_endpoints_and_notify_follow_readiness(
        tmp_path: Path, notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    view = SampleView(router_up=False, rows=llm_rows())
    for _ in range(5):
        view.stats.flow_opened("llm")
    meter = view.stats.meter("llm")
    meter.bytes_up, meter.bytes_down = 100, 2000
    view.stats.dial_succeeded("llm", 0.03)
    view.stats.dial_failed("llm", TimeoutError())
    view.dns_counts["answered"] = 1
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = OpsConfig(tmp_path / "ctl.sock", None, f"127.0.0.1:{port}")
    notifier = Notifier(notify_socket.getsockname())
    received: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(notify_socket, received))
    reader.start()

    async def scenario() -> dict[str, tuple[int, str]]:
        results = {}
        async with runtime.serve(view, config, notifier) as ops, aiohttp.ClientSession() as http:
            results["healthz"] = await _get(http, f"{base}/healthz")
            results["not_ready"] = await _get(http, f"{base}/ready")
            await asyncio.sleep(0.3)
            assert not ops.is_ready
            view.router_up = True
            for _ in range(40):
                if ops.is_ready:
                    break
                await asyncio.sleep(0.05)
            results["ready"] = await _get(http, f"{base}/ready")
            results["metrics"] = await _get(http, f"{base}/metrics")
            results["missing"] = await _get(http, f"{base}/nope")
            status = await asyncio.to_thread(control.request, config.control_socket, "status")
            results["control"] = (200, str(status["healthy"]))
        return results

    try:
        results = asyncio.run(scenario())
    finally:
        reader.join()
    assert results["healthz"] == (200, "ok\n")
    assert results["not_ready"] == (503, "not ready\nno edge router connected\n")
    assert results["ready"] == (200, "ready\n")
    assert results["missing"][0] == 404
    assert results["control"] == (200, "True")
    assert b"WATCHDOG=1" in received
    assert b"STATUS=starting: no edge router connected" in received
    ready_at = received.index(b"READY=1\nSTATUS=ready")
    assert received[-1] == b"STOPPING=1\nSTATUS=stopping"
    assert all(not r.startswith(b"READY") for r in received[:ready_at])
    assert not (tmp_path / "ctl.sock").exists()
    check_metrics(results["metrics"][1])


def check_metrics(text: str) -> None:
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("tunneler_ready", ())] == 1
    assert samples[("tunneler_flows_total", ())] == 5
    assert samples[("tunneler_flows_active", ())] == 5
    assert samples[("tunneler_service_flows_total", (("service", "llm"),))] == 5
    assert samples[("tunneler_service_bytes_total",
                    (("direction", "down"), ("service", "llm")))] == 2000
    assert samples[("tunneler_dial_latency_seconds_count", ())] == 1
    assert samples[("tunneler_dial_latency_seconds_bucket", (("le", "0.05"),))] == 1
    assert samples[("tunneler_dial_latency_seconds_bucket", (("le", "0.025"),))] == 0
    assert samples[("tunneler_dial_failures_total", (("reason", "timeout"),))] == 1
    assert samples[("tunneler_dns_queries_total", (("outcome", "answered"),))] == 1
    assert samples[("tunneler_vip_pool_used", ())] == 2
    assert samples[("tunneler_router_connected",
                    (("identity", "laptop"), ("router", "router1")))] == 1
    assert samples[("tunneler_router_latency_seconds",
                    (("identity", "laptop"), ("router", "router1")))] == 0.00125


def test_busy_metrics_port_is_a_config_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = OpsConfig(None, None, f"127.0.0.1:{port}")

        async def scenario() -> None:
            async with runtime.serve(SampleView(), config, Notifier("")):
                pass

        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            asyncio.run(scenario())


def test_config_from_args() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--metrics-listen", "127.0.0.1:9100", "--control-group", "ops"])
    assert OpsConfig.from_args(args) == OpsConfig(None, "ops", "127.0.0.1:9100")   # run-host
    args.runtime_dir = "/run/tunneler"                                              # run
    assert OpsConfig.from_args(args).control_socket == control.DEFAULT_SOCKET
    args.runtime_dir = "/tmp/x"
    assert OpsConfig.from_args(args).control_socket == Path("/tmp/x/tunneler.sock")
    assert OpsConfig.from_args(parser.parse_args(["--control-socket", ""])).control_socket is None
    explicit = parser.parse_args(["--control-socket", "/run/h.sock"])
    assert OpsConfig.from_args(explicit).control_socket == Path("/run/h.sock")
