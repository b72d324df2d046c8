"""Test helpers: an initialised network directory and the controller API running in-process."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tunneler.cli import main as cli
from tunneler.controller import network, pki
from tunneler.controller.api import ControllerApi
from tunneler.controller.store import Store


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
async def running_api(root: Path) -> AsyncIterator[Running]:
    """Serve the Edge Client API of `root` on 127.0.0.1 (ephemeral port) for the block."""
    directory = network.load(root)
    store = Store(directory.state_db)
    api = ControllerApi(store, directory.api_settings(), clock=time.time)
    context = pki.server_ssl_context(directory.pki, "ctrl", require_client_cert=False)
    port = await api.start("127.0.0.1", 0, context)
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
                  data: bytes | None = None, content_type: str = "application/json") -> Reply:
    """One HTTPS request on a fresh connection; the body is decoded as JSON when possible."""
    headers = {"Accept": "application/json", "Content-Type": content_type}
    if token:
        headers["zt-session"] = token
    connector = aiohttp.TCPConnector(ssl=context, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session, session.request(
            method, url, data=data, headers=headers) as response:
        raw = await response.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw
        return Reply(response.status, body, dict(response.headers))
