"""Transfer benchmark through the real overlay: proxy → router → run-host → local server.

Usage: `python bench/overlay_transfer.py [SIZE_MIB] [--plain]` from the repository root.
Prints MB/s for an upload and a download of SIZE_MIB (default 256) through the overlay and
directly to the server (baseline, same run), and whether the SHA-256 of what arrived matches.
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.overlay import blob, build_overlay, host_service, start_blob_server


def _read_all(sock: socket.socket) -> tuple[bytes, float]:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks), time.perf_counter()


def upload(port: int, payload: bytes) -> tuple[float, bool]:
    """Seconds for `payload` to arrive (server answers its sha256 after EOF), and the match."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.perf_counter()
        sender = threading.Thread(target=lambda: (sock.sendall(b"UP\n" + payload),
                                                  sock.shutdown(socket.SHUT_WR)))
        sender.start()
        answer, finished = _read_all(sock)
        sender.join()
    return finished - started, answer.decode() == hashlib.sha256(payload).hexdigest()


def download(port: int, size: int, expected: bytes) -> tuple[float, bool]:
    """Seconds to receive `size` bytes, and whether their sha256 is `expected`."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.perf_counter()
        sock.sendall(f"DOWN {size}\n".encode())
        sock.shutdown(socket.SHUT_WR)
        data, finished = _read_all(sock)
    return finished - started, hashlib.sha256(data).digest() == expected


def main() -> int:
    """Run the benchmark; exit 1 if any transfer arrived corrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size_mib", type=int, nargs="?", default=256)
    parser.add_argument("--plain", action="store_true", help="service without encryption")
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    payload = blob(size, seed=2)
    expected_down = hashlib.sha256(blob(size)).digest()
    server, port = start_blob_server()
    ok = True
    with tempfile.TemporaryDirectory() as scratch:
        overlay = build_overlay(Path(scratch), [host_service("blob", port,
                                                             encrypted=not args.plain)])
        try:
            for label, target in (("direct", port), ("overlay", overlay.proxy_ports["blob"])):
                for kind, (seconds, match) in (("upload", upload(target, payload)),
                                               ("download", download(target, size,
                                                                     expected_down))):
                    ok = ok and match
                    print(f"{label:8} {kind:8} {size / seconds / 1e6:9.1f} MB/s  "
                          f"sha256 {'match' if match else 'MISMATCH'}")
        finally:
            overlay.stop_all()
            server.shutdown()
            server.server_close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
