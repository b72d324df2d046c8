"""The edge router under load on 127.0.0.1: bulk transfer under uvloop, and backpressure.

Three parties (host, dialer, router) share one event loop, each over real TLS.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from router_pki import TestPki
from router_support import MemoryAuthority, TlsPeer

from tunneler.edge import messages as e
from tunneler.router import server
from tunneler.router.server import EdgeRouter

CHUNK = 32 * 1024  # what libziti's bridge writes per Data message


class Scene:
    def __init__(self, directory: Path) -> None:
        self.pki = TestPki(directory)
        self.router_leaf = self.pki.issue("router", server=True)
        self.host_leaf, self.dialer_leaf = self.pki.issue("host"), self.pki.issue("dialer")
        self.auth = MemoryAuthority()
        self.host_api = self.auth.add_identity("host", self.host_leaf.fingerprint)
        self.dialer_api = self.auth.add_identity("dialer", self.dialer_leaf.fingerprint)
        self.bind = self.auth.add_session(self.host_api, "svc", "Bind")
        self.dial = self.auth.add_session(self.dialer_api, "svc", "Dial")

    async def circuit(self, router: EdgeRouter) -> tuple[TlsPeer, TlsPeer]:
        host = await TlsPeer.authenticated(router.port, self.pki.client_context(self.host_leaf),
                                           self.host_api.token)
        await host.exchange(e.bind(1, self.bind.token, "host"))
        dialer = await TlsPeer.authenticated(
            router.port, self.pki.client_context(self.dialer_leaf), self.dialer_api.token)
        connected = asyncio.ensure_future(dialer.exchange(e.connect(7, self.dial.token, "d")))
        dial = await host.next()
        host.reply(dial, e.dial_success(1, 100))
        await host.next()
        assert (await connected).content_type == e.CONTENT_TYPE_STATE_CONNECTED
        return host, dialer


async def pump(peer: TlsPeer, conn_id: int, total: int) -> str:
    """Send `total` bytes of patterned data in CHUNK-sized Data messages; returns their sha256."""
    digest = hashlib.sha256()
    block = bytes(range(256)) * (CHUNK // 256)
    for seq in range(total // CHUNK):
        payload = block[seq % 256 :] + block[: seq % 256]
        digest.update(payload)
        peer.send(e.data(conn_id, seq, payload))
        await peer.writer.drain()
    return digest.hexdigest()


async def drain(peer: TlsPeer, total: int) -> str:
    digest, received = hashlib.sha256(), 0
    while received < total:
        message = await peer.next(timeout=30)
        digest.update(message.body)
        received += len(message.body)
    return digest.hexdigest()


def run_uvloop(coro: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(coro, 120))


def test_bulk_transfer_both_directions_under_uvloop(tmp_path: Path) -> None:
    scene = Scene(tmp_path)
    total = 32 * 1024 * 1024

    async def scenario() -> None:
        router = EdgeRouter(scene.auth, scene.pki.server_context(scene.router_leaf), name="r")
        await router.start("127.0.0.1", 0)
        try:
            host, dialer = await scene.circuit(router)
            up = asyncio.gather(pump(dialer, 7, total), drain(host, total))
            down = asyncio.gather(pump(host, 100, total), drain(dialer, total))
            (sent_up, got_up), (sent_down, got_down) = await asyncio.gather(up, down)
            assert sent_up == got_up and sent_down == got_down
            assert router.stats.bytes_relayed == 2 * total
            await host.close()
            await dialer.close()
        finally:
            await router.close()

    run_uvloop(scenario())


def test_slow_host_pauses_the_dialer_and_memory_stays_bounded(tmp_path: Path) -> None:
    scene = Scene(tmp_path)
    total = 48 * 1024 * 1024

    async def scenario() -> None:
        router = EdgeRouter(scene.auth, scene.pki.server_context(scene.router_leaf), name="r")
        await router.start("127.0.0.1", 0)
        try:
            host, dialer = await scene.circuit(router)
            sender = asyncio.ensure_future(pump(dialer, 7, total))
            peak = 0
            for _ in range(30):  # 1.5 s with a host that reads nothing
                await asyncio.sleep(0.05)
                peak = max(peak, router.queued_bytes)
            stalled_at = router.stats.bytes_relayed
            await asyncio.sleep(0.3)
            assert not sender.done(), "the dialer was never slowed down"
            assert router.stats.bytes_relayed == stalled_at, "router kept reading"
            assert peak <= server.WRITE_HIGH_WATER + 1024 * 1024, peak
            assert stalled_at < total // 2
            received = await drain(host, total)  # the host wakes up: everything arrives
            assert received == await sender
            await host.close()
            await dialer.close()
        finally:
            await router.close()

    run_uvloop(scenario())


@pytest.mark.parametrize("circuits", [50])
def test_many_circuits_on_one_channel(tmp_path: Path, circuits: int) -> None:
    scene = Scene(tmp_path)

    async def scenario() -> None:
        router = EdgeRouter(scene.auth, scene.pki.server_context(scene.router_leaf), name="r")
        await router.start("127.0.0.1", 0)
        try:
            host, dialer = await scene.circuit(router)
            for conn_id in range(10, 10 + circuits):
                dialer.send_request(e.connect(conn_id, scene.dial.token, "d"))
            for index in range(circuits):
                dial = await host.next(lambda m: m.content_type == e.CONTENT_TYPE_DIAL)
                host.reply(dial, e.dial_success(1, 1000 + index))
            connected = [await dialer.next() for _ in range(circuits)]
            assert {m.content_type for m in connected} == {e.CONTENT_TYPE_STATE_CONNECTED}
            assert {e.conn_id_of(m) for m in connected} == set(range(10, 10 + circuits))
            assert router.stats.circuits_active == circuits + 1
            await dialer.close()
            closed = set()
            while len(closed) < circuits + 1:
                message = await host.next(lambda m: m.content_type == e.CONTENT_TYPE_STATE_CLOSED)
                closed.add(e.conn_id_of(message))
            assert router.stats.circuits_active == 0
            await host.close()
        finally:
            await router.close()

    run_uvloop(scenario())
