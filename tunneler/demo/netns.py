"""Network namespaces for the demo scenario: create, run inside, filter, and remove every trace.

A `Netns` is ``ip netns add NAME`` plus ``/etc/netns/NAME/{resolv.conf,hosts}`` (which
``ip netns exec`` bind-mounts over /etc, so programs inside resolve names the way the scenario
says). Names are ``tnl-<pid>-<role>``: several runs (the demo, tests, a benchmark) never collide,
and `remove_stale` deletes what a killed run left (its pid is gone). Nothing uses a shell.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

PREFIX = "tnl"
NETNS_RUN = Path("/run/netns")
NETNS_ETC = Path("/etc/netns")
WORKDIR_PREFIX = "tunneler-demo-"
NFT_TABLE = "tunneler_demo"
DROP_INBOUND = f"""\
table inet {NFT_TABLE} {{
    chain input {{
        type filter hook input priority 0; policy drop;
        iif "lo" accept
        ct state established,related accept
    }}
}}
"""


class NetnsError(RuntimeError):
    """A namespace command failed; the message carries the command and its stderr."""


def check(argv: Sequence[str], *, input_text: str | None = None,
          timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run `argv` and raise `NetnsError` with its stderr when it fails."""
    result = subprocess.run(list(argv), input=input_text, capture_output=True, text=True,
                            timeout=timeout, check=False)
    if result.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({result.returncode}): "
                         f"{result.stderr.strip()}")
    return result


def run_name(role: str, pid: int | None = None) -> str:
    """The namespace name of `role` for the run of process `pid` (default: this one)."""
    return f"{PREFIX}-{pid or os.getpid()}-{role}"


class Netns:
    """One throwaway namespace with its own resolv.conf and hosts file."""

    def __init__(self, role: str, *, resolv_conf: str, hosts: str) -> None:
        self.role = role
        self.name = run_name(role)
        self._procs: list[subprocess.Popen[Any]] = []
        check(["ip", "netns", "add", self.name])
        try:
            self.etc_dir.mkdir(parents=True, exist_ok=True)
            self.etc_file("resolv.conf").write_text(resolv_conf)
            self.etc_file("hosts").write_text(hosts)
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise

    @property
    def etc_dir(self) -> Path:
        return NETNS_ETC / self.name

    def etc_file(self, name: str) -> Path:
        """The host path that programs inside see as /etc/NAME."""
        return self.etc_dir / name

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, cmd: Sequence[str], *, check_rc: bool = True, timeout: float = 60,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside and wait; `NetnsError` on failure when `check_rc`."""
        if check_rc:
            return check(self.argv(cmd), input_text=input_text, timeout=timeout)
        return subprocess.run(self.argv(cmd), input=input_text, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def popen(self, cmd: Sequence[str], *, stdout: IO[Any] | int | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """Start `cmd` inside (stderr joins stdout); it is killed by `delete` at the latest."""
        proc = subprocess.Popen(self.argv(cmd), stdout=stdout, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd)
        self._procs.append(proc)
        return proc

    def ip(self, *args: str) -> str:
        """``ip -n NAME ARGS...``; returns stdout."""
        return check(["ip", "-n", self.name, *args]).stdout

    def sysctl(self, key: str, value: str) -> None:
        self.run(["sysctl", "-qw", f"{key}={value}"])

    def drop_inbound(self) -> None:
        """nftables: input policy drop; loopback and replies to our own connections pass."""
        self.run(["nft", "-f", "-"], input_text=DROP_INBOUND)

    def allow_inbound(self, ifname: str) -> None:
        """Let new connections in through `ifname` (benchmark baselines only)."""
        self.run(["nft", "insert", "rule", "inet", NFT_TABLE, "input", "iifname", ifname,
                  "accept"])

    def ruleset(self) -> str:
        return self.run(["nft", "list", "ruleset"]).stdout

    def pids(self) -> list[int]:
        """Every process living in the namespace."""
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True,
                             text=True, check=False).stdout
        return [int(pid) for pid in out.split()]

    def delete(self) -> None:
        """Kill every process inside, delete the namespace and its /etc/netns directory."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        shutil.rmtree(self.etc_dir, ignore_errors=True)


def veth(a: Netns, b: Netns, addr_a: str, addr_b: str, tag: str) -> tuple[str, str]:
    """Join `a` and `b` with a veth pair; links are named ``tnl<pid><tag>a|b``."""
    name_a, name_b = f"{PREFIX}{os.getpid()}{tag}a", f"{PREFIX}{os.getpid()}{tag}b"
    check(["ip", "link", "add", name_a, "netns", a.name, "type", "veth",
           "peer", "name", name_b, "netns", b.name])
    for ns, name, addr in ((a, name_a, addr_a), (b, name_b, addr_b)):
        ns.ip("addr", "add", addr, "dev", name)
        ns.ip("link", "set", name, "up")
    return name_a, name_b


def ours(pid: int | None = None) -> list[str]:
    """Namespaces and /etc/netns directories of the run of process `pid` (default: this one)."""
    prefix = f"{PREFIX}-{pid or os.getpid()}-"
    found = {p.name for base in (NETNS_RUN, NETNS_ETC) if base.is_dir()
             for p in base.glob(f"{prefix}*")}
    return sorted(found)


def _kill_inside(name: str) -> None:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                         check=False).stdout
    for pid in out.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def remove_stale(workdirs: Path | None = None) -> list[str]:
    """Delete what earlier runs whose process no longer exists left: namespaces (and the
    processes still inside), /etc/netns directories, and ``WORKDIRS/tunneler-demo-<pid>-*``."""
    removed = []
    for base in (NETNS_RUN, NETNS_ETC):
        for path in base.glob(f"{PREFIX}-*-*") if base.is_dir() else []:
            if _dead(path.name.split("-")[1]):
                _kill_inside(path.name)
                subprocess.run(["ip", "netns", "del", path.name], capture_output=True,
                               check=False)
                shutil.rmtree(NETNS_ETC / path.name, ignore_errors=True)
                removed.append(path.name)
    for path in workdirs.glob(f"{WORKDIR_PREFIX}*-*") if workdirs else []:
        if _dead(path.name.removeprefix(WORKDIR_PREFIX).split("-")[0]):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return sorted(set(removed))


def _dead(pid: str) -> bool:
    return pid.isdigit() and not Path(f"/proc/{pid}").exists()
