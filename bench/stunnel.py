"""The TLS wrapper a user would otherwise pick: stunnel (Debian package stunnel4), mutual TLS.

`start` writes one configuration file per stunnel process and runs ``stunnel4 FILE`` in a
namespace (foreground, no pid file, no syslog, warnings only: no line per connection). Every
side presents its certificate from `make_pki` (tunneler's own CA helpers: EC P-256 CA, RSA-2048
leaves, keys 0600) and verifies the other side's chain against the CA (``verifyChain = yes``
with ``requireCert = yes``: what ``verify = 2`` was); a client-mode service also checks the
server's name (``checkHost``). TCP_NODELAY on both sides; OpenSSL's defaults for the rest
(TLS 1.3). A server-mode service accepts TLS and connects in plaintext; a client-mode service
accepts plaintext and connects with TLS; a relay that terminates and re-originates TLS is the
two in one process, joined on loopback.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import thirdparty

from tunneler.demo.netns import Netns
from tunneler.demo.processes import Processes

PACKAGE = BINARY = "stunnel4"
GLOBAL = """\
foreground = yes
pid =
syslog = no
debug = warning
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
"""


@dataclass(frozen=True)
class Service:
    """One stunnel service: accept on ADDRESS:PORT, connect to ADDRESS:PORT; `peer` set makes
    it a client-mode service (plaintext in, TLS out) that checks the server's name."""

    name: str
    accept: str
    connect: str
    peer: str | None = None

    def section(self) -> str:
        lines = [f"[{self.name}]", f"accept = {self.accept}", f"connect = {self.connect}"]
        if self.peer is not None:
            lines += ["client = yes", f"checkHost = {self.peer}"]
        return "\n".join(lines) + "\n"


def ensure_installed() -> str:
    """The `stunnel4 -version` line, installing the Debian package first if needed."""
    thirdparty.ensure_installed(PACKAGE, BINARY)
    out = subprocess.run([BINARY, "-version"], capture_output=True, text=True, check=False)
    return next((line.strip() for line in (out.stderr + out.stdout).splitlines()
                 if line.startswith("stunnel")), "stunnel (version unknown)")


def common_name(identity: str) -> str:
    return f"stunnel-{identity}"


def make_pki(directory: Path, identities: Sequence[str]) -> None:
    """ca.pem and IDENTITY.pem/.key (common name stunnel-IDENTITY, keys 0600)."""
    thirdparty.make_pki(directory, "stunnel bench CA",
                        {identity: common_name(identity) for identity in identities})


def config(directory: Path, identity: str, services: Sequence[Service]) -> str:
    """The configuration of the stunnel process of `identity` (its PKI in `directory`)."""
    credentials = (f"cert = {directory / f'{identity}.pem'}\n"
                   f"key = {directory / f'{identity}.key'}\n"
                   f"CAfile = {directory / 'ca.pem'}\n"
                   "verifyChain = yes\nrequireCert = yes\n")
    return GLOBAL + credentials + "".join(f"\n{service.section()}" for service in services)


def start(procs: Processes, ns: Netns, directory: Path, identity: str,
          services: Sequence[Service]) -> None:
    """Run the stunnel of `identity` in `ns` (program stunnel-IDENTITY of `procs`, its
    configuration beside the PKI in `directory`) and wait until it listens."""
    path = directory / f"{identity}.conf"
    path.write_text(config(directory, identity, services))
    name = common_name(identity)
    procs.start(ns, name, [BINARY, str(path)])
    thirdparty.wait_listening(procs, name, ns, [service.accept for service in services])
