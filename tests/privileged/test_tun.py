"""Real TUN devices inside a throwaway namespace: packets both ways, crash removal."""

from __future__ import annotations

import ipaddress
import select
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.support.netns import NetnsPool
from tunneler.demo.netns import Netns
from tunneler.errors import TunError
from tunneler.packet.build import build_udp4
from tunneler.packet.parse import PROTO_UDP, Parsed, parse
from tunneler.tun import routes
from tunneler.tun.device import MAX_FRAME, LinuxTun
from tunneler.tun.route_plan import desired_config

TUN_IP = int(ipaddress.IPv4Address("100.64.0.1"))
VIP = "100.64.0.9"


def link_names(ns: Netns) -> set[str]:
    return {link["ifname"] for link in ns.ip_json("link", "show")}


def wait_readable(tun: LinuxTun) -> None:
    assert select.select([tun], [], [], 2)[0], "the kernel wrote nothing into the TUN"


def read_waiting(tun: LinuxTun) -> list[bytes]:
    """Every packet the kernel has queued (the engine's ``TunPump`` reads the same way)."""
    buffer = bytearray(MAX_FRAME)
    packets: list[bytes] = []
    while (size := tun.read_into(buffer)) > 0:
        packets.append(bytes(buffer[:size]))
    return packets


def read_udp(tun: LinuxTun, port: int) -> tuple[Parsed, bytes]:
    """The first UDP packet to ``port`` (IPv6 router solicitations may come first)."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        wait_readable(tun)
        for packet in read_waiting(tun):
            parsed = parse(packet)
            if isinstance(parsed, Parsed) and parsed.proto == PROTO_UDP and parsed.dst_port == port:
                return parsed, packet
    raise AssertionError(f"no UDP packet to port {port} came out of the TUN")


def udp() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def up(tun: LinuxTun) -> None:
    routes.configure(desired_config(tun_name=tun.name, mtu=9000))


def test_open_configure_and_close_removes_the_device(netns_pool: NetnsPool) -> None:
    ns = netns_pool.new()
    with ns.entered():
        tun = LinuxTun("ttun0")
        assert tun.name == "ttun0"
        up(tun)
    info = ns.ip_json("-d", "link", "show", "ttun0")[0]
    assert info["linkinfo"]["info_kind"] == "tun"
    assert info["linkinfo"]["info_data"]["pi"] is False
    assert info["linkinfo"]["info_data"]["persist"] is False
    assert info["mtu"] == 9000
    tun.close()
    assert "ttun0" not in link_names(ns)


def test_kernel_packets_come_out_and_written_packets_go_in(netns_pool: NetnsPool) -> None:
    ns = netns_pool.new()
    with ns.entered(), LinuxTun("ttun0") as tun:
        up(tun)
        with udp() as sender, udp() as app:
            sender.sendto(b"to-the-vip", (VIP, 5300))
            parsed, packet = read_udp(tun, 5300)
            assert str(ipaddress.IPv4Address(parsed.dst)) == VIP
            assert parsed.src == TUN_IP
            assert packet[parsed.payload_offset:] == b"to-the-vip"

            app.bind(("100.64.0.1", 5301))
            reply = build_udp4(int(ipaddress.IPv4Address(VIP)), 53, TUN_IP, 5301, b"from-tun")
            assert tun.write(reply) is True
            app.settimeout(2)
            data, source = app.recvfrom(100)
            assert (data, source) == (b"from-tun", (VIP, 53))


def test_ping_to_a_vip_is_read_from_the_tun(netns_pool: NetnsPool) -> None:
    ns = netns_pool.new()
    with ns.entered(), LinuxTun("ttun0") as tun:
        up(tun)
        ping = ns.popen(["ping", "-c1", "-W1", VIP], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 3
        seen = None
        while seen is None and time.monotonic() < deadline:
            wait_readable(tun)
            for packet in read_waiting(tun):
                parsed = parse(packet)
                if isinstance(parsed, Parsed) and parsed.proto == 1:
                    seen = parsed
        ping.wait(timeout=5)
    assert seen is not None and str(ipaddress.IPv4Address(seen.dst)) == VIP


def test_a_busy_name_is_a_clear_error(netns_pool: NetnsPool) -> None:
    ns = netns_pool.new()
    with ns.entered(), LinuxTun("ttun0"), pytest.raises(TunError, match="in use"):
        LinuxTun("ttun0")


def test_missing_cap_net_admin_is_explained(netns_pool: NetnsPool) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is missing (apt-get install util-linux)")
    ns = netns_pool.new()
    code = ("from tunneler.errors import TunError\nfrom tunneler.tun.device import LinuxTun\n"
            "try:\n    LinuxTun('ttun0')\nexcept TunError as exc:\n    print(exc)\n")
    out = ns.run(["setpriv", "--bounding-set=-net_admin", "--", sys.executable, "-c", code]).stdout
    assert "run as root or grant CAP_NET_ADMIN" in out


HOLDER = """
import sys, time
from tunneler.tun.device import LinuxTun
tun = LinuxTun(sys.argv[1])
print("ready", flush=True)
sys.stdout.close()
time.sleep(60)
"""


def test_sigkill_of_the_owner_removes_the_device_and_its_routes(netns_pool: NetnsPool) -> None:
    ns = netns_pool.new()
    child = ns.popen([sys.executable, "-c", HOLDER, "ttkill0"], stdout=subprocess.PIPE,
                     text=True)
    assert child.stdout is not None
    assert any(line.strip() == "ready" for line in child.stdout)
    ns.ip("link", "set", "ttkill0", "up")
    ns.ip("route", "add", "198.51.100.7/32", "dev", "ttkill0")
    assert "ttkill0" in link_names(ns)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=5)
    deadline = time.monotonic() + 5
    while "ttkill0" in link_names(ns) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "ttkill0" not in link_names(ns)
    assert ns.ip_json("route", "show", "198.51.100.7") == []
