"""Deploy the embedded network, run-host and `tunneler run` into test namespaces, as a user would.

`Deployment(tmp)` runs every tunneler command as ``python -m tunneler ...`` inside a namespace
(argv lists), logs long-running ones to ``tmp/<name>.log`` and stops them at ``close()``
(SIGTERM, then SIGKILL). ``policy(...)`` renders the YAML a user would `network apply`.
Helper servers (UDP echo, a tiny DNS stub) are small Python programs started the same way.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tunneler.demo.netns import Netns
from tunneler.demo.processes import Processes

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
TUNNELER = [PYTHON, "-m", "tunneler"]

UDP_ECHO = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, peer = sock.recvfrom(65535)
    sock.sendto(b"echo:" + data, peer)
"""

DNS_STUB = """
import socket, sys
from dnslib import A, QTYPE, RR, DNSRecord
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 53))
print("ready", flush=True)
while True:
    data, peer = sock.recvfrom(4096)
    try:
        request = DNSRecord.parse(data)
    except Exception:
        continue
    reply = request.reply()
    if request.q.qtype == QTYPE.A:
        reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(sys.argv[2]), ttl=30))
    sock.sendto(reply.pack(), peer)
"""


def service(name: str, intercept: dict[str, Any], host: dict[str, Any]) -> dict[str, Any]:
    """A policy-file service bound by #hosts and dialled by #clients."""
    return {"name": name, "roleAttributes": ["svc"], "encryptionRequired": True,
            "configs": {"intercept.v1": intercept, "host.v1": host}}


def tcp_intercept(addresses: Sequence[str], port: int) -> dict[str, Any]:
    return {"protocols": ["tcp"], "addresses": list(addresses),
            "portRanges": [{"low": port, "high": port}]}


LLM_SERVICE = service("llm", tcp_intercept(["llm.private.test"], 8000),
                      {"protocol": "tcp", "address": "127.0.0.1", "port": 8000})


def policy(services: Sequence[dict[str, Any]]) -> str:
    """The YAML of identities client1/host1, the services and Bind/Dial policies."""
    return yaml.safe_dump({
        "identities": [{"name": "host1", "roleAttributes": ["hosts"]},
                       {"name": "client1", "roleAttributes": ["clients"]}],
        "services": list(services),
        "servicePolicies": [
            {"name": "bind", "type": "Bind", "semantic": "AnyOf", "identityRoles": ["#hosts"],
             "serviceRoles": ["#svc"]},
            {"name": "dial", "type": "Dial", "semantic": "AnyOf", "identityRoles": ["#clients"],
             "serviceRoles": ["#svc"]},
        ],
    })


class Deployment(Processes):
    """Processes started in namespaces for one test; all stopped by `close()`."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.net = directory / "net"

    def tunneler(self, ns: Netns, *args: str, check: bool = True,
                 timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run one short tunneler command in `ns`."""
        result = ns.run([*TUNNELER, *args], check=False, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"tunneler {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result

    def close(self) -> None:
        self.stop_all()

    # -- the overlay ----------------------------------------------------------------------------
    def network(self, ns: Netns, hostname: str, listen: str,
                services: Sequence[dict[str, Any]]) -> None:
        """`network init/apply/serve` in `ns`, tokens for client1 and host1."""
        self.tunneler(ns, "network", "init", str(self.net), "--hostname", hostname,
                      "--controller-port", "1280", "--router-port", "3022")
        self.apply(ns, services)
        self.start(ns, "network", [*TUNNELER, "network", "serve", str(self.net),
                                   "--listen", listen])
        for identity in ("client1", "host1"):
            self.tunneler(ns, "network", "enroll-token", str(self.net), identity,
                          "-o", str(self.dir / f"{identity}.jwt"))
        self.wait_log("network", "network.serving", timeout=30)

    def apply(self, ns: Netns, services: Sequence[dict[str, Any]]) -> None:
        path = self.dir / "policy.yaml"
        path.write_text(policy(services))
        self.tunneler(ns, "network", "apply", str(self.net), str(path))

    def enroll(self, ns: Netns, identity: str) -> Path:
        """Enroll `identity` from inside `ns` (retrying while the controller starts)."""
        target = self.dir / f"{identity}.json"
        deadline = time.monotonic() + 30
        while True:
            result = self.tunneler(ns, "enroll", "--jwt", str(self.dir / f"{identity}.jwt"),
                                   "--identity", str(target), check=False)
            if result.returncode == 0:
                return target
            if time.monotonic() > deadline:
                raise AssertionError(f"enroll {identity} failed:\n{result.stderr[-3000:]}")
            time.sleep(0.3)

    def run_host(self, ns: Netns, identity: Path, bound: int) -> None:
        self.start(ns, "host", [*TUNNELER, "run-host", "--identity", str(identity),
                               "--refresh-interval", "1"])
        self.wait_log("host", "host.service_bound", count=bound)

    def llm_behind_host(self, ns: Netns, hostname: str = "localhost",
                        listen: str = "127.0.0.1") -> None:
        """The network in `ns` with `LLM_SERVICE` only, the LLM stub on 127.0.0.1:8000 and
        run-host (host1, enrolled in `ns`) serving it."""
        self.network(ns, hostname, listen, [LLM_SERVICE])
        self.start(ns, "llm", [*TUNNELER, "llm-stub", "--listen", "127.0.0.1", "--port", "8000",
                               "--token-delay", "0.01"])
        self.run_host(ns, self.enroll(ns, "host1"), bound=1)

    def run_client(self, ns: Netns, identity: Path, *extra: str) -> None:
        """`tunneler run` in `ns` with its journal under DIR/run; waits for daemon.ready."""
        self.start(ns, "client", [*TUNNELER, "run", "--identity", str(identity),
                                  "--runtime-dir", str(self.dir / "run"), *extra])
        self.wait_log("client", "daemon.ready", timeout=40)


def links(ns: Netns) -> list[str]:
    return [link["ifname"] for link in ns.ip_json("link", "show")]


def routes(ns: Netns) -> list[str]:
    return [json.dumps(route, sort_keys=True) for route in ns.ip_json("route", "show")]
