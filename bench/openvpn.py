"""The VPN a user would otherwise pick: OpenVPN (Debian package) between two namespaces.

A point-to-point TLS tunnel (``--tls-server``/``--tls-client``, UDP, ``--ifconfig``), OpenVPN's
defaults for everything else (AES-256-GCM data channel, tun MTU 1500). The PKI is made here with
tunneler's own CA helpers (EC P-256 CA, RSA-2048 leaves), keys 0600; peers check the CA and the
other side's name (``--verify-x509-name``). `ensure_installed()` apt-get installs openvpn when
the binary is missing.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tunneler.controller import pki
from tunneler.demo.netns import Netns
from tunneler.demo.scenario import Scenario

READY = "Initialization Sequence Completed"
PORT = 1194


def ensure_installed() -> str:
    """The `openvpn --version` line, installing the Debian package first if needed."""
    if shutil.which("openvpn") is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "openvpn"], check=True,
                       env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin"})
    out = subprocess.run(["openvpn", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0]


def make_pki(directory: Path) -> None:
    """ca.pem, server.pem/.key and client.pem/.key (keys 0600) in `directory`."""
    directory.mkdir(mode=0o700)
    ca_cert, ca_key = pki.create_ca("openvpn bench CA")
    pki.write_cert(directory / "ca.pem", ca_cert)
    for name in ("server", "client"):
        cert, key = pki.issue_server_cert(f"vpn-{name}", ca_cert, ca_key)
        pki.write_cert(directory / f"{name}.pem", cert)
        pki.write_key(directory / f"{name}.key", key)


@dataclass(frozen=True)
class Link:
    """Underlay and tunnel addresses of one OpenVPN point-to-point link."""

    server_underlay: str   # the server's address on a path both namespaces share
    server_tunnel: str
    client_tunnel: str
    device: str = "tunvpn0"


def _argv(directory: Path, role: str, peer: str, link: Link) -> list[str]:
    local, remote = ((link.server_tunnel, link.client_tunnel) if role == "server"
                     else (link.client_tunnel, link.server_tunnel))
    argv = ["openvpn", "--dev", link.device, "--dev-type", "tun", "--proto", "udp",
            "--ifconfig", local, remote, f"--tls-{role}", "--ca", str(directory / "ca.pem"),
            "--cert", str(directory / f"{role}.pem"), "--key", str(directory / f"{role}.key"),
            "--verify-x509-name", f"vpn-{peer}", "name", "--verb", "3"]
    if role == "server":
        return [*argv, "--dh", "none", "--local", link.server_underlay, "--lport", str(PORT)]
    return [*argv, "--nobind", "--remote", link.server_underlay, str(PORT)]


def start(scenario: Scenario, server: Netns, client: Netns, link: Link) -> None:
    """Start both ends in their namespaces and wait until the tunnel is up."""
    directory = scenario.dir / "openvpn"
    make_pki(directory)
    scenario.start(server, "openvpn-server", _argv(directory, "server", "client", link))
    scenario.start(client, "openvpn-client", _argv(directory, "client", "server", link))
    scenario.wait_log("openvpn-client", READY, timeout=30)
    scenario.wait_log("openvpn-server", READY, timeout=30)
