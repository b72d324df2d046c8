"""The whole overlay as a user runs it: network, run-host and proxy as processes on 127.0.0.1.

HTTP through the proxy, 32 MiB uploads and downloads with half-close in each direction
(byte-identical by SHA-256), with end-to-end encryption on and off; a dial to a service nobody
hosts is reset; run-host and proxy exit 0 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import socket
import socketserver
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.overlay import (
    Overlay,
    ThreadingServer,
    blob,
    build_overlay,
    host_service,
    start_blob_server,
)
from tunneler.client.context import ZitiContext
from tunneler.errors import DialError

SIZE = 32 * 1024 * 1024


class _UdpEcho(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(data.upper(), self.client_address)


class _Collect:
    """An OverlaySink that collects what arrives."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.closed = asyncio.Event()
        self.arrived = asyncio.Event()

    def edge_connected(self, conn: object) -> None:
        pass

    def edge_data(self, data: bytes) -> None:
        self.chunks.append(data)
        self.arrived.set()

    def edge_eof(self) -> None:
        pass

    def edge_closed(self, abrupt: bool) -> None:
        self.closed.set()

    def set_link_writable(self, writable: bool) -> None:
        pass


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module", name="overlay")
def _overlay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Overlay]:
    web_root = tmp_path_factory.mktemp("www")
    (web_root / "index.html").write_text("hello through the overlay\n")
    web = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: _Quiet(*a, directory=str(web_root)))
    threading.Thread(target=web.serve_forever, daemon=True).start()
    blobs, blob_port = start_blob_server()
    udp = socketserver.ThreadingUDPServer(("127.0.0.1", 0), _UdpEcho)
    threading.Thread(target=udp.serve_forever, daemon=True).start()
    services = [host_service("web", web.server_address[1]),
                host_service("blob", blob_port),
                host_service("blob-plain", blob_port, encrypted=False),
                {"name": "nohost", "encryptionRequired": True, "configs": {}},
                {"name": "udp-echo", "configs": {"host.v1": {
                    "protocol": "udp", "address": "127.0.0.1", "port": udp.server_address[1]}}},
                {"name": "forward", "configs": {"host.v1": {
                    "protocol": "tcp", "forwardAddress": True,
                    "allowedAddresses": ["127.0.0.0/8", "*.localhost"],
                    "forwardPort": True, "allowedPortRanges": [
                        {"low": blob_port, "high": blob_port},
                        {"low": web.server_address[1], "high": web.server_address[1]}]}}}]
    overlay = build_overlay(tmp_path_factory.mktemp("overlay"), services)
    overlay.ports = {"web": web.server_address[1], "blob": blob_port}  # type: ignore[attr-defined]
    overlay.blobs = blobs  # type: ignore[attr-defined]
    try:
        yield overlay
    finally:
        overlay.stop_all()
        for server in (web, blobs, udp):
            server.shutdown()
            server.server_close()


def _connect(overlay: Overlay, service: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", overlay.proxy_ports[service]), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def test_http_get_through_the_proxy(overlay: Overlay) -> None:
    url = f"http://127.0.0.1:{overlay.proxy_ports['web']}/index.html"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=30) as response:
        assert response.status == 200
        assert response.read() == b"hello through the overlay\n"


@pytest.mark.parametrize("service", ["blob", "blob-plain"])
def test_upload_arrives_intact_and_half_close_is_honoured(overlay: Overlay,
                                                          service: str) -> None:
    payload = blob(SIZE, seed=2)
    with _connect(overlay, service) as sock:
        sender = threading.Thread(target=lambda: (sock.sendall(b"UP\n" + payload),
                                                  sock.shutdown(socket.SHUT_WR)))
        sender.start()
        answer = _read_all(sock)
        sender.join()
    assert answer.decode() == hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize("service", ["blob", "blob-plain"])
def test_download_arrives_intact_after_client_half_close(overlay: Overlay,
                                                         service: str) -> None:
    with _connect(overlay, service) as sock:
        sock.sendall(f"DOWN {SIZE}\n".encode())
        sock.shutdown(socket.SHUT_WR)
        received = _read_all(sock)
    assert len(received) == SIZE
    assert hashlib.sha256(received).digest() == hashlib.sha256(blob(SIZE)).digest()


