"""The whole overlay as a user runs it: network, run-host and proxy as processes on 127.0.0.1.

HTTP through the proxy, 32 MiB uploads and downloads with half-close in each direction
(byte-identical by SHA-256), with end-to-end encryption on and off; a dial to a service nobody
hosts is reset; run-host and proxy exit 0 on SIGTERM.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

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

SIZE = 32 * 1024 * 1024


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
    services = [host_service("web", web.server_address[1]),
                host_service("blob", blob_port),
                host_service("blob-plain", blob_port, encrypted=False),
                {"name": "nohost", "encryptionRequired": True, "configs": {}}]
    overlay = build_overlay(tmp_path_factory.mktemp("overlay"), services)
    try:
        yield overlay
    finally:
        overlay.stop_all()
        for server in (web, blobs):
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
    with _connect(overlay, "nohost") as sock:
        sock.sendall(b"anyone there?")
        with pytest.raises(ConnectionResetError):
            sock.recv(100)
    assert "proxy.dial_failed" in overlay.log("proxy")


def test_host_target_down_gives_reset_not_empty_answer(tmp_path: Path) -> None:
    overlay = build_overlay(tmp_path, [host_service("down", _closed_port())])
    try:
        port = overlay.proxy_ports["down"]
        with socket.create_connection(("127.0.0.1", port), 10) as sock, \
                pytest.raises(ConnectionResetError):
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


def test_slow_reader_keeps_memory_bounded(overlay: Overlay) -> None:
    """Backpressure end to end: a client that stops reading must not make anyone buffer it all."""
    size = 128 * 1024 * 1024
    processes = {name: psutil.Process(overlay.processes[name].pid) for name in ("proxy", "host")}
    before = {name: p.memory_info().rss for name, p in processes.items()}
    with _connect(overlay, "blob") as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(f"DOWN {size}\n".encode())
        time.sleep(3)
        grown = {name: p.memory_info().rss - before[name] for name, p in processes.items()}
        received = _read_all(sock)
    assert hashlib.sha256(received).digest() == hashlib.sha256(blob(size)).digest()
    assert all(growth < 48 * 1024 * 1024 for growth in grown.values()), grown
