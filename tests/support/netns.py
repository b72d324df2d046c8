"""Network-namespace harness for privileged tests (design.md §4, reliability.md §4.0).

- `Namespace`: ``ip netns add`` with a unique name (``tt-<pid>-<n>``), loopback up, its own
  ``/etc/netns/NAME/resolv.conf`` and ``hosts`` (``ip netns exec`` bind-mounts them over
  ``/etc``), ``run``/``popen`` of argv lists through ``ip netns exec``, ``ip(...)`` /
  ``ip_json(...)`` through ``ip -n``, and ``entered()`` to move the calling thread into it (so
  a TUN opened or a socket created there belongs to the namespace).
- ``veth(a, b, "198.18.0.1/24", "198.18.0.2/24")`` joins two namespaces.
- ``drop_inbound(ns)``: an nftables input policy drop with loopback and
  established/related traffic allowed (the "private network" namespace).
- `NetnsPool` and the ``netns_pool`` fixture: everything created through the pool is removed
  at the end of the test, also when it fails (processes killed, namespaces and /etc/netns
  directories deleted). ``cleanup_stale()`` removes what a killed test run left behind.

Nothing here uses a shell: every command is an argv list.
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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

PREFIX = "tt"
NETNS_RUN = Path("/run/netns")
NETNS_ETC = Path("/etc/netns")
CLONE_NEWNET = 0x40000000
DEFAULT_RESOLV = "nameserver 198.18.0.53\n"
DEFAULT_HOSTS = "127.0.0.1 localhost\n::1 localhost\n"
_counter = itertools.count()


class HarnessError(RuntimeError):
    """The test host lacks something the harness needs; the message says what to install."""


def _unique(kind: str) -> str:
    """``tt-<pid>-<n>`` for namespaces; ``tt<kind><n>-<pid>`` (<= 15 chars) for links."""
    if not kind:
        return f"{PREFIX}-{os.getpid()}-{next(_counter)}"
    return f"{PREFIX}{kind}{next(_counter) % 10000}-{os.getpid()}"


def _check(argv: Sequence[str], *, input_text: str | None = None,
           timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), input=input_text, capture_output=True, text=True,
                            timeout=timeout, check=False)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, argv, result.stdout, result.stderr)
    return result


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Namespace:
    """A throwaway network namespace with its own resolv.conf and hosts."""

    def __init__(self, name: str | None = None, *, resolv_conf: str = DEFAULT_RESOLV,
                 hosts: str = DEFAULT_HOSTS) -> None:
        self.name = name or _unique("")
        self._procs: list[subprocess.Popen[Any]] = []
        _check(["ip", "netns", "add", self.name])
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
        """The host path that appears as /etc/NAME inside ``ip netns exec``."""
        return self.etc_dir / name

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, cmd: Sequence[str], *, check: bool = True, timeout: float = 30,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the namespace and wait (CalledProcessError when check fails)."""
        if check:
            return _check(self.argv(cmd), input_text=input_text, timeout=timeout)
        return subprocess.run(self.argv(cmd), input=input_text, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``cmd`` inside the namespace; it is killed when the namespace is deleted."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(cmd), **kwargs)
        self._procs.append(proc)
        return proc

    def ip(self, *args: str) -> str:
        """``ip -n NAME ARGS...``; returns stdout."""
        return _check(["ip", "-n", self.name, *args]).stdout

    def ip_json(self, *args: str) -> Any:
        """``ip -j -n NAME ARGS...`` parsed."""
        out = _check(["ip", "-j", "-n", self.name, *args]).stdout
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

    def pids(self) -> list[int]:
        """Processes living in the namespace (ours or not)."""
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True,
                             check=False).stdout
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

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()


def veth(a: Namespace, b: Namespace, addr_a: str, addr_b: str, *,
         mtu: int | None = None) -> tuple[str, str]:
    """Join ``a`` and ``b`` with a veth pair addressed from 198.18.0.0/15; returns link names."""
    name_a, name_b = _unique("a"), _unique("b")
    _check(["ip", "link", "add", name_a, "netns", a.name, "type", "veth",
            "peer", "name", name_b, "netns", b.name])
    for ns, name, addr in ((a, name_a, addr_a), (b, name_b, addr_b)):
        ns.ip("addr", "add", addr, "dev", name)
        if mtu is not None:
            ns.ip("link", "set", name, "mtu", str(mtu))
        ns.ip("link", "set", name, "up")
    return name_a, name_b


DROP_INBOUND_RULES = """\
table inet tunneler_test {
    chain input {
        type filter hook input priority 0; policy drop;
        iif "lo" accept
        ct state established,related accept
    }
}
"""


def drop_inbound(ns: Namespace) -> None:
    """Drop every new inbound connection into ``ns`` (loopback and replies still pass)."""
    if shutil.which("nft") is None:
        raise HarnessError("the nft binary is missing: `apt-get install nftables`")
    ns.run(["nft", "-f", "-"], input_text=DROP_INBOUND_RULES)


def cleanup_stale() -> None:
    """Remove namespaces and /etc/netns dirs left by test processes that no longer exist."""
    names = {p.name for p in NETNS_RUN.glob(f"{PREFIX}-*")} if NETNS_RUN.is_dir() else set()
    names |= {p.name for p in NETNS_ETC.glob(f"{PREFIX}-*")} if NETNS_ETC.is_dir() else set()
    for name in names:
        pid = name.split("-")[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)


class NetnsPool:
    """Creates namespaces for one test and deletes them all on ``close``."""

    def __init__(self) -> None:
        self._spaces: list[Namespace] = []

    def new(self, **kwargs: Any) -> Namespace:
        ns = Namespace(**kwargs)
        self._spaces.append(ns)
        return ns

    def close(self) -> None:
        while self._spaces:
            self._spaces.pop().delete()


@pytest.fixture
def netns_pool() -> Iterator[NetnsPool]:
    """Namespaces for one test; all deleted afterwards, pass or fail."""
    pool = NetnsPool()
    try:
        yield pool
    finally:
        pool.close()
