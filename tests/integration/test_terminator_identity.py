"""`dialOptions.identity` → edge header 1006: a dial asks for the terminator a given host bound.

Two `run-host` processes bind the same service with `listenOptions.bindUsingEdgeIdentity`;
a client context dialing with `terminator_identity="host2"` always lands on host2, and asking
for an identity that bound nothing is refused with a clear reason.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.overlay import Overlay, build_overlay, tunneler
from tunneler.client.conn import EdgeConnection
from tunneler.client.context import ZitiContext
from tunneler.errors import DialError

DIALS = 6


class Collector:
    """An edge sink that keeps what the service sends until it half-closes."""

    def __init__(self) -> None:
        self.data = b""
        self.done = asyncio.Event()

    def edge_connected(self, conn: EdgeConnection) -> None:
        conn.write_eof()

    def edge_data(self, data: bytes) -> None:
        self.data += data

    def edge_eof(self) -> None:
        self.done.set()

    def edge_closed(self, abrupt: bool) -> None:
        self.done.set()

    def set_link_writable(self, writable: bool) -> None:
        pass


def _greeter() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"hello")

    threading.Thread(target=serve, daemon=True).start()
    return server, int(server.getsockname()[1])


@pytest.fixture(name="overlay")
def _overlay(tmp_path: Path) -> Iterator[Overlay]:
    server, port = _greeter()
    service = {"name": "pick", "encryptionRequired": True, "configs": {"host.v1": {
        "protocol": "tcp", "address": "127.0.0.1", "port": port,
        "listenOptions": {"bindUsingEdgeIdentity": True}}}}
    overlay = build_overlay(tmp_path, [service], client_args=("--log-level", "debug"),
                            extra_policy={"identities": [{"name": "host2",
                                                          "roleAttributes": ["hosts"]}]},
                            token_only=("host2",))
    try:
        tunneler(tmp_path, "enroll", "--jwt", "host2.jwt", "--identity", "host2.json")
        overlay.start("host2", "run-host", "--identity", "host2.json", "--log-level", "debug")
        overlay.wait_for_log("host2", "host.service_bound")
        yield overlay
    finally:
        overlay.stop_all()
        server.close()


def test_dial_reaches_the_terminator_of_the_requested_identity(overlay: Overlay) -> None:
    host1_before = overlay.log("host").count("host.flow_connected")  # the proxy's port probe

    async def scenario() -> None:
        ctx = ZitiContext(overlay.directory / "client1.json")
        await ctx.start()
        try:
            for _ in range(DIALS):
                sink = Collector()
                await ctx.dial("pick", sink, terminator_identity="host2")
                await asyncio.wait_for(sink.done.wait(), 10)
                assert sink.data == b"hello"
            with pytest.raises(DialError):
                await ctx.dial("pick", Collector(), terminator_identity="nobody", timeout=5)
        finally:
            await ctx.close()

    asyncio.run(scenario())
    assert overlay.log("host2").count("host.flow_connected") == DIALS
    assert overlay.log("host").count("host.flow_connected") == host1_before
