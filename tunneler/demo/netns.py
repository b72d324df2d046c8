"""Throwaway network namespaces for the demo, the privileged tests and the benchmarks.

A `Netns` is ``ip netns add NAME`` with loopback up and its own
``/etc/netns/NAME/{resolv.conf,hosts}`` (which ``ip netns exec`` bind-mounts over /etc, so
programs inside resolve names the way the caller says). It runs argv lists inside
(``run``/``popen`` through ``ip netns exec``, ``ip``/``ip_json`` through ``ip -n``), moves the
calling thread in with ``entered()`` (a TUN opened or a socket created there belongs to it),
filters inbound connections with nftables, and ``delete()`` kills every process inside and
removes the namespace and its /etc/netns directory. ``veth`` joins two namespaces.

Names are ``tnl-<pid>-<n>-<role>`` and links ``tnl<pid>x<n>a|b``: several runs (the demo, test
processes, a benchmark) and several users in one process never collide, and `remove_stale`
deletes what a killed run left (its pid is gone). Nothing uses a shell.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from tunneler.errors import NetnsError

PREFIX = "tnl"
NETNS_RUN = Path("/run/netns")
NETNS_ETC = Path("/etc/netns")
WORKDIR_PREFIX = "tunneler-demo-"
CLONE_NEWNET = 0x40000000
DEFAULT_RESOLV = "nameserver 198.18.0.53\n"
DEFAULT_HOSTS = "127.0.0.1 localhost\n::1 localhost\n"
NFT_TABLE = "tunneler_netns"
DROP_INBOUND = f"""\
table inet {NFT_TABLE} {{
    chain input {{
        type filter hook input priority 0; policy drop;
        iif "lo" accept
        ct state established,related accept
    }}
}}
"""
_counter = itertools.count()


def run_checked(argv: Sequence[str], *, input_text: str | None = None,
          timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run `argv` and raise `NetnsError` with its stderr when it fails."""
    result = subprocess.run(list(argv), input=input_text, capture_output=True, text=True,
                            timeout=timeout, check=False)
    if result.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({result.returncode}): "
                         f"{result.stderr.strip()}")
    return result


def run_name(role: str, pid: int | None = None) -> str:
    """A fresh namespace name for `role` in the run of process `pid` (default: this one)."""
    return f"{PREFIX}-{pid or os.getpid()}-{next(_counter)}-{role}"


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def pids_in(name: str) -> list[int]:
    """Every process living in namespace `name` (ours or not)."""
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                         check=False).stdout
    return [int(pid) for pid in out.split()]


def _remove(name: str) -> None:
    """Kill what runs inside `name`, delete the namespace and its /etc/netns directory."""
    for pid in pids_in(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    shutil.rmtree(NETNS_ETC / name, ignore_errors=True)


class Netns:
    """One throwaway namespace with its own resolv.conf and hosts file."""

    def __init__(self, role: str = "ns", *, resolv_conf: str = DEFAULT_RESOLV,
                 hosts: str = DEFAULT_HOSTS) -> None:
        self.role = role
        self.name = run_name(role)
        self._procs: list[subprocess.Popen[Any]] = []
        run_checked(["ip", "netns", "add", self.name])
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

    def run(self, cmd: Sequence[str], *, check: bool = True, timeout: float = 60,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside and wait; `NetnsError` when it fails and `check` is set."""
        if check:
            return run_checked(self.argv(cmd), input_text=input_text, timeout=timeout)
        return subprocess.run(self.argv(cmd), input=input_text, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def popen(self, cmd: Sequence[str], *, stdout: IO[Any] | int | None = None,
              stderr: IO[Any] | int | None = None, cwd: Path | None = None,
              env: Mapping[str, str] | None = None,
              text: bool = False) -> subprocess.Popen[Any]:
        """Start `cmd` inside (stdin from /dev/null); it is killed by `delete` at the latest."""
        proc = subprocess.Popen(self.argv(cmd), stdout=stdout, stderr=stderr,
                                stdin=subprocess.DEVNULL, cwd=cwd, env=env, text=text)
        self._procs.append(proc)
        return proc

    def ip(self, *args: str) -> str:
        """``ip -n NAME ARGS...``; returns stdout."""
        return run_checked(["ip", "-n", self.name, *args]).stdout

    def ip_json(self, *args: str) -> Any:
        """``ip -j -n NAME ARGS...`` parsed (an empty list when ip prints nothing)."""
        out = run_checked(["ip", "-j", "-n", self.name, *args]).stdout
        return json.loads(out) if out.strip() else []

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Move the calling thread into the namespace, and back afterwards."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(NETNS_RUN / self.name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(target)
            os.close(home)

    def sysctl(self, key: str, value: str) -> None:
        self.run(["sysctl", "-qw", f"{key}={value}"])

    def drop_inbound(self) -> None:
        """nftables: input policy drop; loopback and replies to our own connections pass."""
        if shutil.which("nft") is None:
            raise NetnsError("the nft binary is missing: `apt-get install nftables`")
        self.run(["nft", "-f", "-"], input_text=DROP_INBOUND)

    def allow_inbound(self, ifname: str) -> None:
        """Let new connections in through `ifname` (after `drop_inbound`)."""
        self.run(["nft", "insert", "rule", "inet", NFT_TABLE, "input", "iifname", ifname,
                  "accept"])

    def ruleset(self) -> str:
        return self.run(["nft", "list", "ruleset"]).stdout

    def delete(self) -> None:
        """Kill every process inside, delete the namespace and its /etc/netns directory."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        _remove(self.name)

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()


def veth(a: Netns, b: Netns, addr_a: str, addr_b: str, *,
         mtu: int | None = None) -> tuple[str, str]:
    """Join `a` and `b` with a veth pair, address and raise both ends; the two link names."""
    base = f"{PREFIX}{os.getpid()}x{next(_counter) % 1000}"  # <= 15 chars with the a/b
    name_a, name_b = f"{base}a", f"{base}b"
    run_checked(["ip", "link", "add", name_a, "netns", a.name, "type", "veth",
                 "peer", "name", name_b, "netns", b.name])
    for ns, name, addr in ((a, name_a, addr_a), (b, name_b, addr_b)):
        ns.ip("addr", "add", addr, "dev", name)
        if mtu is not None:
            ns.ip("link", "set", name, "mtu", str(mtu))
        ns.ip("link", "set", name, "up")
    return name_a, name_b


def ours(pid: int | None = None) -> list[str]:
    """Namespaces and /etc/netns directories of the run of process `pid` (default: this one)."""
    prefix = f"{PREFIX}-{pid or os.getpid()}-"
    found = {p.name for base in (NETNS_RUN, NETNS_ETC) if base.is_dir()
             for p in base.glob(f"{prefix}*")}
    return sorted(found)


def remove_stale(workdirs: Path | None = None) -> list[str]:
    """Delete what earlier runs whose process no longer exists left: namespaces (and the
    processes still inside), /etc/netns directories, and ``WORKDIRS/tunneler-demo-<pid>-*``."""
    removed = []
    for base in (NETNS_RUN, NETNS_ETC):
        for path in base.glob(f"{PREFIX}-*-*") if base.is_dir() else []:
            if _dead(path.name.split("-")[1]):
                _remove(path.name)
                removed.append(path.name)
    for path in workdirs.glob(f"{WORKDIR_PREFIX}*-*") if workdirs else []:
        if _dead(path.name.removeprefix(WORKDIR_PREFIX).split("-")[0]):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return sorted(set(removed))


def _dead(pid: str) -> bool:
    return pid.isdigit() and not Path(f"/proc/{pid}").exists()
