"""RouterLink over real TLS on 127.0.0.1 against a scripted router: hello, latency, loss."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tunneler.channel.connection import ChannelConnection, MessageReceived
from tunneler.channel.message import CONTENT_TYPE_HELLO, Message
from tunneler.client import link as link_module
from tunneler.client.link import RouterLink
from tunneler.controller import pki
from tunneler.edge import messages as edge
from tunneler.errors import HelloRejected
from tunneler.identity import Identity


class ScriptedRouter(asyncio.Protocol):
    """Accepts the hello (or rejects it); answers latency probes only if `answer_probes`."""

    def __init__(self, *, accept: bool = True, answer_probes: bool = True) -> None:
        self.conn = ChannelConnection(expect_hello=True)
        self.accept, self.answer_probes = accept, answer_probes
        self.hello: Message | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        greeted = self.hello is not None
        for event in self.conn.receive_data(data):
            if isinstance(event, MessageReceived) and \
                    event.message.content_type == CONTENT_TYPE_HELLO:
                self.hello = event.message
                self.conn.send_result(event.message, self.accept, "" if self.accept else "nope")
        output = self.conn.data_to_send()  # latency replies are queued by ChannelConnection
        if self.transport is not None and (not greeted or self.answer_probes):
            self.transport.write(output)


def _identity(tmp_path: Path) -> tuple[Identity, pki.Pki]:
    keys = pki.Pki(tmp_path / "pki")
    pki.create_pki(keys, "localhost")
    ca_cert, ca_key = pki.load_cert(keys.ca_cert), pki.load_key(keys.ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "id1")]))
           .sign(key, hashes.SHA256()))
    cert = pki.issue_client_cert(csr, "id1", "test", ca_cert, ca_key)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    identity = Identity("https://localhost:1", pki.cert_pem(cert).decode(), key_pem,
                        keys.ca_cert.read_text())
    return identity, keys


def _run(tmp_path: Path, router: ScriptedRouter,
         scenario: Callable[[str, Identity], Awaitable[None]]) -> None:
    identity, keys = _identity(tmp_path)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            lambda: router, "127.0.0.1", 0,
            ssl=pki.server_ssl_context(keys, "router", require_client_cert=True))
        port = server.sockets[0].getsockname()[1]
        try:
            await scenario(f"tls://localhost:{port}", identity)
        finally:
            server.close()
    asyncio.run(main())


class Handler:
    def __init__(self) -> None:
        self.lost = False

    def handle_message(self, message: Message) -> None:
        pass

    def link_lost(self) -> None:
        self.lost = True

    def set_link_writable(self, writable: bool) -> None:
        pass


def test_hello_carries_token_and_latency_is_measured(tmp_path: Path) -> None:
    router = ScriptedRouter()

    async def scenario(url: str, identity: Identity) -> None:
        link = await RouterLink.open(url, identity.client_ssl_context(), "api-token", index=3)
        try:
            for _ in range(50):
                if link.latency is not None:
                    break
                await asyncio.sleep(0.01)
            assert link.latency is not None and 0 < link.latency < 1.0  # not 0 on loopback
        finally:
            link.close()

    _run(tmp_path, router, scenario)
    assert router.hello is not None
    assert router.hello.get_str(edge.SESSION_TOKEN_HEADER) == "api-token"
    assert router.hello.body.startswith(b"tunneler[3]@") and len(router.hello.body) <= 36


def test_rejected_hello_raises(tmp_path: Path) -> None:
    async def scenario(url: str, identity: Identity) -> None:
        with pytest.raises(HelloRejected, match="nope"):
            await RouterLink.open(url, identity.client_ssl_context(), "stale")

    _run(tmp_path, ScriptedRouter(accept=False), scenario)


def test_unanswered_latency_probe_closes_link_and_ends_flows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link_module, "LATENCY_TIMEOUT", 0.2)
    router = ScriptedRouter(answer_probes=False)

    async def scenario(url: str, identity: Identity) -> None:
        closed: list[RouterLink] = []
        link = await RouterLink.open(url, identity.client_ssl_context(), "tok",
                                     on_closed=closed.append)
        handler = Handler()
        link.register(9, handler)
        for _ in range(100):
            if closed:
                break
            await asyncio.sleep(0.02)
        assert closed == [link] and link.closed and handler.lost

    _run(tmp_path, router, scenario)



class PauseRecorder(Handler):
    def __init__(self) -> None:
        super().__init__()
        self.writable = True

    def set_link_writable(self, writable: bool) -> None:
        self.writable = writable


def test_a_burst_of_sends_pauses_the_senders_within_the_same_callback(tmp_path: Path) -> None:
    """Bytes queued in one callback reach the transport once `FLUSH_AT` are queued, so its
    high-water mark pauses the handlers before the callback returns (uvloop reads a socket up
    to 32 times per callback: holding writes to the end of the turn let 16 bulk streams
    queue ~130 MiB). The router reads nothing, so the kernel's buffers fill up too; the
    bound below holds for any buffer size a loopback socket can have."""
    router = ScriptedRouter()

    async def scenario(url: str, identity: Identity) -> None:
        link = await RouterLink.open(url, identity.client_ssl_context(), "tok")
        assert router.transport is not None
        router.transport.pause_reading()
        handler = PauseRecorder()
        link.register(9, handler)
        chunk, sent = bytes(64 * 1024), 0
        try:
            while handler.writable and sent < 64 * 1024 * 1024:   # no await: one callback
                link.send(edge.data(9, sent // len(chunk) + 1, chunk))
                sent += len(chunk)
            assert not handler.writable, f"{sent >> 20} MiB queued in one callback, no pause"
            assert sent <= 32 * 1024 * 1024
        finally:
            link.close()

    _run(tmp_path, router, scenario)
