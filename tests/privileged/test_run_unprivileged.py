"""Least privilege: `tunneler run` as an unprivileged user holding only CAP_NET_ADMIN.

This is how the systemd unit runs it (`User=tunneler`, `AmbientCapabilities=CAP_NET_ADMIN`,
same bounding set): the daemon opens the TUN, sets its address and routes, serves DNS from the
packet path and intercepts flows with nothing but CAP_NET_ADMIN, and cleans up on SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.privileged.run_support import Deployment, links
from tests.support.netns import NetnsPool

NOBODY = 65534
CAP_NET_ADMIN = 1 << 12
SETPRIV = shutil.which("setpriv")


@pytest.fixture(name="private_dir")
def _private_dir() -> Iterator[Path]:
    """A directory only `nobody` can use (pytest's tmp_path is not reachable for it)."""
    path = Path(tempfile.mkdtemp(prefix="tunneler-nobody-"))
    os.chown(path, NOBODY, NOBODY)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(name="tun_node_for_all")
def _tun_node_for_all() -> Iterator[None]:
    """Distributions ship /dev/net/tun as 0666 (the capability is what guards TUNSETIFF);
    some sandboxes make it 0600. Give it the usual mode for the test, then restore it."""
    node = Path("/dev/net/tun")
    mode = node.stat().st_mode & 0o7777
    node.chmod(0o666)
    try:
        yield
    finally:
        node.chmod(mode)


def _status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in /proc/{pid}/status")


@pytest.mark.skipif(SETPRIV is None, reason="setpriv (util-linux) is not installed")
@pytest.mark.usefixtures("tun_node_for_all")
def test_run_as_nobody_with_only_cap_net_admin(netns_pool: NetnsPool, tmp_path: Path,
                                               private_dir: Path) -> None:
    ns = netns_pool.new(resolv_conf="nameserver 127.0.0.1\n")
    deploy = Deployment(tmp_path)
    try:
        deploy.llm_behind_host(ns)
        identity = private_dir / "client1.json"
        shutil.copy(deploy.enroll(ns, "client1"), identity)
        os.chown(identity, NOBODY, NOBODY)
        os.chmod(identity, 0o600)
        assert SETPRIV is not None
        deploy.start(ns, "client", [
            SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            "--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin",
            "--bounding-set=-all,+net_admin", "--",
            sys.executable, "-m", "tunneler", "run", "--identity", str(identity),
            "--runtime-dir", str(private_dir / "run"), "--no-dns-config"])
        deploy.wait_log("client", "daemon.ready", timeout=40)
        pid = deploy.procs["client"].pid
        assert _status_field(pid, "Uid").split()[1] == str(NOBODY)  # effective uid
        assert int(_status_field(pid, "CapEff"), 16) == CAP_NET_ADMIN
        vip = ns.run(["dig", "+short", "@100.64.0.2", "llm.private.test"]).stdout.strip()
        assert vip.startswith("100.64.")
        result = ns.run(["curl", "-sS", "--max-time", "10", "--resolve",
                         f"llm.private.test:8000:{vip}", "http://llm.private.test:8000/v1/models"])
        assert '"object"' in result.stdout
        assert deploy.stop("client", signal.SIGTERM) == 0
        assert "tunneler0" not in links(ns)
    finally:
        deploy.close()