def test_parallel_flows_share_the_link(overlay: Overlay) -> None:
    results: list[bool] = []

    def one(seed: int) -> None:
        payload = blob(1 << 20, seed=seed)
        with _connect(overlay, "blob") as sock:
            sock.sendall(b"UP\n" + payload)
            sock.shutdown(socket.SHUT_WR)
            results.append(_read_all(sock).decode() == hashlib.sha256(payload).hexdigest())

    threads = [threading.Thread(target=one, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 16


def test_dial_to_unhosted_service_is_reset(overlay: Overlay) -> None:
    # The reset may beat a descheduled client's connect() or send() (a busy machine):
    # wherever it lands, it is a reset, never an answer or a clean close.
    with pytest.raises(ConnectionResetError), _connect(overlay, "nohost") as sock:
        sock.sendall(b"anyone there?")
        sock.recv(100)
    assert "proxy.dial_failed" in overlay.log("proxy")


def test_host_target_down_gives_reset_not_empty_answer(tmp_path: Path) -> None:
    overlay = build_overlay(tmp_path, [host_service("down", _closed_port())])
    try:
        port = overlay.proxy_ports["down"]
        with pytest.raises(ConnectionResetError), \
                socket.create_connection(("127.0.0.1", port), 10) as sock:   # see above
            sock.recv(100)
        assert "listener.dial_refused" in overlay.log("host")
    finally:
        overlay.stop_all()
    assert overlay.exit_codes["host"] == 0
    assert overlay.exit_codes["proxy"] == 0


def _closed_port() -> int:
    server = ThreadingServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = int(server.server_address[1])
    server.server_close()
    return port


def _tcp_max(kind: str) -> int:
    """The kernel's largest autotuned TCP buffer (tcp_rmem / tcp_wmem, third field)."""
    return int(Path(f"/proc/sys/net/ipv4/tcp_{kind}").read_text().split()[2])


def test_slow_reader_keeps_memory_bounded(overlay: Overlay) -> None:
    """Backpressure end to end: a client that stops reading must not make anyone buffer it all.

    The blob server is shown to be blocked: its progress stops short of the size. Three TCP
    hops (blob→host, host→router, router→proxy) may each hold this kernel's largest buffers,
    so the size is chosen above all of them plus what each process may queue; a process that
    kept reading would let the server finish, and grow.
    """
    blobs: ThreadingServer = overlay.blobs  # type: ignore[attr-defined]
    in_kernel = 3 * (_tcp_max("rmem") + _tcp_max("wmem")) + _tcp_max("wmem") + (1 << 20)
    size = max(128 << 20, in_kernel + 3 * PROCESS_QUEUE + (32 << 20)) // (1 << 20) << 20
    processes = {name: psutil.Process(proc.pid) for name, proc in overlay.processes.items()}
    before = {name: p.memory_info().rss for name, p in processes.items()}
    with _connect(overlay, "blob") as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        start = blobs.down_sent
        sock.sendall(f"DOWN {size}\n".encode())
        sent = _until_still(lambda: blobs.down_sent - start)
        grown = {name: p.memory_info().rss - before[name] for name, p in processes.items()}
        assert sent < size, "the server was never blocked: something buffered it all"
        received = _read_all(sock)
    assert hashlib.sha256(received).digest() == hashlib.sha256(blob(size)).digest()
    assert all(growth < GROWTH_CAP for growth in grown.values()), grown


GROWTH_CAP = 48 << 20
#: more than any one process of the path queues for a flow (router and client write limits)
PROCESS_QUEUE = 8 << 20


def _until_still(progress: Callable[[], int], quiet: float = 2.0,
                 deadline: float = 90.0) -> int:
    """`progress()` once it stopped moving for `quiet` seconds (a deadline, not a guess)."""
    end = time.monotonic() + deadline
    last, since = progress(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < end, "the transfer never stalled"
        time.sleep(0.1)
        now = progress()
        if now != last:
            last, since = now, time.monotonic()
    return last


def _in_process(overlay: Overlay, scenario: Any) -> Any:
    async def run() -> Any:
        ctx = ZitiContext(overlay.directory / "client1.json")
        await ctx.start()
        try:
            return await scenario(ctx)
        finally:
            await ctx.close()
    return asyncio.run(run())


def test_udp_host_target_one_datagram_per_message(overlay: Overlay) -> None:
    async def scenario(ctx: ZitiContext) -> list[bytes]:
        sink = _Collect()
        conn = await ctx.dial("udp-echo", sink, app_data={"dst_protocol": "udp"})
        for word in (b"ping", b"pong" * 1000):
            sink.arrived.clear()
            conn.write(word)
            await asyncio.wait_for(sink.arrived.wait(), 10)
        conn.close()
        return sink.chunks

    assert _in_process(overlay, scenario) == [b"PING", b"PONG" * 1000]


def test_forwarded_address_and_port_pick_the_target(overlay: Overlay) -> None:
    ports = overlay.ports  # type: ignore[attr-defined]

    async def scenario(ctx: ZitiContext) -> tuple[bytes, str]:
        sink = _Collect()
        conn = await ctx.dial("forward", sink, app_data={
            "dst_protocol": "tcp", "dst_hostname": "localhost", "dst_ip": "127.0.0.1",
            "dst_port": ports["web"]})
        conn.write(b"GET /index.html HTTP/1.0\r\n\r\n")
        conn.write_eof()
        await asyncio.wait_for(sink.closed.wait(), 10)
        with pytest.raises(DialError) as refused:
            await ctx.dial("forward", _Collect(), app_data={
                "dst_protocol": "tcp", "dst_ip": "127.0.0.1", "dst_port": 22})
        return b"".join(sink.chunks), str(refused.value)

    answer, refusal = _in_process(overlay, scenario)
    assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"hello through the overlay\n")
    assert "port '22' is not allowed" in refusal
