"""Routes and addresses through pyroute2 on a real TUN, and journal replay after a crash."""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from tests.support.netns import NetnsPool
from tunneler.demo.netns import Netns
from tunneler.dns.system import install_resolv_conf
from tunneler.errors import TunError
from tunneler.journal import Journal, JournalState, Step, load
from tunneler.tun import routes
from tunneler.tun.device import LinuxTun
from tunneler.tun.route_plan import desired_config
from tunneler.tun.routes import read_state

ROOT = Path(__file__).resolve().parents[2]
ORIGINAL_RESOLV = b"# test namespace\nnameserver 198.18.0.53\noptions edns0\n"


def static_routes(ns: Netns, dev: str) -> set[str]:
    found = ns.ip_json("route", "show", "dev", dev, "proto", "static")
    found += ns.ip_json("-6", "route", "show", "dev", dev, "proto", "static")
    return {route["dst"] for route in found}


def test_configure_sets_everything_and_is_idempotent(netns_pool: NetnsPool) -> None:
    ns = netns_pool.new()
    desired = desired_config(tun_name="ttun0", addresses=["100.64.0.1/10", "fd00:64::1/64"],
                             intercepts=["198.51.100.7", "192.0.2.0/24", "2001:db8:7::/48"],
                             excluded=["198.18.0.1"], txqueuelen=2000)
    with ns.entered(), LinuxTun("ttun0"):
        first = routes.configure(desired)
        assert not first.empty
        link = ns.ip_json("link", "show", "ttun0")[0]
        assert link["mtu"] == 65000 and link["txqlen"] == 2000 and "UP" in link["flags"]
        addrs = {(a["local"], a["prefixlen"]) for a in ns.ip_json("addr", "show", "ttun0")[0]
                 ["addr_info"] if a.get("scope") == "global"}
        assert addrs == {("100.64.0.1", 10), ("fd00:64::1", 64)}
        assert static_routes(ns, "ttun0") == {"198.51.100.7", "192.0.2.0/24", "2001:db8:7::/48"}
        # the VIP range is the kernel's subnet route of the TUN address, nothing we add
        kernel = ns.ip_json("route", "show", "100.64.0.0/10")[0]
        assert kernel["protocol"] == "kernel" and kernel["dev"] == "ttun0"

        assert routes.configure(desired).empty
        with IPRoute() as ipr:
            state = read_state(ipr, "ttun0")
        assert state is not None and set(state.routes) == {
            ipaddress.ip_network(n) for n in ("198.51.100.7/32", "192.0.2.0/24", "2001:db8:7::/48")}


def test_changed_intercepts_are_diffed(netns_pool: NetnsPool) -> None:
    ns = netns_pool.new()
    with ns.entered(), LinuxTun("ttun0"):
        routes.configure(desired_config(tun_name="ttun0", intercepts=["198.51.100.7",
                                                                       "192.0.2.0/24"]))
        result = routes.configure(desired_config(tun_name="ttun0", mtu=1500,
                                                 intercepts=["192.0.2.0/24", "203.0.113.5"]))
        assert result.set_mtu == 1500 and result.set_txqueuelen is None
        assert [str(r) for r in result.remove_routes] == ["198.51.100.7/32"]
        assert [str(r) for r in result.add_routes] == ["203.0.113.5/32"]
        assert static_routes(ns, "ttun0") == {"192.0.2.0/24", "203.0.113.5"}
        assert ns.ip_json("link", "show", "ttun0")[0]["mtu"] == 1500


def test_configure_without_the_link_is_a_clear_error(netns_pool: NetnsPool) -> None:
    ns = netns_pool.new()
    with ns.entered(), pytest.raises(TunError, match="does not exist"):
        routes.configure(desired_config(tun_name="ttun0"))


