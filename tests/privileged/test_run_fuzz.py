"""Live injection (reliability.md PKT-3, scaled down): malformed packets and DNS queries into
the TUN of a running `tunneler run`; the daemon stays up, counts the drops, and flows work.

Packets are built with scapy's `fuzz()` (random field values, including lengths, offsets,
flags and options) and sent from inside the test's namespace through a raw socket to the
virtual-IP range, so they reach the TUN exactly as a misbehaving local program's would.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.privileged.run_support import TUNNELER, Deployment, service, tcp_intercept
from tests.support.netns import NetnsPool

PACKETS = 1500
INJECT = f"""
import random
from scapy.all import DNS, DNSQR, ICMP, IP, TCP, UDP, Raw, conf, fuzz, send
conf.verb = 0
rng = random.Random(7)
targets = ["100.64.0.2", "100.64.0.3", "100.64.0.4", "100.64.1.9", "100.127.255.254"]
packets = []
for i in range({PACKETS}):
    dst = rng.choice(targets)
    kind = i % 6
    if kind == 0:
        packets.append(fuzz(IP(dst=dst) / TCP(dport=8000)))
    elif kind == 1:
        packets.append(fuzz(IP(dst=dst) / UDP(dport=53)))
    elif kind == 2:
        packets.append(IP(dst="100.64.0.2") / UDP(dport=53) / Raw(rng.randbytes(rng.randrange(64))))
    elif kind == 3:
        packets.append(IP(dst="100.64.0.2") / UDP(dport=53) / fuzz(DNS(qd=DNSQR())))
    elif kind == 4:
        packets.append(fuzz(IP(dst=dst, proto=rng.randrange(256))))
    else:
        packets.append(IP(dst=dst, ihl=rng.randrange(6, 16), flags=rng.randrange(8),
                          frag=rng.randrange(64)) / Raw(rng.randbytes(rng.randrange(80))))
send(packets, inter=0)
print("sent", len(packets))
"""


def _status(deploy: Deployment, ns: object, socket: Path) -> dict[str, object]:
    result = deploy.tunneler(ns, "status", "--json", "--control-socket", str(socket),
                             check=False)
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


def test_malformed_packets_are_dropped_and_counted_while_flows_work(
        netns_pool: NetnsPool, tmp_path: Path) -> None:
    ns = netns_pool.new(resolv_conf="nameserver 127.0.0.1\n")
    deploy = Deployment(tmp_path)
    try:
        deploy.network(ns, "localhost", "127.0.0.1", [service(
            "llm", tcp_intercept(["llm.private.test"], 8000),
            {"protocol": "tcp", "address": "127.0.0.1", "port": 8000})])
        client, host = deploy.enroll(ns, "client1"), deploy.enroll(ns, "host1")
        deploy.start(ns, "llm", [*TUNNELER, "llm-stub", "--listen", "127.0.0.1",
                                 "--port", "8000", "--token-delay", "0"])
        deploy.run_host(ns, host, bound=1)
        deploy.run_client(ns, client)
        url = "http://llm.private.test:8000/v1/models"
        assert '"list"' in ns.run(["curl", "-sS", "--max-time", "10", url]).stdout
        before = _status(deploy, ns, tmp_path / "run" / "tunneler.sock")

        sent = ns.run([sys.executable, "-c", INJECT], timeout=240)
        assert f"sent {PACKETS}" in sent.stdout

        assert deploy.procs["client"].poll() is None, deploy.log("client")[-3000:]
        for _ in range(3):  # flows still work after the storm
            assert '"list"' in ns.run(["curl", "-sS", "--max-time", "10", url]).stdout
        after = _status(deploy, ns, tmp_path / "run" / "tunneler.sock")
        assert after["healthy"] is True, after.get("problems")
        dropped = after["counters"]["packets_dropped"]  # type: ignore[index]
        assert sum(dropped.values()) > sum(  # type: ignore[union-attr]
            before["counters"]["packets_dropped"].values())  # type: ignore[index]
        assert "Traceback" not in deploy.log("client")
    finally:
        deploy.close()
