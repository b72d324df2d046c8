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
from router_support import READER_LIMIT, MemoryAuthority, TlsPeer

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

    async def circuit(self, router: EdgeRouter, *, host_rcvbuf: int = 0,
                      host_limit: int = READER_LIMIT) -> tuple[TlsPeer, TlsPeer]:
        host = await TlsPeer.authenticated(router.port, self.pki.client_context(self.host_leaf),
                                           self.host_api.token, rcvbuf=host_rcvbuf,
                                           limit=host_limit)
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


def _tcp_max(kind: str) -> int:
    """The kernel's largest autotuned TCP buffer (tcp_rmem / tcp_wmem, third field)."""
    return int(Path(f"/proc/sys/net/ipv4/tcp_{kind}").read_text().split()[2])


async def _until_stalled(router: EdgeRouter, quiet: int = 10, deadline: float = 60.0) -> int:
    """Relayed bytes once `quiet` polls in a row (0.1 s apart, each giving the router the loop)
    saw no progress: the stall is observed, not assumed after a fixed time."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    last, still = -1, 0
    while still < quiet:
        assert loop.time() < end, "the router never stopped relaying"
        await asyncio.sleep(0.1)
        now = router.stats.bytes_relayed
        still = still + 1 if now == last else 0
        last = now
    return last


HOST_RCVBUF = 64 * 1024
HOST_LIMIT = 64 * 1024


def test_slow_host_pauses_the_dialer_and_memory_stays_bounded(tmp_path: Path) -> None:
    scene = Scene(tmp_path)
    # What may legitimately sit in buffers between the dialer and a host that reads nothing:
    # computed from this kernel's maxima (no assumption about buffer sizes), and the transfer
    # is made twice that, so a dialer that finishes before the host reads was never paused.
    # relayed counts what the router handed to the host's transport (its queue included)
    downstream = (_tcp_max("wmem") + 4 * HOST_RCVBUF + 2 * HOST_LIMIT
                  + server.WRITE_HIGH_WATER + (2 << 20))
    upstream = _tcp_max("rmem") + _tcp_max("wmem") + server.WRITE_HIGH_WATER + (1 << 20)
    total = max(48 << 20, 2 * (upstream + downstream)) // CHUNK * CHUNK

    async def scenario() -> None:
        router = EdgeRouter(scene.auth, scene.pki.server_context(scene.router_leaf), name="r")
        await router.start("127.0.0.1", 0)
        try:
            host, dialer = await scene.circuit(router, host_rcvbuf=HOST_RCVBUF,
                                               host_limit=HOST_LIMIT)
            sender = asyncio.ensure_future(pump(dialer, 7, total))
            peak = 0

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, router.queued_bytes)
                    await asyncio.sleep(0.01)

            watcher = asyncio.ensure_future(watch())
            stalled_at = await _until_stalled(router)
            watcher.cancel()
            assert not sender.done(), "the dialer was never slowed down"
            assert peak <= server.WRITE_HIGH_WATER + (1 << 20), peak
            assert stalled_at <= downstream, (stalled_at, downstream)
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
