"""A real overlay on 127.0.0.1 for integration tests and benchmarks: network + host + proxy.

Everything runs the way a user runs it: `tunneler network init/apply/enroll-token/serve`,
`tunneler enroll`, `tunneler run-host` and `tunneler proxy` as subprocesses (argv lists, no
shell) in a scratch directory, on free loopback ports. `Overlay.stop()` terminates every process
it started (SIGTERM, then SIGKILL after a grace period) and reports their exit codes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunneler.demo.processes import Processes

PYTHON = sys.executable
STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = STARTUP_TIMEOUT) -> None:
    """Until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port}") from None
            time.sleep(0.05)


def tunneler(directory: Path, *args: str) -> None:
    """Run one short tunneler command; raise with its output if it fails."""
    result = subprocess.run([PYTHON, "-m", "tunneler", *args], cwd=directory,
                            capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"tunneler {' '.join(args)} failed:\n{result.stderr}")


@functools.lru_cache(maxsize=4)
def blob(size: int, seed: int = 1) -> bytes:
    """Deterministic pseudo-random bytes (a hash-chained 1 MiB block, repeated; cached)."""
    block = bytearray()
    digest = seed.to_bytes(8, "little")
    while len(block) < 1 << 20:
        digest = hashlib.sha512(digest).digest()
        block += digest
    repeats, rest = divmod(size, len(block))
    return bytes(block) * repeats + bytes(block[:rest])


class BlobHandler(socketserver.BaseRequestHandler):
    """`UP\\n` + bytes until EOF → sha256 hex; `DOWN n\\n` → n bytes, FIN, wait for EOF."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        header = b""
        while not header.endswith(b"\n") and len(header) < 64:
            chunk = sock.recv(1)
            if not chunk:
                return
            header += chunk
        command = header.split()
        if command[0] == b"UP":
            digest = hashlib.sha256()
            while chunk := sock.recv(1 << 20):
                digest.update(chunk)
            sock.sendall(digest.hexdigest().encode())
        elif command[0] == b"DOWN":
            data = memoryview(blob(int(command[1])))
            server: ThreadingServer = self.server  # type: ignore[assignment]
            for start in range(0, len(data), 1 << 20):  # progress visible to a waiting test
                sock.sendall(data[start:start + (1 << 20)])
                server.down_sent += len(data[start:start + (1 << 20)])
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass


class ThreadingServer(socketserver.ThreadingTCPServer):
    """Threaded TCP server on 127.0.0.1 that tolerates port reuse."""

    allow_reuse_address = True
    daemon_threads = True
    down_sent = 0
    """Bytes every `DOWN` has handed to the kernel so far (1 MiB steps)."""


class EchoHandler(socketserver.BaseRequestHandler):
    """Sends back every byte it receives, until EOF."""

    def handle(self) -> None:
        with contextlib.suppress(ConnectionResetError):   # a reset flow is a tested outcome
            while data := self.request.recv(65536):
                self.request.sendall(data)


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """A TCP echo server on 127.0.0.1 in a thread; yields its port, stops afterwards."""
    server = ThreadingServer(("127.0.0.1", 0), EchoHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def start_blob_server() -> tuple[ThreadingServer, int]:
    """The upload/download server, in a thread."""
    server = ThreadingServer(("127.0.0.1", 0), BlobHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])


@dataclass
class Overlay:
    """A running network, hosting tunneler and proxy (`Processes` on this host)."""

    directory: Path
    proxy_ports: dict[str, int] = field(default_factory=dict)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)
    programs: Processes = field(init=False)

    def __post_init__(self) -> None:
        self.programs = Processes(self.directory)

    @property
    def processes(self) -> dict[str, subprocess.Popen[bytes]]:
        """The running processes by name."""
        return self.programs.procs

    def start(self, name: str, *args: str) -> None:
        """Start a long-running tunneler command, logging to DIR/<name>.log (appending)."""
        self.commands[name] = list(args)
        self.programs.start_here(name, [PYTHON, "-m", "tunneler", *args], append=True)

    def restart(self, name: str) -> None:
        """Stop a process (SIGTERM) and start it again with the same arguments."""
        self.stop(name)
        self.start(name, *self.commands[name])

    def log(self, name: str) -> str:
        """What a process has logged so far."""
        return self.programs.log(name)

    def wait_for_log(self, name: str, text: str, count: int = 1,
                     timeout: float = STARTUP_TIMEOUT) -> None:
        """Until the process logged `text` at least `count` times (NetnsError if it exits)."""
        self.programs.wait_log(name, text, count, timeout)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Signal one process and wait for it (SIGKILL after `timeout`)."""
        code = self.exit_codes[name] = self.programs.stop(name, sig, timeout)
        return code

    def stop_all(self) -> None:
        """Stop clients first, the network last."""
        self.exit_codes.update(self.programs.stop_all())


def apply_policy(directory: Path, services: Sequence[dict[str, Any]], host_identity: str,
                 client_identity: str,
                 extra_policy: dict[str, list[dict[str, Any]]] | None = None, *,
                 dial: bool = True, prune: bool = False) -> None:
    """`network apply` DIR/net: `services` bound by the host, dialled by the client (unless
    not `dial`); `prune` deletes the service policies the file does not name."""
    policy: dict[str, list[dict[str, Any]]] = {
        "identities": [{"name": host_identity, "roleAttributes": ["hosts"]},
                       {"name": client_identity, "roleAttributes": ["clients"]}],
        "services": [{"roleAttributes": ["svc"], **service} for service in services],
        "servicePolicies": [
            {"name": "bind", "type": "Bind", "semantic": "AnyOf", "identityRoles": ["#hosts"],
             "serviceRoles": ["#svc"]},
            {"name": "dial", "type": "Dial", "semantic": "AnyOf", "identityRoles": ["#clients"],
             "serviceRoles": ["#svc"]},
        ],
    }
    if not dial:
        policy["servicePolicies"] = [p for p in policy["servicePolicies"] if p["type"] != "Dial"]
    for section, entries in (extra_policy or {}).items():
        policy[section] = [*policy.get(section, []), *entries]
    (directory / "policy.yaml").write_text(yaml.safe_dump(policy))
    tunneler(directory, "network", "apply", str(directory / "net"), "policy.yaml",
             *(["--prune"] if prune else []))


