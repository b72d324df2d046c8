"""Operating `tunneler run` in a namespace: the CLI over the control socket, /ready, /metrics.

One namespace holds the network (controller + router), run-host, the LLM stub and the daemon.
The test drives the daemon only as an operator would: `tunneler intercepts` (table and
--json), `tunneler status` (exit codes healthy / unhealthy), `tunneler log-level`,
`tunneler refresh`, and curl against --metrics-listen (per-service flows and bytes, the dial
latency histogram); a held connection shows as an active flow of its service; the router goes
away (network stopped) and comes back (network restarted), and /ready and `status` follow.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.privileged.run_support import TUNNELER, Deployment
from tests.support.netns import NetnsPool
from tests.support.wait import eventually
from tunneler.demo.netns import Netns

METRICS = "127.0.0.1:9100"
FLOWS = 4


def http(ns: Netns, path: str) -> tuple[int, str]:
    """(HTTP status, body) of GET http://METRICS/path from inside `ns`."""
    result = ns.run(["curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}",
                     f"http://{METRICS}{path}"], check=False)
    body, _, code = result.stdout.rpartition("\n")
    return int(code or 0), body


def cli(deploy: Deployment, ns: Netns, sock: Path, *args: str) -> tuple[int, str]:
    result = deploy.tunneler(ns, *args, "--control-socket", str(sock), check=False)
    return result.returncode, result.stdout + result.stderr


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"{name}{labels} not in /metrics")


def intercept_entry(deploy: Deployment, ns: Netns, sock: Path) -> dict[str, object]:
    code, text = cli(deploy, ns, sock, "intercepts", "--json")
    assert code == 0, text
    (entry,) = json.loads(text)["intercepts"]
    assert isinstance(entry, dict)
    return entry


def check_service_counters(deploy: Deployment, ns: Netns, sock: Path) -> None:
    """After FLOWS curls: per-service flows, bytes both ways and FLOWS timed dials; a held
    connection is one active flow in `intercepts` (JSON and table) until it closes."""
    text = http(ns, "/metrics")[1]
    assert metric(text, "tunneler_service_flows_total", service="llm") == FLOWS
    assert metric(text, "tunneler_service_bytes_total", service="llm", direction="up") > 0
    assert metric(text, "tunneler_service_bytes_total", service="llm", direction="down") > 0
    assert metric(text, "tunneler_bytes_total", direction="down") > 0
    assert metric(text, "tunneler_dial_latency_seconds_count") == FLOWS
    assert metric(text, "tunneler_dial_latency_seconds_sum") > 0
    holder = ("import socket, time\n"
              "s = socket.create_connection(('llm.private.test', 8000), timeout=10)\n"
              "print('connected', flush=True)\n"
              "time.sleep(60)\n")
    deploy.start(ns, "holder", [sys.executable, "-c", holder])
    deploy.wait_log("holder", "connected")
    eventually(lambda: intercept_entry(deploy, ns, sock)["active_flows"] == 1, timeout=30)
    code, table = cli(deploy, ns, sock, "intercepts")
    assert code == 0 and table.splitlines()[1].split()[-2:] == ["1", "-"], table
    assert metric(http(ns, "/metrics")[1], "tunneler_service_flows_active", service="llm") == 1
    deploy.stop("holder", signal.SIGKILL)
    eventually(lambda: intercept_entry(deploy, ns, sock)["active_flows"] == 0, timeout=30)


def check_intercepts(deploy: Deployment, ns: Netns, sock: Path) -> None:
    code, table = cli(deploy, ns, sock, "intercepts")
    assert code == 0, table
    header, row = table.splitlines()
    assert header.split()[:4] == ["ADDRESS", "VIP", "SERVICE", "PORTS"]
    cells = row.split()
    assert cells[:1] + cells[2:5] == ["llm.private.test", "llm", "tcp:8000", "client1"]
    assert cells[1].startswith("100.64.0.") and cells[5] == "router1"
    assert max(len(line) for line in table.splitlines()) <= 80
    code, text = cli(deploy, ns, sock, "intercepts", "--json")
    assert code == 0, text
    (entry,) = json.loads(text)["intercepts"]
    assert entry["address"] == "llm.private.test" and entry["service"] == "llm"
    assert entry["vips"] == [cells[1]] and entry["ports"] == ["8000"]
    assert entry["identity"] == "client1" and entry["router"] == "router1"
    assert entry["router_latency_ms"] is not None and entry["last_error"] is None


def check_runtime_changes(deploy: Deployment, ns: Netns, sock: Path) -> None:
    code, out = cli(deploy, ns, sock, "log-level", "debug")
    assert (code, out.strip()) == (0, "log level: debug")
    deploy.wait_log("client", "control.log_level_changed")
    code, out = cli(deploy, ns, sock, "refresh")
    assert code == 0 and out.startswith("services refreshed: added 0"), out
    deploy.wait_log("client", "ops.services_refreshed")
    code, out = cli(deploy, ns, sock, "log-level", "info")
    assert code == 0, out


def check_router_loss_and_return(deploy: Deployment, ns: Netns, sock: Path) -> None:
    net = deploy.net
    assert deploy.stop("network") == 0
    eventually(lambda: http(ns, "/ready")[0] == 503, timeout=30)
    assert "no edge router connected" in http(ns, "/ready")[1]
    code, out = cli(deploy, ns, sock, "status")
    assert code == 1 and "problem: no edge router connected" in out, out
    assert http(ns, "/healthz") == (200, "ok\n")
    deploy.start(ns, "network", [*TUNNELER, "network", "serve", str(net),
                                 "--listen", "127.0.0.1"])
    eventually(lambda: http(ns, "/ready")[0] == 200, timeout=90)
    code, out = cli(deploy, ns, sock, "status")
    assert code == 0, out


def test_operate_the_daemon(netns_pool: NetnsPool, tmp_path: Path) -> None:
    ns = netns_pool.new(resolv_conf="nameserver 127.0.0.1\n")
    deploy = Deployment(tmp_path)
    sock = tmp_path / "control.sock"
    try:
        deploy.llm_behind_host(ns)
        deploy.run_client(ns, deploy.enroll(ns, "client1"), "--control-socket", str(sock),
                          "--metrics-listen", METRICS)
        assert oct(sock.stat().st_mode & 0o777) == "0o660"
        eventually(lambda: http(ns, "/ready")[0] == 200, timeout=30)
        code, out = cli(deploy, ns, sock, "status")
        assert code == 0 and ": healthy" in out.splitlines()[0], out
        status = json.loads(cli(deploy, ns, sock, "status", "--json")[1])
        assert status["healthy"] is True and status["mode"] == "intercept"
        assert status["tun"]["name"] == "tunneler0" and status["dns"]["applied"] is True

        for _ in range(FLOWS):
            ns.run(["curl", "-sS", "--max-time", "10", "http://llm.private.test:8000/v1/models"])
        check_intercepts(deploy, ns, sock)
        eventually(lambda: metric(http(ns, "/metrics")[1], "tunneler_flows_total") == FLOWS,
                   timeout=30)
        check_service_counters(deploy, ns, sock)
        text = http(ns, "/metrics")[1]
        assert metric(text, "tunneler_ready") == 1
        assert metric(text, "tunneler_vip_pool_used") >= 1

        check_runtime_changes(deploy, ns, sock)
        check_router_loss_and_return(deploy, ns, sock)
        assert deploy.stop("client", signal.SIGTERM) == 0
        assert not sock.exists()
        code, out = cli(deploy, ns, sock, "status")
        assert code == 2 and "does not exist" in out
    finally:
        deploy.close()
