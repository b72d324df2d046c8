"""The demo scenario's pure parts: its policy file is a valid apply file with the configs the
engine expects, stale-run detection, and the demo's upstream resolver on loopback (NXDOMAIN)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from dnslib import QTYPE, RCODE, DNSRecord

from tunneler.configs import parse_host, parse_intercept
from tunneler.controller.policyfile import parse_document
from tunneler.demo import netns
from tunneler.demo.scenario import LLM_SERVICE, Service, policy_yaml


def test_policy_is_a_valid_apply_file_with_valid_configs() -> None:
    bulk = Service("bulk", "bulk.private.test", 5201)
    spec = parse_document(yaml.safe_load(policy_yaml([LLM_SERVICE, bulk])))
    assert [i.name for i in spec.identities] == ["laptop", "llm-host"]
    assert {p.type for p in spec.policies} == {"Dial", "Bind"}
    for service in spec.services:
        intercept = parse_intercept(service.configs["intercept.v1"])
        host = parse_host(service.configs["host.v1"])
        assert service.encryption_required
        assert service.name in ("llm", "bulk")
        assert intercept.addresses and host is not None


def test_remove_stale_only_touches_runs_whose_process_is_gone(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{netns.WORKDIR_PREFIX}{dead.pid}-abc"
    alive = tmp_path / f"{netns.WORKDIR_PREFIX}{Path('/proc/self').resolve().name}-abc"
    unrelated = tmp_path / "tunneler-demo-notapid"
    for path in (stale, alive, unrelated):
        path.mkdir()
    removed = netns.remove_stale(tmp_path)
    assert str(stale) in removed and not stale.exists()
    assert alive.exists() and unrelated.exists()


def test_run_names_carry_the_pid_and_never_repeat() -> None:
    first, second = netns.run_name("app", 1234), netns.run_name("app", 1234)
    assert first.startswith("tnl-1234-") and first.endswith("-app")
    assert first != second
    assert first.split("-")[1] == "1234"  # what remove_stale reads


@pytest.fixture
def upstream() -> Iterator[tuple[int, subprocess.Popen[str]]]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    proc = subprocess.Popen([sys.executable, "-m", "tunneler.demo.clients", "upstream-dns",
                             "--bind", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield port, proc
    proc.kill()
    proc.wait()


def test_upstream_dns_knows_no_name(upstream: tuple[int, subprocess.Popen[str]]) -> None:
    port, proc = upstream
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(b"\x00garbage", ("127.0.0.1", port))  # ignored, the server lives on
        query = DNSRecord.question("llm.private.test", "A")
        sock.sendto(query.pack(), ("127.0.0.1", port))
        reply = DNSRecord.parse(sock.recv(4096))
    assert reply.header.id == query.header.id and reply.header.rcode == RCODE.NXDOMAIN
    assert reply.q.qtype == QTYPE.A and not reply.rr
    time.sleep(0.05)
    assert proc.poll() is None