def build_overlay(directory: Path, services: Sequence[dict[str, Any]], *,
                  host_identity: str = "host1", client_identity: str = "client1",
                  extra_policy: dict[str, list[dict[str, Any]]] | None = None,
                  token_only: Sequence[str] = (), client_args: Sequence[str] = (),
                  init_args: Sequence[str] = ()) -> Overlay:
    """Create a network with `services` (bound by host1, dialled by client1) and start it all.

    Each service dict is a policy-file service entry; without roleAttributes it gets [svc]
    (host1 binds #svc; identities with role `clients` dial #svc). `extra_policy` sections are
    appended to the policy file; identities in `token_only` get DIR/<name>.jwt, not enrolled;
    `client_args` are added to the run-host and proxy command lines, `init_args` to
    `network init` (e.g. a short `--access-token-lifetime`).
    The proxy listens on a free port per service (`Overlay.proxy_ports[name]`).
    """
    directory.mkdir(parents=True, exist_ok=True)
    net = str(directory / "net")
    ctrl_port, router_port = free_port(), free_port()
    tunneler(directory, "network", "init", net, "--hostname", "localhost",
             "--controller-port", str(ctrl_port), "--router-port", str(router_port), *init_args)
    apply_policy(directory, services, host_identity, client_identity, extra_policy)
    overlay = Overlay(directory)
    try:
        overlay.start("network", "network", "serve", net, "--listen", "127.0.0.1")
        for identity in (host_identity, client_identity, *token_only):
            tunneler(directory, "network", "enroll-token", net, identity, "-o", f"{identity}.jwt")
        wait_for_port(ctrl_port)
        wait_for_port(router_port)
        for identity in (host_identity, client_identity):
            tunneler(directory, "enroll", "--jwt", f"{identity}.jwt", "--identity",
                     f"{identity}.json")
        overlay.start("host", "run-host", "--identity", f"{host_identity}.json", *client_args)
        hosted = [s for s in services if "host.v1" in s.get("configs", {})]
        overlay.wait_for_log("host", "host.service_bound", count=len(hosted))
        overlay.proxy_ports = {s["name"]: free_port() for s in services}
        overlay.start("proxy", "proxy", "--identity", f"{client_identity}.json", *client_args,
                      *(f"{name}={port}" for name, port in overlay.proxy_ports.items()))
        for port in overlay.proxy_ports.values():
            wait_for_port(port)
    except BaseException:
        overlay.stop_all()
        raise
    return overlay


def host_service(name: str, port: int, *, encrypted: bool = True) -> dict[str, Any]:
    """A policy-file service hosted at 127.0.0.1:port."""
    return {"name": name, "encryptionRequired": encrypted,
            "configs": {"host.v1": {"protocol": "tcp", "address": "127.0.0.1", "port": port}}}



def roundtrip(port: int, word: bytes = b"ping", timeout: float = 5.0) -> socket.socket:
    """Connect to 127.0.0.1:port, send `word`, check it comes back; the open socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(word)
    assert sock.recv(64) == word
    return sock


@contextlib.contextmanager
def split_network(directory: Path, services: Sequence[dict[str, Any]],
                  clients: Sequence[str] = ("client1",),
                  ) -> Iterator[tuple[Overlay, dict[str, int]]]:
    """A network whose controller and routers are separate processes on one directory:
    `router1` (from init) and `edge2` (`network add-router`); the controller (`serve
    --controller-only`) and router1 (`serve-router`) run, edge2 is left to the test. host1
    binds `services`, `clients` dial them; all are enrolled (DIR/<name>.json). Yields the
    overlay and the ports by name ("ctrl", "router1", "edge2")."""
    ports = {"ctrl": free_port(), "router1": free_port(), "edge2": free_port()}
    net = str(directory / "net")
    tunneler(directory, "network", "init", net, "--hostname", "localhost", "--controller-port",
             str(ports["ctrl"]), "--router-port", str(ports["router1"]))
    tunneler(directory, "network", "add-router", net, "edge2", "--port", str(ports["edge2"]))
    apply_policy(directory, services, "host1", clients[0], {
        "identities": [{"name": name, "roleAttributes": ["clients"]} for name in clients[1:]]})
    overlay = Overlay(directory)
    try:
        overlay.start("controller", "network", "serve", net, "--controller-only",
                      "--listen", "127.0.0.1")
        overlay.start("router1", "network", "serve-router", net, "router1",
                      "--listen", "127.0.0.1")
        for identity in ("host1", *clients):
            tunneler(directory, "network", "enroll-token", net, identity, "-o", f"{identity}.jwt")
        wait_for_port(ports["ctrl"])
        wait_for_port(ports["router1"])
        for identity in ("host1", *clients):
            tunneler(directory, "enroll", "--jwt", f"{identity}.jwt", "--identity",
                     f"{identity}.json")
        yield overlay, ports
    finally:
        overlay.stop_all()
