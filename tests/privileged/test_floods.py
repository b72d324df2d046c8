"""Floods into `tunneler run` (issue 9, item 6): a SYN flood into the TUN, then a DNS flood.

SYN flood: 20,000 SYNs from distinct source ports to one service whose host never answers,
while another service is used.

The flooded service's endpoint is a listener with a zero backlog that never accepts, so every
dial the flood starts stays pending (run-host's connect hangs). The SYNs come from a raw
socket inside the namespace, as a misbehaving local program's would. The daemon must keep
that service's pending dials at its cap (two thirds of `--max-pending-dials`, so the flood
spares other services), refuse the rest with a counted reason, stay healthy, and serve the
other service throughout.

DNS flood: a sender blasting queries at our DNS server (100.64.0.2) as fast as it can (over
50,000/s offered) for a few seconds, while real lookups of an intercepted name go on: each
real lookup must be answered (a resolver retries a lost datagram, as glibc does), and the
daemon counts what it dropped instead of buffering it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.privileged.run_support import TUNNELER, Deployment, service, tcp_intercept
from tests.support.netns import NetnsPool

SYNS = 20_000
MAX_PENDING = 300
SERVICE_CAP = -(-2 * MAX_PENDING // 3)
URL = "http://llm.private.test:8000/v1/models"
DNS_FLOOD_SECONDS = 4.0
DNS_FLOOD = f"""
import socket, time
from dnslib import DNSRecord
query = DNSRecord.question("llm.private.test").pack()
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setblocking(False)
sent, end = 0, time.monotonic() + {DNS_FLOOD_SECONDS}
while time.monotonic() < end:
    for _ in range(256):
        try:
            sock.sendto(query, ("100.64.0.2", 53)); sent += 1
        except BlockingIOError:
            pass
print("sent", sent)
"""
LOOKUPS = """
import socket, sys, time
ok = failed = 0
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        socket.gethostbyname("llm.private.test"); ok += 1
    except OSError:
        failed += 1
print("lookups", ok, failed)
"""
BLACKHOLE = """
import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 9100)); s.listen(0)
print("ready", flush=True)
time.sleep(3600)
"""
FLOOD = f"""
import socket, struct, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from tunneler.packet.checksum import internet_checksum, pseudo_header_sum
vip = socket.gethostbyname("slow.private.test")
src, dst = struct.unpack("!I", socket.inet_aton("100.64.0.1"))[0], \\
    struct.unpack("!I", socket.inet_aton(vip))[0]
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for n in range({SYNS}):
    tcp = bytearray(struct.pack("!HHIIBBHHH", 10000 + n % 50000, 9100, n, 0, 5 << 4, 0x02,
                                64240, 0, 0))
    tcp[16:18] = struct.pack("!H", internet_checksum(tcp, pseudo_header_sum(src, dst, 6, 20)))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, n & 0xFFFF, 0, 64, 6, 0,
                     socket.inet_aton("100.64.0.1"), socket.inet_aton(vip))
    raw.sendto(ip + bytes(tcp), (vip, 0))
print("sent", {SYNS}, vip)
"""


def _status(deploy: Deployment, ns: object, sock: Path) -> dict[str, object]:
    result = deploy.tunneler(ns, "status", "--json", "--control-socket", str(sock), check=False)
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


def test_syn_and_dns_floods_are_held_at_their_caps_and_real_traffic_goes_on(
        netns_pool: NetnsPool, tmp_path: Path) -> None:
    ns = netns_pool.new(resolv_conf="nameserver 127.0.0.1\n")
    deploy = Deployment(tmp_path)
    try:
        deploy.network(ns, "localhost", "127.0.0.1", [
            service("llm", tcp_intercept(["llm.private.test"], 8000),
                    {"protocol": "tcp", "address": "127.0.0.1", "port": 8000}),
            service("slow", tcp_intercept(["slow.private.test"], 9100),
                    {"protocol": "tcp", "address": "127.0.0.1", "port": 9100})])
        client, host = deploy.enroll(ns, "client1"), deploy.enroll(ns, "host1")
        deploy.start(ns, "llm", [*TUNNELER, "llm-stub", "--listen", "127.0.0.1",
                                 "--port", "8000", "--token-delay", "0"])
        deploy.start(ns, "blackhole", [sys.executable, "-c", BLACKHOLE])
        deploy.wait_log("blackhole", "ready")
        deploy.run_host(ns, host, bound=2)
        deploy.run_client(ns, client, "--max-pending-dials", str(MAX_PENDING))
        assert '"list"' in ns.run(["curl", "-sS", "--max-time", "10", URL]).stdout

        sent = ns.run([sys.executable, "-c", FLOOD], timeout=240)
        assert f"sent {SYNS}" in sent.stdout
        for _ in range(5):   # the other service, during the flood's pending dials
            assert '"list"' in ns.run(["curl", "-sS", "--max-time", "10", URL]).stdout
        status = _status(deploy, ns, tmp_path / "run" / "tunneler.sock")
        assert deploy.procs["client"].poll() is None
        failures: dict[str, int] = status["counters"]["dial_failures"]  # type: ignore[index]
        refused = failures.get("service_pending_cap", 0)
        # every dial the engine started is one hanging connect of run-host to the blackhole
        hanging = ns.run(["ss", "-Htn", "state", "syn-sent", "dst", "127.0.0.1:9100"]).stdout
        pending = len(hanging.splitlines())
        print(f"SYN flood: {SYNS} SYNs sent, {refused} refused at the service cap, "
              f"{pending} dials pending (cap {SERVICE_CAP}), other service served 5/5")
        assert 0 < pending <= SERVICE_CAP
        # the kernel's TUN queue may drop some of a burst; what the daemon read was counted
        assert refused >= SYNS // 10
        assert status["healthy"] is True, status.get("problems")

        lookups = deploy.start(ns, "lookups", [sys.executable, "-c", LOOKUPS,
                                               str(DNS_FLOOD_SECONDS + 1)])
        flood = ns.run([sys.executable, "-c", DNS_FLOOD], timeout=60).stdout
        lookups.wait(timeout=60)
        ok, failed = map(int, deploy.log("lookups").split()[1:3])
        offered = int(flood.split()[1]) / DNS_FLOOD_SECONDS
        after = _status(deploy, ns, tmp_path / "run" / "tunneler.sock")
        dns = after["counters"]["dns"]  # type: ignore[index]
        print(f"DNS flood: {offered:,.0f} queries/s offered for {DNS_FLOOD_SECONDS:g} s; real "
              f"lookups {ok} answered, {failed} failed; daemon DNS counters {dns}")
        assert ok > 0 and failed == 0
        assert '"list"' in ns.run(["curl", "-sS", "--max-time", "10", URL]).stdout
        assert "Traceback" not in deploy.log("client")
    finally:
        deploy.close()
