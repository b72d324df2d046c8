"""Least privilege: `tunneler run` as an unprivileged user holding only CAP_NET_ADMIN, and
`tunneler run-host` as an unprivileged user with no capability at all.

This is how the systemd units run them (`User=tunneler`, `AmbientCapabilities=CAP_NET_ADMIN`
with the same bounding set; the host unit with none): the daemon opens the TUN, sets its
address and routes, serves DNS from the packet path and intercepts flows with nothing but
CAP_NET_ADMIN, and cleans up on SIGTERM; the host only makes outbound connections.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.privileged.run_support import LLM_SERVICE, TUNNELER, Deployment, links
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


def _nobody(capability: str) -> list[str]:
    """setpriv argv: become nobody keeping only `capability` ("none" for no capability)."""
    keep = "-all" if capability == "none" else f"-all,+{capability}"
    assert SETPRIV is not None
    return [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            f"--inh-caps={keep}", f"--ambient-caps={keep}", f"--bounding-set={keep}", "--"]


def _as_nobody(identity: Path, directory: Path) -> Path:
    """A copy of an identity file that only nobody can read (0600)."""
    copy = directory / identity.name
    shutil.copy(identity, copy)
    os.chown(copy, NOBODY, NOBODY)
    os.chmod(copy, 0o600)
    return copy


def _status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def _nobody_can_run_tunneler() -> bool:
    """The checkout (and its .venv) must be readable by nobody: a clone under a 0700 folder
    is not, and then this test cannot run as another user."""
    if SETPRIV is None:
        return False
    probe = subprocess.run([*_nobody("none"), sys.executable, "-c", "import tunneler"],
                           capture_output=True, cwd="/", check=False, timeout=60)
    return probe.returncode == 0


@pytest.mark.skipif(SETPRIV is None, reason="setpriv (util-linux) is not installed")
@pytest.mark.usefixtures("tun_node_for_all")
def test_run_with_only_cap_net_admin_and_run_host_with_none(netns_pool: NetnsPool, tmp_path: Path,
                                               private_dir: Path) -> None:
    if not _nobody_can_run_tunneler():
        pytest.skip("user nobody cannot read this checkout (a parent folder is not "
                    "world-searchable), so the daemon cannot be started as nobody")
    ns = netns_pool.new(resolv_conf="nameserver 127.0.0.1\n")
    deploy = Deployment(tmp_path)
    try:
        deploy.network(ns, "localhost", "127.0.0.1", [LLM_SERVICE])
        deploy.start(ns, "llm", [*TUNNELER, "llm-stub", "--listen", "127.0.0.1", "--port", "8000"])
        host = _as_nobody(deploy.enroll(ns, "host1"), private_dir)
        deploy.start(ns, "host", [*_nobody("none"), sys.executable, "-m", "tunneler", "run-host",
                                  "--identity", str(host)])
        deploy.wait_log("host", "host.service_bound", timeout=40)
        assert int(_status_field(deploy.procs["host"].pid, "CapEff"), 16) == 0
        identity = _as_nobody(deploy.enroll(ns, "client1"), private_dir)
        deploy.start(ns, "client", [
            *_nobody("net_admin"), sys.executable, "-m", "tunneler", "run", "--identity",
            str(identity), "--runtime-dir", str(private_dir / "run"), "--no-dns-config"])
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
