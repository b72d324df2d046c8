"""The edge router over real TLS on 127.0.0.1: hello, probes, full circuits, failures."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from router_pki import Leaf, TestPki
from router_support import MemoryAuthority, TlsPeer, hello

from tunneler.channel.message import (
    CONTENT_TYPE_LATENCY,
    LATENCY_PROBE_TIME_HEADER,
    MAGIC,
    PREFIX,
    Message,
)
from tunneler.edge import crypto
from tunneler.edge import messages as e
from tunneler.router import server
from tunneler.router.authority import ApiSessionInfo
from tunneler.router.server import EdgeRouter


@dataclass
class Net:
    pki: TestPki
    router_leaf: Leaf
    host: Leaf
    dialer: Leaf
    other: Leaf
    foreign: TestPki
    foreign_leaf: Leaf


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Net:
    directory: Path = tmp_path_factory.mktemp("router-pki")
    pki = TestPki(directory)
    foreign = TestPki(directory, "foreign CA")
    return Net(pki, pki.issue("router", server=True), pki.issue("host"), pki.issue("dialer"),
               pki.issue("other"), foreign, foreign.issue("intruder"))


@contextlib.asynccontextmanager
async def running(net: Net, auth: MemoryAuthority) -> AsyncIterator[EdgeRouter]:
    router = EdgeRouter(auth, net.pki.server_context(net.router_leaf), name="test-router")
    await router.start("127.0.0.1", 0)
    try:
        yield router
    finally:
        await router.close()


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 20))


class Scene:
    """Identities host and dialer with Bind/Dial sessions on service `svc`."""

    def __init__(self, net: Net, *, encrypted: bool = False) -> None:
        self.net = net
        self.auth = MemoryAuthority()
        self.host_api = self.auth.add_identity("host", net.host.fingerprint)
        self.dialer_api = self.auth.add_identity("dialer", net.dialer.fingerprint)
        self.bind = self.auth.add_session(self.host_api, "svc", "Bind", encrypted=encrypted)
        self.dial = self.auth.add_session(self.dialer_api, "svc", "Dial", encrypted=encrypted)

    async def peer(self, port: int, leaf: Leaf, api: ApiSessionInfo) -> TlsPeer:
        return await TlsPeer.authenticated(port, self.net.pki.client_context(leaf), api.token)

    async def bound_host(self, port: int, key: crypto.KeyPair | None = None) -> TlsPeer:
        host = await self.peer(port, self.net.host, self.host_api)
        reply = await host.exchange(e.bind(1, self.bind.token, "host",
                                           public_key=key.public if key else None))
        assert reply.content_type == e.CONTENT_TYPE_STATE_CONNECTED
        return host

    async def circuit(self, port: int) -> tuple[TlsPeer, TlsPeer]:
        """Host bound and dialer connected (conn 7 <-> child 100), unencrypted."""
        host = await self.bound_host(port)
        dialer = await self.peer(port, self.net.dialer, self.dialer_api)
        connected = asyncio.ensure_future(dialer.exchange(e.connect(7, self.dial.token, "dialer")))
        dial = await host.next()
        host.reply(dial, e.dial_success(1, 100))
        assert (await host.next()).content_type == e.CONTENT_TYPE_STATE_CONNECTED
        assert (await connected).content_type == e.CONTENT_TYPE_STATE_CONNECTED
        return host, dialer


def test_hello_accepted_and_latency_probe_answered(net: Net) -> None:
    async def scenario() -> None:
        scene = Scene(net)
        async with running(net, scene.auth) as router:
            peer = await scene.peer(router.port, net.dialer, scene.dialer_api)
            probe = Message(CONTENT_TYPE_LATENCY).set_uint64(LATENCY_PROBE_TIME_HEADER, 77)
            answer = await peer.exchange(probe)
            assert answer.get_bool(2) and answer.get_int(LATENCY_PROBE_TIME_HEADER) == 77
            assert router.stats.channels_active == 1 and router.pending == 0
            await peer.close()
    run(scenario)


@pytest.mark.parametrize("case", ["bad_token", "wrong_cert"])
def test_hello_rejected_then_closed(net: Net, case: str) -> None:
    async def scenario() -> None:
        scene = Scene(net)
        async with running(net, scene.auth) as router:
            leaf = net.other if case == "wrong_cert" else net.dialer
            token = "bogus" if case == "bad_token" else scene.dialer_api.token
            peer = await TlsPeer.open(router.port, net.pki.client_context(leaf))
            reply = await peer.exchange(hello(token))
            assert not reply.get_bool(2) and reply.body
            await peer.wait_closed_by_router()
            label = "invalid_api_session" if case == "bad_token" else "cert_mismatch"
            assert router.stats.hello_failures[label] == 1
            await peer.close()
    run(scenario)


def test_cert_from_another_ca_fails_tls(net: Net) -> None:
    async def scenario() -> None:
        scene = Scene(net)
        async with running(net, scene.auth) as router:
            context = net.pki.client_context(None)
            context.load_cert_chain(net.foreign_leaf.cert_path, net.foreign_leaf.key_path)
            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
                peer = await TlsPeer.open(router.port, context)
                await peer.exchange(hello(scene.dialer_api.token))
            for _ in range(50):
                if router.stats.handshake_failures:
                    break
                await asyncio.sleep(0.02)
            assert router.stats.handshake_failures == 1 and router.pending == 0
    run(scenario)


def test_hello_deadline(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "HELLO_TIMEOUT", 0.2)

    async def scenario() -> None:
        scene = Scene(net)
        async with running(net, scene.auth) as router:
            peer = await TlsPeer.open(router.port, net.pki.client_context(net.dialer))
            await peer.wait_closed_by_router(timeout=3)
            assert router.stats.hello_failures["timeout"] == 1 and router.pending == 0
            await peer.close()
    run(scenario)


def test_encrypted_circuit_end_to_end(net: Net) -> None:
    async def scenario() -> None:
        scene = Scene(net, encrypted=True)
        async with running(net, scene.auth) as router:
            bind_keys, dial_keys = crypto.KeyPair.generate(), crypto.KeyPair.generate()
            host = await scene.bound_host(router.port, bind_keys)
            dialer = await scene.peer(router.port, net.dialer, scene.dialer_api)
            connected = asyncio.ensure_future(dialer.exchange(
                e.connect(7, scene.dial.token, "dialer", public_key=dial_keys.public)))
            dial = await host.next()
            assert dial.content_type == e.CONTENT_TYPE_DIAL
            host_session = crypto.server_keys(bind_keys, dial.headers[e.PUBLIC_KEY_HEADER])
            host.reply(dial, e.dial_success(1, 100))
            assert (await host.next()).content_type == e.CONTENT_TYPE_STATE_CONNECTED
            reply = await connected
            dialer_session = crypto.client_keys(dial_keys, reply.headers[e.PUBLIC_KEY_HEADER])

            # each side sends its stream header first, then ciphertext
            host_tx, dialer_tx = (crypto.Encryptor(host_session.tx),
                                  crypto.Encryptor(dialer_session.tx))
            host_rx, dialer_rx = (crypto.Decryptor(host_session.rx),
                                  crypto.Decryptor(dialer_session.rx))
            dialer.send(e.data(7, 1, dialer_tx.header))
            dialer.send(e.data(7, 2, dialer_tx.encrypt(b"question")))
            host.send(e.data(100, 1, host_tx.header))
            host.send(e.data(100, 2, host_tx.encrypt(b"answer")))
            assert host_rx.feed((await host.next()).body) is None
            assert host_rx.feed((await host.next()).body) == b"question"
            assert dialer_rx.feed((await dialer.next()).body) is None
            assert dialer_rx.feed((await dialer.next()).body) == b"answer"

            dialer.send(e.fin(7, 3))
            fin = await host.next()
            assert e.is_fin(fin) and e.conn_id_of(fin) == 100
            host.send(e.state_closed(100))
            closed = await dialer.next()
            assert closed.content_type == e.CONTENT_TYPE_STATE_CLOSED and closed.body
            assert router.stats.circuits_active == 0
            await host.close()
            await dialer.close()
    run(scenario)


def test_plain_circuit_relays_a_few_mebibytes_intact(net: Net) -> None:
    async def scenario() -> None:
        scene = Scene(net)
        async with running(net, scene.auth) as router:
            host, dialer = await scene.circuit(router.port)
            chunks = [bytes([i % 251]) * 65536 for i in range(64)]
            for seq, chunk in enumerate(chunks):
                dialer.send(e.data(7, seq, chunk))
            received = bytearray()
            while len(received) < 64 * 65536:
                message = await host.next()
                assert e.conn_id_of(message) == 100
                received += message.body
            assert bytes(received) == b"".join(chunks)
            assert router.stats.bytes_relayed == len(received)
            await host.close()
            await dialer.close()
    run(scenario)


def test_connect_failures_over_tls(net: Net) -> None:
    async def scenario() -> None:
        scene = Scene(net)
        async with running(net, scene.auth) as router:
            dialer = await scene.peer(router.port, net.dialer, scene.dialer_api)
            refused = await dialer.exchange(e.connect(7, scene.dial.token, "dialer"))
            assert e.body_text(refused) == "service svc has no terminators"
            refused = await dialer.exchange(e.connect(8, "expired", "dialer"))
            assert e.body_text(refused) == e.INVALID_SESSION
            no_permit = scene.auth.add_session(scene.host_api, "svc2", "Bind", permit=False)
            host = await scene.peer(router.port, net.host, scene.host_api)
            refused = await host.exchange(e.bind(1, no_permit.token, "host"))
            assert refused.content_type == e.CONTENT_TYPE_STATE_CLOSED
            assert "not permitted" in e.body_text(refused)
            await host.close()
            await dialer.close()
    run(scenario)


def test_bad_frame_closes_only_its_channel(net: Net) -> None:
    async def scenario() -> None:
        scene = Scene(net)
        async with running(net, scene.auth) as router:
            host, dialer = await scene.circuit(router.port)
            other_api = scene.auth.add_identity("other", net.other.fingerprint)
            intruder = await scene.peer(router.port, net.other, other_api)
            intruder.writer.write(PREFIX.pack(MAGIC, e.CONTENT_TYPE_DATA, 9, 0, 1 << 30))
            await intruder.wait_closed_by_router()
            truncated = await scene.peer(router.port, net.other, other_api)
            truncated.writer.write(PREFIX.pack(MAGIC, e.CONTENT_TYPE_DATA, 9, 0, 100) + b"x")
            await truncated.close()
            dialer.send(e.data(7, 1, b"still here"))
            assert (await host.next()).body == b"still here"
            host.send(e.data(100, 1, b"and back"))
            assert (await dialer.next()).body == b"and back"
            assert router.stats.protocol_violations == 1
            await intruder.close()
            await host.close()
            await dialer.close()
    run(scenario)


def test_host_drop_closes_dialer_circuit(net: Net) -> None:
    async def scenario() -> None:
        scene = Scene(net)
        async with running(net, scene.auth) as router:
            host, dialer = await scene.circuit(router.port)
            await host.close()
            closed = await dialer.next()
            assert closed.content_type == e.CONTENT_TYPE_STATE_CLOSED
            assert e.conn_id_of(closed) == 7 and closed.body
            refused = await dialer.exchange(e.connect(8, scene.dial.token, "dialer"))
            assert "no terminators" in e.body_text(refused)
            await dialer.close()
    run(scenario)


def test_a_full_pending_list_evicts_the_oldest_so_a_real_client_gets_in(
        net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "MAX_PENDING", 1)

    async def until(check: Callable[[], bool]) -> None:
        for _ in range(250):
            if check():
                return
            await asyncio.sleep(0.02)
        raise AssertionError("condition not reached")

    async def scenario() -> None:
        scene = Scene(net)
        async with running(net, scene.auth) as router:
            old_reader, old = await asyncio.open_connection("127.0.0.1", router.port)  # no TLS
            await until(lambda: router.pending == 1)
            new_reader, new = await asyncio.open_connection("127.0.0.1", router.port)
            assert await asyncio.wait_for(old_reader.read(), 3) == b""   # made room
            await until(lambda: router.stats.pending_evicted == 1 and router.pending == 1)
            peer = await scene.peer(router.port, net.dialer, scene.dialer_api)  # served
            assert await asyncio.wait_for(new_reader.read(), 3) == b""
            assert router.stats.pending_evicted == 2
            await peer.close()
            old.close()
            new.close()
            await until(lambda: router.pending == 0)
    run(scenario)
