"""What the third-party tunnels the benchmarks compare against share (bench/openvpn.py, stunnel.py).

`ensure_installed` apt-get installs a Debian package when its binary is missing; `make_pki`
writes a CA and leaf certificates made with tunneler's own CA helpers (EC P-256 CA, RSA-2048
leaves valid for serverAuth and clientAuth, keys 0600); `wait_listening` waits until a program
started in a namespace listens on its TCP addresses. Commands are argv lists.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from tunneler.controller import pki
from tunneler.demo.netns import Netns
from tunneler.demo.processes import Processes
from tunneler.errors import NetnsError


def ensure_installed(package: str, binary: str) -> None:
    """apt-get install `package` unless `binary` is on the PATH already (apt's output goes to
    stderr: stdout is the benchmark's report)."""
    if shutil.which(binary) is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True,
                       stdout=sys.stderr,
                       env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin"})


def make_pki(directory: Path, ca_name: str, leaves: Mapping[str, str]) -> None:
    """`directory` (0700) with ca.pem and, per `leaves` item (file name → common name),
    NAME.pem and NAME.key (0600)."""
    directory.mkdir(mode=0o700)
    ca_cert, ca_key = pki.create_ca(ca_name)
    pki.write_cert(directory / "ca.pem", ca_cert)
    for name, common_name in leaves.items():
        cert, key = pki.issue_server_cert(common_name, ca_cert, ca_key)
        pki.write_cert(directory / f"{name}.pem", cert)
        pki.write_key(directory / f"{name}.key", key)


def listening(ns: Netns) -> set[str]:
    """The ADDRESS:PORT of every TCP listener in `ns`."""
    out = ns.run(["ss", "-Hltn"]).stdout
    return {line.split()[3] for line in out.splitlines() if len(line.split()) > 3}


def wait_listening(procs: Processes, name: str, ns: Netns, addresses: Iterable[str],
                   timeout: float = 30) -> None:
    """Until program `name` of `procs` listens on every ADDRESS:PORT in `ns`; `NetnsError`
    (with its log's end) if it exits first or `timeout` passes."""
    wanted, deadline = set(addresses), time.monotonic() + timeout
    while not wanted <= listening(ns):
        if procs.procs[name].poll() is not None or time.monotonic() > deadline:
            raise NetnsError(f"{name} is not listening on {sorted(wanted)}; its log ends:\n"
                             f"{procs.log(name)[-3000:]}")
        time.sleep(0.05)
