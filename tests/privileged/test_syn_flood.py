"""A SYN flood into the TUN (issue 9, item 6): 20,000 SYNs from distinct source ports to one
service whose host never answers, while another service is used.

The flooded service's endpoint is a listener with a zero backlog that never accepts, so every
dial the flood starts stays pending (run-host's connect hangs). The SYNs come from a raw
socket inside the namespace, as a misbehaving local program's would. The daemon must keep
that service's pending dials at its cap (two thirds of `--max-pending-dials`, so the flood
spares other services), refuse the rest with a counted reason, stay healthy, and serve the
other service throughout.
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


def test_a_syn_flood_is_held_at_the_service_cap_and_the_other_service_works(
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
        assert "Traceback" not in deploy.log("client")
    finally:
        deploy.close()
