"""A router flooded with connections that never finish (issue 9, item 6).

`network serve` (a real process) gets 2,000 TCP connections that never start TLS and 2,000
that finish TLS with a valid client certificate but never send Hello. Meanwhile a new
client process (a second `tunneler proxy`) connects to the router and its flow is served.
Every flood connection is closed by the router (eviction of the oldest pending one, or the
handshake and hello deadlines), and the router's memory and descriptors stay bounded.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import ssl
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.support.overlay import (
    Overlay,
    build_overlay,
    echo_server,
    free_port,
    host_service,
    roundtrip,
    wait_for_port,
)
from tunneler.identity import load_identity
from tunneler.router import server

FLOOD = 2_000
RSS_GROWTH_LIMIT = 96 << 20
DEADLINE = server.HANDSHAKE_TIMEOUT + server.HELLO_TIMEOUT + 20


@pytest.fixture(name="overlay")
def _overlay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Overlay]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 3 * FLOOD:
        pytest.skip(f"needs {3 * FLOOD} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        with echo_server() as port:
            overlay = build_overlay(tmp_path_factory.mktemp("flood"), [host_service("echo", port)])
            try:
                yield overlay
            finally:
                overlay.stop_all()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _router_port(overlay: Overlay) -> int:
    config = json.loads((overlay.directory / "net" / "network.json").read_text())
    return int(config["router_port"])


async def _silent(port: int, count: int) -> list[asyncio.StreamReader]:
    readers = []
    for _ in range(count):
        reader, _writer = await asyncio.open_connection("127.0.0.1", port)
        readers.append(reader)
    return readers


async def _no_hello(port: int, context: ssl.SSLContext, count: int,
                    ) -> tuple[list[asyncio.StreamReader], int]:
    """TLS connections that then say nothing; (readers, how many the router cut first)."""
    readers, cut = [], 0
    for _ in range(count):
        try:
            reader, _writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="localhost")
            readers.append(reader)
        except (OSError, ssl.SSLError):
            cut += 1   # evicted before its handshake finished: a flood connection closed
    return readers, cut


async def _closed(readers: list[asyncio.StreamReader], deadline: float) -> int:
    async def one(reader: asyncio.StreamReader) -> bool:
        try:
            return await asyncio.wait_for(reader.read(), deadline) == b""
        except (OSError, ssl.SSLError):
            return True
        except TimeoutError:
            return False
    return sum(await asyncio.gather(*(one(r) for r in readers)))


def test_four_thousand_stuck_connections_are_closed_and_a_real_client_is_served(
        overlay: Overlay) -> None:
    port = _router_port(overlay)
    router = psutil.Process(overlay.processes["network"].pid)
    before_rss, before_fds = router.memory_info().rss, router.num_fds()
    context = load_identity(overlay.directory / "client1.json").client_ssl_context()

    async def flood() -> dict[str, float]:
        started = time.monotonic()
        silent = await _silent(port, FLOOD)
        no_hello, cut = await _no_hello(port, context, FLOOD)
        peak_rss, peak_fds = router.memory_info().rss, router.num_fds()
        # a new client process while the flood is on: its router link gets through
        proxy_port = free_port()
        overlay.start("proxy2", "proxy", "--identity", "client1.json", f"echo={proxy_port}")
        await asyncio.to_thread(wait_for_port, proxy_port)
        served_at = time.monotonic()
        await asyncio.to_thread(lambda: roundtrip(proxy_port, b"real client").close())
        served = time.monotonic() - served_at
        closed = await _closed(silent + no_hello, DEADLINE)
        return {"closed": closed + cut, "served_s": served, "flood_s": time.monotonic() - started,
                "peak_rss": peak_rss, "peak_fds": peak_fds}

    result = asyncio.run(flood())
    after_fds = router.num_fds()
    growth = result["peak_rss"] - before_rss
    print(f"router flood: {2 * FLOOD} stuck connections, {result['closed']:.0f} closed by the "
          f"router, real client served in {result['served_s']:.2f} s, RSS growth "
          f"{growth / 2**20:.1f} MiB, fds {before_fds} -> {result['peak_fds']:.0f} -> {after_fds}")
    assert result["closed"] == 2 * FLOOD
    assert growth <= RSS_GROWTH_LIMIT
    assert result["peak_fds"] <= before_fds + server.MAX_PENDING + 2 * FLOOD
    assert after_fds <= before_fds + server.MAX_PENDING
    assert "proxy2" in overlay.processes and overlay.processes["proxy2"].poll() is None
    socket.create_connection(("127.0.0.1", port), timeout=5).close()   # still accepting