def cleanup_cli(ns: Netns, runtime: Path, resolv: Path) -> subprocess.CompletedProcess[str]:
    return ns.run([sys.executable, "-m", "tunneler", "cleanup", "--tun-name", "ttun0",
                   "--runtime-dir", str(runtime), "--resolv-conf", str(resolv)])


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_journal_replay_after_a_crash_removes_routes_link_and_resolver_entry(
        netns_pool: NetnsPool, tmp_path: Path) -> None:
    """The daemon died but its TUN outlived it (a leaked fd keeps it): replay must undo all."""
    ns = netns_pool.new()
    resolv = ns.etc_file("resolv.conf")
    resolv.write_bytes(ORIGINAL_RESOLV)
    runtime = tmp_path / "run"
    with ns.entered():
        journal = Journal.create(runtime / "journal.json")
        journal.record(Step.delete_link("ttun0"))
        leaked = LinuxTun("ttun0")
        try:
            routes.configure(desired_config(tun_name="ttun0", intercepts=["198.51.100.7"]),
                             journal)
            journal.record(Step.restore_resolv_conf(resolv))
            install_resolv_conf(resolv, "100.64.0.2")
            # the crash: the journal now names a dead owner
            state = journal.state
            journal.state = JournalState(dead_pid(), None, state.steps)
            journal.flush()
            assert static_routes(ns, "ttun0") == {"198.51.100.7"}
            cleanup_cli(ns, runtime, resolv)
            assert "ttun0" not in {link["ifname"] for link in ns.ip_json("link", "show")}
        finally:
            leaked.close()
    assert ns.ip_json("route", "show", "198.51.100.7") == []
    assert resolv.read_bytes() == ORIGINAL_RESOLV
    assert load(runtime / "journal.json") is None


DAEMON = """
import sys, time
from pathlib import Path
from tunneler.dns.system import Method, SystemResolver
from tunneler.tun import routes
from tunneler.tun.device import LinuxTun
from tunneler.journal import Journal, Step
from tunneler.tun.route_plan import desired_config
journal = Journal.create(Path(sys.argv[1]) / "journal.json")
journal.record(Step.delete_link("ttun0"))
tun = LinuxTun("ttun0")
routes.configure(desired_config(tun_name="ttun0", intercepts=["198.51.100.7"]), journal)
SystemResolver(Method.FILE, link="ttun0", dns_ip="100.64.0.2", resolv_conf=Path(sys.argv[2]),
               journal=journal).apply()
print("ready", flush=True)
sys.stdout.close()
time.sleep(60)
"""


def test_sigkilled_daemon_is_cleaned_up_by_the_cli(netns_pool: NetnsPool, tmp_path: Path) -> None:
    ns = netns_pool.new()
    resolv = ns.etc_file("resolv.conf")
    resolv.write_bytes(ORIGINAL_RESOLV)
    runtime = tmp_path / "run"
    child = ns.popen([sys.executable, "-c", DAEMON, str(runtime), "/etc/resolv.conf"],
                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert child.stdout is not None
    assert any(line.strip() == "ready" for line in child.stdout)
    assert resolv.read_bytes() != ORIGINAL_RESOLV  # written through the bind mount
    refused = ns.run([sys.executable, "-m", "tunneler", "cleanup", "--runtime-dir",
                      str(runtime), "--tun-name", "ttun0"], check=False)
    assert refused.returncode == 1 and "running process" in refused.stderr
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=5)
    # /etc/resolv.conf inside the namespace is the bind-mounted /etc/netns file
    result = ns.run([sys.executable, "-m", "tunneler", "cleanup", "--runtime-dir",
                     str(runtime), "--tun-name", "ttun0", "--resolv-conf", "/etc/resolv.conf"])
    assert "journal.recovery_finished" in result.stderr + result.stdout
    assert resolv.read_bytes() == ORIGINAL_RESOLV
    assert not (runtime / "journal.json").exists()
    assert ns.ip_json("route", "show", "198.51.100.7") == []
