"""The Done-when of issue 3: client / edge / private namespaces, `tunneler run` in the client.

The private namespace accepts no inbound connection (nft), runs run-host in front of the LLM
stub and a UDP echo; the edge runs `network serve` and a DNS stub (the upstream for other
names) and does not forward; the client runs `tunneler run` with the resolv.conf a user has.
Unmodified programs (curl, getent, Python sockets) in the client namespace use the services by
name. Then the policy changes live, and SIGTERM and SIGKILL + `tunneler cleanup` leave nothing.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from tests.privileged.run_support import (
    DNS_STUB,
    PYTHON,
    UDP_ECHO,
    Deployment,
    links,
    service,
    tcp_intercept,
)
from tests.support.netns import NetnsPool
from tests.support.wait import eventually
from tunneler.demo.netns import Netns, veth

CLIENT_RESOLV = b"# the user's resolver\nnameserver 198.18.0.2\n"
UPSTREAM_ANSWER = "192.0.2.77"
LLM = {"protocol": "tcp", "address": "127.0.0.1", "port": 8000}

SSE_CLIENT = """
import json, sys, time, urllib.request
body = json.dumps({"model": "tunneler-demo", "stream": True,
                   "messages": [{"role": "user", "content": "one two three four five"}]})
request = urllib.request.Request(sys.argv[1], data=body.encode(),
                                 headers={"Content-Type": "application/json"})
start = time.monotonic()
times = []
with urllib.request.urlopen(request, timeout=20) as response:
    for line in response:
        if line.startswith(b"data:"):
            times.append(time.monotonic() - start)
print(json.dumps(times))
"""

UDP_CLIENT = """
import socket, sys
address = socket.getaddrinfo(sys.argv[1], int(sys.argv[2]), socket.AF_INET)[0][4]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(5)
for n in range(3):
    sock.sendto(b"ping%d" % n, address)
    print(sock.recvfrom(100)[0].decode())
