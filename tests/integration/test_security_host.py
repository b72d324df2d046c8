"""The dialer is not trusted (security.md SEC-01..04): attacks on run-host's `allowedAddresses`.

A real network, run-host and an in-process client on 127.0.0.1. The service forwards the
address as the shipped `policies/forward.yaml` does, with a wildcard domain. Sentinel listeners
on 127.0.0.2 and ::1 must never see a connection; 127.0.0.5 is allowed and answers. Each attack
must come back as a DialFailed from run-host with its reason (not the router's timeout).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.overlay import Overlay, build_overlay
from tunneler.client.context import ZitiContext
from tunneler.errors import DialError

SENTINELS = ("127.0.0.2", "::1")
ALLOWED = "127.0.0.5"


class Recorder:
    """Listeners on one port of several loopback addresses, recording who was reached."""

    def __init__(self, addresses: tuple[str, ...]) -> None:
        self.reached: list[str] = []
        self.sockets: list[socket.socket] = []
        with socket.socket() as probe:
            probe.bind((ALLOWED, 0))
            self.port = probe.getsockname()[1]
        for address in addresses:
            server = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((address, self.port))
            server.listen(16)
            self.sockets.append(server)
            threading.Thread(target=self._serve, args=(server, address), daemon=True).start()

    def _serve(self, server: socket.socket, address: str) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            self.reached.append(address)
            with conn:
                conn.sendall(address.encode())

    def close(self) -> None:
        for server in self.sockets:
            server.close()


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    found = Recorder((*SENTINELS, ALLOWED))
    try:
        yield found
    finally:
        found.close()


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory, recorder: Recorder) -> Iterator[Overlay]:
    port = recorder.port
    service = {"name": "office", "encryptionRequired": True, "configs": {"host.v1": {
        "forwardProtocol": True, "allowedProtocols": ["tcp", "udp"],
        "forwardAddress": True, "allowedAddresses": ["*.allowed.test", ALLOWED],
        "forwardPort": True, "allowedPortRanges": [{"low": port, "high": port}]}}}
    found = build_overlay(tmp_path_factory.mktemp("security"), [service])
    try:
        yield found
    finally:
        found.stop_all()


class _Collect:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = asyncio.Event()

    def edge_connected(self, conn: object) -> None:
        pass

    def edge_data(self, data: bytes) -> None:
        self.data += data

    def edge_eof(self) -> None:
        self.closed.set()

    def edge_closed(self, abrupt: bool) -> None:
        self.closed.set()

    def set_link_writable(self, writable: bool) -> None:
        pass


def _dial(directory: Path, app_data: dict[str, str]) -> bytes | str:
    """What the service answered, or the reason the dial failed."""
    async def run() -> bytes | str:
        ctx = ZitiContext(directory / "client1.json")
        await ctx.start()
        try:
            sink = _Collect()
            try:
                conn = await ctx.dial("office", sink, app_data=app_data)
            except DialError as exc:
                return str(exc)
            await asyncio.wait_for(sink.closed.wait(), 30)
            conn.close()
            return bytes(sink.data)
        finally:
            await ctx.close()
    return asyncio.run(run())


@pytest.mark.parametrize(("app_data", "reason"), [
    ({"dst_hostname": "127.0.0.2\x00.allowed.test"}, "not a valid IP address or DNS name"),
    ({"dst_hostname": "::1\x00.allowed.test"}, "not a valid IP address or DNS name"),
    ({"dst_hostname": "x" * 64 + ".allowed.test"}, "not a valid IP address or DNS name"),
    ({"dst_hostname": "0x7f000002"}, "not a valid IP address or DNS name"),
    ({"dst_ip": "::ffff:127.0.0.2"}, "is not allowed"),
    ({"dst_ip": "127.0.0.2%lo"}, "not a valid IP address or DNS name"),
    ({"dst_ip": ALLOWED, "dst_port": "\u00b2"}, "port '\u00b2' is not allowed"),
    ({"dst_hostname": "localhost.allowed.test"}, "cannot resolve"),
])
def test_attack_is_refused_by_run_host_with_its_reason(overlay: Overlay, recorder: Recorder,
                                                       app_data: dict[str, str],
                                                       reason: str) -> None:
    fields = {"dst_protocol": "tcp", "dst_port": str(recorder.port), **app_data}
    answer = _dial(overlay.directory, fields)
    assert isinstance(answer, str) and reason in answer, answer
    assert "timed out" not in answer
    assert not set(recorder.reached) & set(SENTINELS)


def test_the_allowed_address_is_reached_and_nothing_else(overlay: Overlay,
                                                         recorder: Recorder) -> None:
    answer = _dial(overlay.directory, {"dst_protocol": "tcp", "dst_ip": ALLOWED,
                                       "dst_port": str(recorder.port)})
    assert answer == ALLOWED.encode()
    assert recorder.reached and set(recorder.reached) == {ALLOWED}
    assert "listener.dial_handler_crashed" not in overlay.log("host")
