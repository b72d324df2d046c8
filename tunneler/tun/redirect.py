"""TCP redirect: the kernel rewrites intercepted TCP to our listener (nftables DNAT).

`tunneler run --tcp-redirect` keeps the TUN for DNS, UDP and traffic routed in from elsewhere,
and adds one nftables table per TUN: TCP that this host (or a container sharing its network
namespace) opens to an intercepted address is DNAT'ed in the ``output`` hook to the engine's
listener ``T:L``. Conntrack then rewrites every later packet in the kernel, where the TUN
hairpin costs two TUN syscalls and a NAT rewrite in Python per packet (10 packets a short
connection; bench/peers.py: +15-20 % connections/s and single-stream MB/s, a third less CPU
in `run` per byte, docs/benchmarks.md §2b).
The listener reads the app's destination back with ``SO_ORIGINAL_DST``.

Trade-off, the reason it is not the default: the kernel completes the app's handshake before
the dial, so an unreachable service is a reset after ``connect()`` succeeded instead of a
refused ``connect()``; flows from other hosts still take the TUN.

- ``Redirect`` (frozen): table name, target ``(ip, port)``, IPv4 prefixes to catch, addresses
  to leave alone (ours: TUN, NAT, DNS; the controller's and routers' addresses).
- ``render(redirect) -> str``: the nft script, which replaces the table atomically.
- ``nft_binary()``: the `nft` command, or a ConfigError saying how to install it.
- ``Nft(run)``: ``apply(redirect)`` / ``delete(table) -> bool``, through ``nft -f -`` (argument
  lists, the script on stdin; ``run`` is injectable for tests).
- ``original_destination(sock) -> (ip int, port) | None``: ``SO_ORIGINAL_DST`` of an accepted
  socket; None when conntrack did not rewrite it.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tunneler.errors import ConfigError, TunError

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
_SOCKADDR_IN = struct.Struct("!2xH4s8x")
_TABLE_PREFIX = "tunneler_"
NFT_TIMEOUT = 10.0

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def table_name(tun_name: str) -> str:
    """Our nftables table for a TUN (nft identifiers take letters, digits and `_`)."""
    return _TABLE_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", tun_name)


@dataclass(frozen=True)
class Redirect:
    """Which TCP the kernel sends to ``target`` instead of the TUN."""

    table: str
    target: tuple[str, int]
    prefixes: tuple[str, ...]
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.table):
            raise ValueError(f"bad nft table name {self.table!r}")
        for text in (self.target[0], *self.exclude):
            ipaddress.IPv4Address(text)
        if not 0 < self.target[1] < 65536:
            raise ValueError(f"bad target port {self.target[1]}")
        for text in self.prefixes:
            ipaddress.IPv4Network(text)
        if not self.prefixes:
            raise ValueError("a redirect needs at least one prefix")


def render(redirect: Redirect) -> str:
    """The nft script: create-if-missing, delete, recreate, in one transaction."""
    table = f"table ip {redirect.table}"
    prefixes = ", ".join(redirect.prefixes)
    exclude = (f" ip daddr != {{ {', '.join(redirect.exclude)} }}"
               if redirect.exclude else "")
    ip, port = redirect.target
    return "\n".join([
        f"{table} {{}}",
        f"delete {table}",
        f"{table} {{",
        "  chain output {",
        "    type nat hook output priority -100; policy accept;",
        f"    meta l4proto tcp ip daddr {{ {prefixes} }}{exclude} counter dnat to {ip}:{port}",
        "  }",
        "}",
        "",
    ])


def nft_binary() -> str:
    """The `nft` command (checked at start-up: --tcp-redirect fails at once without it).

    Raises:
        ConfigError: not installed.
    """
    found = shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if shutil.which(p)), None)
    if found is None:
        raise ConfigError("--tcp-redirect needs nftables' `nft` command: install it "
                          "(Debian/Ubuntu: apt-get install nftables) or run without it")
    return found


class Nft:
    """Applies and deletes our tables with the `nft` command."""

    def __init__(self, run: Runner = subprocess.run) -> None:
        self._run = run

    def _nft(self, args: Sequence[str],
             script: str | None = None) -> subprocess.CompletedProcess[str]:
        return self._run([nft_binary(), *args], input=script, capture_output=True, text=True,
                         timeout=NFT_TIMEOUT, check=False)

    def apply(self, redirect: Redirect) -> None:
        """Install (or replace) the redirect table.

        Raises:
            TunError: nft refused it (the message has nft's own words).
        """
        result = self._nft(["-f", "-"], render(redirect))
        if result.returncode != 0:
            hint = (" (run as root or grant CAP_NET_ADMIN)"
                    if "Operation not permitted" in result.stderr else "")
            raise TunError(f"nft could not install table {redirect.table}: "
                           f"{result.stderr.strip()}{hint}")

    def delete(self, table: str) -> bool:
        """Delete our table; False when it is not there."""
        result = self._nft(["delete", "table", "ip", table])
        if result.returncode == 0:
            return True
        if "No such file or directory" in result.stderr:
            return False
        raise TunError(f"nft could not delete table {table}: {result.stderr.strip()}")


def original_destination(sock: socket.socket) -> tuple[int, int] | None:
    """The destination the app asked for, before the DNAT; None without one."""
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN.size)
    except OSError:
        return None
    port, address = _SOCKADDR_IN.unpack(raw)
    return int.from_bytes(address, "big"), port
