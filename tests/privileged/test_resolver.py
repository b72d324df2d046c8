"""resolv.conf rewrite and restore through the bind mount `ip netns exec` puts on /etc."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.netns import NetnsPool

ROOT = Path(__file__).resolve().parents[2]
ORIGINAL = (b"# netns original\nsearch corp.example\n"
            b"nameserver 198.18.0.53\nnameserver 198.18.0.54\n")

CHILD = """
import os
import sys
from pathlib import Path
from tunneler.dns.system import Method, SystemResolver, parse_nameservers, read_upstreams
path = Path("/etc/resolv.conf")
try:
    os.rename(sys.argv[1], path)
except OSError as exc:
    print("rename:", exc.errno)
resolver = SystemResolver(Method.FILE, link="ttun0", dns_ip="100.64.0.2", resolv_conf=path)
resolver.apply()
print("inside:", ",".join(parse_nameservers(path.read_text())))
print("upstreams:", ",".join(read_upstreams(path, "100.64.0.2")))
sys.stdout.flush()
if sys.argv[2] == "restore":
    resolver.revert()
"""


def run_child(pool: NetnsPool, tmp_path: Path, mode: str) -> tuple[str, Path]:
    ns = pool.new()
    resolv = ns.etc_file("resolv.conf")
    resolv.write_bytes(ORIGINAL)
    scratch = tmp_path / "scratch.conf"
    scratch.write_text("nameserver 192.0.2.99\n")
    out = ns.run([sys.executable, "-c", CHILD, str(scratch), mode]).stdout
    return out, resolv


def test_rewrite_goes_through_the_bind_mount_and_restores_byte_identical(
        netns_pool: NetnsPool, tmp_path: Path) -> None:
    host_before = Path("/etc/resolv.conf").read_bytes()
    out, resolv = run_child(netns_pool, tmp_path, "restore")
    lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    assert lines["rename"] == "16"  # EBUSY: a bind-mounted file cannot be renamed over
    assert lines["inside"] == "100.64.0.2,198.18.0.53,198.18.0.54"
    assert lines["upstreams"] == "198.18.0.53,198.18.0.54"
    assert resolv.read_bytes() == ORIGINAL
    assert Path("/etc/resolv.conf").read_bytes() == host_before  # the host was never touched


def test_rewrite_is_visible_in_the_namespace_file_until_restored(
        netns_pool: NetnsPool, tmp_path: Path) -> None:
    out, resolv = run_child(netns_pool, tmp_path, "keep")
    assert "inside: 100.64.0.2," in out
    content = resolv.read_bytes()
    assert content.startswith(b"# tunneler:") and content.endswith(ORIGINAL)