"""

SERVICES = [
    service("llm", tcp_intercept(["llm.private.test"], 8000), LLM),
    service("wild", tcp_intercept(["*.apps.test"], 8000), LLM),
    service("echo", {"protocols": ["udp"], "addresses": ["echo.private.test"],
                     "portRanges": [{"low": 9999, "high": 9999}]},
            {"protocol": "udp", "address": "127.0.0.1", "port": 9999}),
]
EXTRA = service("extra", tcp_intercept(["extra.private.test"], 8000), LLM)


def curl(ns: Netns, url: str) -> tuple[int, str]:
    result = ns.run(["curl", "-sS", "--max-time", "5", url], check=False)
    return result.returncode, result.stdout + result.stderr


def resolves(ns: Netns, name: str) -> str | None:
    result = ns.run(["getent", "ahostsv4", name], check=False)
    return result.stdout.split()[0] if result.returncode == 0 and result.stdout else None


def topology(pool: NetnsPool, deploy: Deployment) -> tuple[Netns, Netns, Netns]:
    client = pool.new(resolv_conf=CLIENT_RESOLV.decode(),
                      hosts="127.0.0.1 localhost\n198.18.0.2 edge.test\n")
    edge = pool.new(hosts="127.0.0.1 localhost\n198.18.0.2 edge.test\n")
    private = pool.new(hosts="127.0.0.1 localhost\n198.18.1.1 edge.test\n")
    veth(client, edge, "198.18.0.1/24", "198.18.0.2/24")
    veth(edge, private, "198.18.1.1/24", "198.18.1.2/24")
    private.drop_inbound()
    deploy.start(edge, "dns", [PYTHON, "-c", DNS_STUB, "198.18.0.2", UPSTREAM_ANSWER])
    deploy.network(edge, "edge.test", "0.0.0.0", SERVICES)
    deploy.start(private, "llm", [PYTHON, "-m", "tunneler", "llm-stub", "--listen", "127.0.0.1",
                                  "--port", "8000", "--token-delay", "0.2"])
    deploy.start(private, "udp", [PYTHON, "-c", UDP_ECHO, "127.0.0.1", "9999"])
    deploy.run_host(private, deploy.enroll(private, "host1"), bound=3)
    return client, edge, private


def check_services(client: Netns) -> None:
    code, out = curl(client, "http://llm.private.test:8000/v1/models")
    assert code == 0 and "tunneler-demo" in out, out
    vip = resolves(client, "llm.private.test")
    assert vip is not None and vip.startswith("100.")
    times = json.loads(client.run([PYTHON, "-c", SSE_CLIENT,
                                   "http://llm.private.test:8000/v1/chat/completions"]).stdout)
    assert len(times) >= 10 and times[-1] > 2.0
    assert times[0] < times[-1] - 1.5  # the first events arrived long before the last
    echoed = client.run([PYTHON, "-c", UDP_CLIENT, "echo.private.test", "9999"]).stdout
    assert echoed.split() == ["echo:ping0", "echo:ping1", "echo:ping2"]
    assert resolves(client, "www.example.org") == UPSTREAM_ANSWER
    names = [resolves(client, f"{n}.apps.test") for n in ("alpha", "beta")]
    assert None not in names and names[0] != names[1]
    for name in ("alpha", "BETA"):
        code, out = curl(client, f"http://{name}.apps.test:8000/v1/models")
        assert code == 0 and "tunneler-demo" in out, out
    started = time.monotonic()
    code, _ = curl(client, f"http://{vip}:8001/")
    assert code == 7 and time.monotonic() - started < 1.0  # refused at once (RST)
    code, _ = curl(client, "http://198.18.1.2:8000/")
    assert code != 0  # no direct path from the client to the private network


def check_live_policy(deploy: Deployment, edge: Netns, client: Netns) -> None:
    assert resolves(client, "extra.private.test") == UPSTREAM_ANSWER  # not ours yet
    deploy.apply(edge, [*SERVICES, EXTRA])
    eventually(lambda: curl(client, "http://extra.private.test:8000/v1/models")[0] == 0)
    retired = [s if s["name"] != "wild" else {**s, "roleAttributes": []} for s in SERVICES]
    deploy.apply(edge, [*retired, EXTRA])
    eventually(lambda: resolves(client, "gamma.apps.test") is None)
    code, out = curl(client, "http://llm.private.test:8000/v1/models")
    assert code == 0, out  # unrelated services keep working


def assert_nothing_left(client: Netns) -> None:
    assert "tunneler0" not in links(client)
    assert not [r for r in client.ip_json("route", "show") if r.get("dev") == "tunneler0"]
    assert client.etc_file("resolv.conf").read_bytes() == CLIENT_RESOLV


def test_three_namespaces_end_to_end(netns_pool: NetnsPool, tmp_path: Path) -> None:
    deploy = Deployment(tmp_path)
    try:
        client, edge, _private = topology(netns_pool, deploy)
        identity = deploy.enroll(client, "client1")
        deploy.run_client(client, identity, "--refresh-interval", "1")
        assert client.etc_file("resolv.conf").read_bytes().startswith(b"# tunneler")
        check_services(client)
        check_live_policy(deploy, edge, client)
        assert deploy.stop("client", signal.SIGTERM) == 0
        assert_nothing_left(client)

        deploy.run_client(client, identity)
        deploy.stop("client", signal.SIGKILL)
        assert client.etc_file("resolv.conf").read_bytes() != CLIENT_RESOLV
        deploy.run_client(client, identity)  # the next start replays the dead run's journal
        assert "journal.recovery_finished" in deploy.log("client")
        assert curl(client, "http://llm.private.test:8000/v1/models")[0] == 0
        deploy.stop("client", signal.SIGKILL)
        deploy.tunneler(client, "cleanup", "--runtime-dir", str(tmp_path / "run"))
        assert_nothing_left(client)
    finally:
        deploy.close()
