"""The namespace harness itself: veth links, the inbound-drop policy, and guaranteed cleanup."""

from __future__ import annotations

import socket
import subprocess
import sys

from tests.support.netns import NetnsPool
from tunneler.demo.netns import NETNS_ETC, NETNS_RUN, Netns, veth

CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
    print("connected")
except OSError as exc:
    print("failed", type(exc).__name__)
"""


def connect_from(ns: Netns, host: str, port: int) -> str:
    return ns.run([sys.executable, "-c", CONNECT, host, str(port)]).stdout.strip()


def listen(ns: Netns, port: int) -> subprocess.Popen[str]:
    code = ("import socket, sys\ns = socket.create_server(('0.0.0.0', int(sys.argv[1])))\n"
            "print('ready', flush=True)\nwhile True:\n    s.accept()[0].close()\n")
    proc: subprocess.Popen[str] = ns.popen([sys.executable, "-c", code, str(port)],
                                           stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_veth_and_inbound_drop(netns_pool: NetnsPool) -> None:
    client, private = netns_pool.new(), netns_pool.new()
    link_a, link_b = veth(client, private, "198.18.0.1/24", "198.18.0.2/24")
    assert client.ip_json("addr", "show", link_a)[0]["operstate"] in {"UP", "LOWERLAYERDOWN"}
    listen(private, 8000)
    listen(client, 9000)
    assert connect_from(client, "198.18.0.2", 8000) == "connected"
    private.drop_inbound()
    assert connect_from(client, "198.18.0.2", 8000).startswith("failed")
    assert connect_from(private, "127.0.0.1", 8000) == "connected"  # loopback stays open
    assert connect_from(private, "198.18.0.1", 9000) == "connected"  # outbound + replies
    assert link_b in {link["ifname"] for link in private.ip_json("link", "show")}


def test_pool_close_removes_namespaces_files_and_processes() -> None:
    pool = NetnsPool()
    ns = pool.new(resolv_conf="nameserver 198.18.0.99\n")
    assert ns.run(["cat", "/etc/resolv.conf"]).stdout == "nameserver 198.18.0.99\n"
    sleeper = ns.popen(["sleep", "60"])
    with ns.entered():
        stray = socket.socket()  # a socket created inside belongs to the namespace
    pool.close()
    stray.close()
    assert sleeper.poll() is not None
    assert not (NETNS_RUN / ns.name).exists()
    assert not (NETNS_ETC / ns.name).exists()
