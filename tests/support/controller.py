"""Test helpers: an initialised network directory and the controller API running in-process."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tunneler.cli import main as cli
from tunneler.controller import network, pki
from tunneler.controller.api import ControllerApi
from tunneler.controller.store import Store

_SCRIPT = Path(sys.executable).parent / "tunneler"
TUNNELER = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "tunneler"]


def free_port() -> int:
    """A currently unused loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init_network(directory: Path, policy_file: Path | None = None) -> Path:
    """`tunneler network init` (+ `apply`) through the real CLI entry point."""
    assert cli(["network", "init", str(directory), "--hostname", "localhost",
                "--controller-port", str(free_port()), "--router-port", str(free_port())]) == 0
    if policy_file is not None:
        assert cli(["network", "apply", str(directory), str(policy_file)]) == 0
    return directory


@dataclass
class Running:
    """A running controller API: its base URL and the store it serves."""

    url: str
    store: Store
    directory: network.NetworkDir


@asynccontextmanager
async def running_api(root: Path, port: int = 0) -> AsyncIterator[Running]:
    """Serve the Edge Client API of `root` on 127.0.0.1 for the block (`port` 0: ephemeral;
    the configured port makes enrollment JWTs and identity files point at it)."""
    directory = network.load(root)
    store = Store(directory.state_db)
    api = ControllerApi(store, directory.api_settings(), clock=time.time)
    context = pki.server_ssl_context(directory.pki, "ctrl", require_client_cert=False)
    port = await api.start("127.0.0.1", port, context)
    try:
        yield Running(f"https://127.0.0.1:{port}", store, directory)
    finally:
        await api.close()
        store.close()


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


async def request(context: ssl.SSLContext, method: str, url: str, *, token: str | None = None,
                  data: bytes | None = None, content_type: str = "application/json",
                  bearer: str | None = None) -> Reply:
    """One HTTPS request on a fresh connection; the body is decoded as JSON when possible.
    `token` goes into `zt-session`, `bearer` into `Authorization: Bearer`."""
    headers = {"Accept": "application/json", "Content-Type": content_type}
    if token:
        headers["zt-session"] = token
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    connector = aiohttp.TCPConnector(ssl=context, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session, session.request(
            method, url, data=data, headers=headers) as response:
        raw = await response.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw
        return Reply(response.status, body, dict(response.headers))


def wait_listening(port: int, process: subprocess.Popen[str], deadline: float = 20.0) -> None:
    """Wait until 127.0.0.1:port accepts connections (fail early if `process` died)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            raise AssertionError(f"process exited: {process.communicate()[1]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"port {port} never opened")


@contextmanager
def serve_process(root: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """`tunneler network serve ROOT --listen 127.0.0.1` as a subprocess, killed afterwards."""
    config = json.loads((root / "network.json").read_text())
    process = subprocess.Popen([*TUNNELER, "network", "serve", str(root), "--listen", "127.0.0.1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(config["controller_port"], process)
        wait_listening(config["router_port"], process)
        yield process, config
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
