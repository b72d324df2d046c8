"""The VPN a user would otherwise pick: OpenVPN (Debian package) between namespaces.

Two shapes, OpenVPN's defaults for everything else (UDP, AES-256-GCM data channel, tun MTU 1500):

- `start`: a point-to-point TLS tunnel (``--tls-server``/``--tls-client``, ``--ifconfig``);
  peers check the CA and the other side's name (``--verify-x509-name``).
- `start_hub`: a hub, the shape of a relay in the middle: an OpenVPN server (``--server``,
  ``--topology subnet``, ``--client-to-client``: the hub forwards between its clients itself)
  whose clients get fixed tunnel addresses (``--client-config-dir`` with ``--ccd-exclusive``:
  only certificates with a file there get in) and check the hub's name.

The PKI is made with tunneler's own CA helpers (`thirdparty.make_pki`: EC P-256 CA, RSA-2048
leaves, keys 0600). `ensure_installed()` apt-get installs openvpn when the binary is missing.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import thirdparty

from tunneler.demo.netns import Netns
from tunneler.demo.processes import Processes

READY = "Initialization Sequence Completed"
PORT = 1194


def ensure_installed() -> str:
    """The `openvpn --version` line, installing the Debian package first if needed."""
    thirdparty.ensure_installed("openvpn", "openvpn")
    out = subprocess.run(["openvpn", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0]


def data_channel(log: str) -> list[str]:
    """What an OpenVPN log says of its negotiated data channel ("Data Channel:" lines)."""
    return [line.split("Data Channel:", 1)[1].strip() for line in log.splitlines()
            if "Data Channel:" in line]


def make_pki(directory: Path, names: tuple[str, ...] = ("server", "client")) -> None:
    """ca.pem and NAME.pem/.key (common name vpn-NAME, keys 0600) in `directory`."""
    thirdparty.make_pki(directory, "openvpn bench CA", {name: f"vpn-{name}" for name in names})


def _base(directory: Path, name: str, device: str) -> list[str]:
    """The options every end shares: its tun device, UDP, the CA and its own certificate."""
    return ["openvpn", "--dev", device, "--dev-type", "tun", "--proto", "udp",
            "--ca", str(directory / "ca.pem"), "--cert", str(directory / f"{name}.pem"),
            "--key", str(directory / f"{name}.key"), "--verb", "3"]


# -- point to point ---------------------------------------------------------------------------

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
    argv = [*_base(directory, role, link.device), "--ifconfig", local, remote, f"--tls-{role}",
            "--verify-x509-name", f"vpn-{peer}", "name"]
    if role == "server":
        return [*argv, "--dh", "none", "--local", link.server_underlay, "--lport", str(PORT)]
    return [*argv, "--nobind", "--remote", link.server_underlay, str(PORT)]


def start(procs: Processes, server: Netns, client: Netns, link: Link) -> None:
    """Start both ends in their namespaces (programs openvpn-server and openvpn-client of
    `procs`) and wait until the tunnel is up."""
    directory = procs.dir / "openvpn"
    make_pki(directory)
    procs.start(server, "openvpn-server", _argv(directory, "server", "client", link))
    procs.start(client, "openvpn-client", _argv(directory, "client", "server", link))
    procs.wait_log("openvpn-client", READY, timeout=30)
    procs.wait_log("openvpn-server", READY, timeout=30)


# -- hub ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    """One client of a hub: its name, fixed tunnel address, and the hub address it dials."""

    name: str
    tunnel: str
    hub_address: str


@dataclass(frozen=True)
class Hub:
    """An OpenVPN server forwarding between its clients, with its tunnel subnet."""

    subnet: str
    members: tuple[Member, ...]
    netmask: str = "255.255.255.0"
    device: str = "tunhub0"


def _hub_argv(directory: Path, hub: Hub) -> list[str]:
    ccd = directory / "ccd"
    ccd.mkdir()
    for member in hub.members:
        (ccd / f"vpn-{member.name}").write_text(f"ifconfig-push {member.tunnel} {hub.netmask}\n")
    return [*_base(directory, "hub", hub.device), "--server", hub.subnet, hub.netmask,
            "--topology", "subnet", "--client-to-client", "--client-config-dir", str(ccd),
            "--ccd-exclusive", "--dh", "none", "--lport", str(PORT)]


def _member_argv(directory: Path, hub: Hub, member: Member) -> list[str]:
    return [*_base(directory, member.name, hub.device), "--client", "--nobind",
            "--remote", member.hub_address, str(PORT), "--verify-x509-name", "vpn-hub", "name"]


def start_hub(procs: Processes, hub_ns: Netns, hub: Hub, spaces: Mapping[str, Netns]) -> None:
    """Start the hub in `hub_ns` (program openvpn-hub) and each member in `spaces[name]`
    (program openvpn-NAME); wait until every member is connected."""
    directory = procs.dir / "openvpn-hub"
    make_pki(directory, ("hub", *(member.name for member in hub.members)))
    procs.start(hub_ns, "openvpn-hub", _hub_argv(directory, hub))
    procs.wait_log("openvpn-hub", READY, timeout=30)
    for member in hub.members:
        procs.start(spaces[member.name], f"openvpn-{member.name}",
                    _member_argv(directory, hub, member))
    for member in hub.members:
        procs.wait_log(f"openvpn-{member.name}", READY, timeout=30)
