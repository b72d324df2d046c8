"""Load generator and test server shared by the benchmarks (no tunneler imports).

Server protocol (one request per connection, 9-byte header: op + u64 size):
  b"U" size  upload: the client sends `size` bytes then half-closes; the server answers with the
             32-byte SHA-256 of what it received and closes.
  b"D" size  download: the server sends `size` pseudo-random bytes, then the 32-byte SHA-256 of
             them, and closes.
  b"E" 0     echo: every byte received is sent back until EOF.
Run as `python bench/netload.py serve PORT` (prints "ready" when listening).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import statistics
import struct
import sys
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

HEADER = struct.Struct("!cQ")
CHUNK = 256 * 1024
BLOCK = os.urandom(CHUNK)


async def _send(writer: asyncio.StreamWriter, size: int) -> bytes:
    """Write `size` bytes of BLOCK (with backpressure); their SHA-256."""
    digest, left = hashlib.sha256(), size
    while left:
        piece = BLOCK[: min(left, CHUNK)]
        digest.update(piece)
        writer.write(piece)
        await writer.drain()
        left -= len(piece)
    return digest.digest()


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        op, size = HEADER.unpack(await reader.readexactly(HEADER.size))
        if op == b"U":
            digest = hashlib.sha256()
            while chunk := await reader.read(CHUNK):
                digest.update(chunk)
            writer.write(digest.digest())
        elif op == b"D":
            writer.write(await _send(writer, size))
        elif op == b"E":
            while chunk := await reader.read(CHUNK):
                writer.write(chunk)
                await writer.drain()
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    """Serve until killed."""
    server = await asyncio.start_server(_handle, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


async def upload(port: int, size: int, host: str = "127.0.0.1") -> bool:
    """Upload `size` bytes; True when the server's SHA-256 matches (half-close honoured)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(HEADER.pack(b"U", size))
    digest = await _send(writer, size)
    writer.write_eof()
    answer = await reader.readexactly(32)
    writer.close()
    return answer == digest


async def download(port: int, size: int, host: str = "127.0.0.1") -> bool:
    """Download `size` bytes; True when they match the SHA-256 the server sends after them."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(HEADER.pack(b"D", size))
    digest, left = hashlib.sha256(), size
    while left:
        chunk = await reader.read(min(left, CHUNK))
        if not chunk:
            return False
        digest.update(chunk)
        left -= len(chunk)
    ok = await reader.readexactly(32) == digest.digest()
    writer.close()
    return ok


async def throughput(port: int, total: int, streams: int) -> float:
    """MB/s downloading `total` bytes split over `streams` concurrent connections."""
    start = time.perf_counter()
    results = await asyncio.gather(*(download(port, total // streams) for _ in range(streams)))
    elapsed = time.perf_counter() - start
    if not all(results):
        raise RuntimeError("a download arrived corrupted")
    return total / elapsed / 1e6


async def connect_latency(port: int, count: int) -> list[float]:
    """Seconds from connect() to the first echoed byte, per new connection (sequential)."""
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEADER.pack(b"E", 0) + b"x")
        await reader.readexactly(1)
        samples.append(time.perf_counter() - start)
        writer.close()
    return samples


async def rtt(port: int, count: int, host: str = "127.0.0.1", nodelay: bool = False,
              size: int = 1) -> list[float]:
    """Round-trip times of `size`-byte echoes on one established connection (TCP_NODELAY if
    asked)."""
    reader, writer = await asyncio.open_connection(host, port)
    if nodelay:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.write(HEADER.pack(b"E", 0))
    message = b"x" * size
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        writer.write(message)
        await reader.readexactly(size)
        samples.append(time.perf_counter() - start)
    writer.close()
    return samples


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed (as the daemon does), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def percentile(samples: list[float], pct: float) -> float:
    """The pct-th percentile (0..100) of samples."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def median(samples: list[float]) -> float:
    """The median."""
    return statistics.median(samples)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        with contextlib.suppress(KeyboardInterrupt):
            run(serve(int(sys.argv[2])))
    else:
        sys.exit("usage: netload.py serve PORT")
