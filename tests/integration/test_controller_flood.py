"""The controller under hostile load (issue 9, item 6), with `network serve` a real process.

At once: 500 slow clients (TLS done, half a request line, then silence), 10 MiB request
bodies, and logins with certificates from a foreign CA as fast as the test can make them.
Meanwhile a new identity enrolls and a new client process authenticates, gets a session and
dials through the router. Every slow client is closed by the header deadline, every big body
gets 413 without being read into memory, every foreign certificate is refused, and the
controller's memory stays bounded.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.overlay import (
    Overlay,
    build_overlay,
    echo_server,
    free_port,
    host_service,
    roundtrip,
    tunneler,
    wait_for_port,
)
from tests.support.pki import client_context, foreign_client
from tunneler.controller.api import READ_HEADER_TIMEOUT

SLOW_CLIENTS = 500
BIG_BODIES = 20
BIG = 10 << 20
BAD_LOGIN_SECONDS = 5.0
BAD_LOGIN_RATE = 1200.0   # offered per second (pacing loses a little: at least 1,000)
ATTACKERS = 16            # threads
ATTACKER = "127.0.0.2"    # the flood's source; the real client connects from 127.0.0.1
RSS_GROWTH_LIMIT = 128 << 20


@pytest.fixture(name="overlay")
def _overlay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Overlay]:
    with echo_server() as port:
        overlay = build_overlay(tmp_path_factory.mktemp("ctrl-flood"),
                                [host_service("echo", port)], token_only=("late",))
        try:
            yield overlay
        finally:
            overlay.stop_all()


def _controller_port(overlay: Overlay) -> int:
    config = json.loads((overlay.directory / "net" / "network.json").read_text())
    return int(config["controller_port"])


async def _slow(port: int, trusted: ssl.SSLContext) -> list[asyncio.StreamReader]:
    readers = []
    for _ in range(SLOW_CLIENTS):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trusted,
                                                       server_hostname="localhost")
        writer.write(b"POST /edge/client/v1/authenticate?method=cert HTTP/1.1\r\nHost: x\r\n")
        readers.append(reader)
    return readers


async def _big_bodies(port: int, trusted: ssl.SSLContext) -> Counter[int]:
    statuses: Counter[int] = Counter()
    body = b"{" + b" " * BIG + b"}"
    for _ in range(BIG_BODIES):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trusted,
                                                       server_hostname="localhost")
        writer.write(b"POST /edge/client/v1/authenticate?method=password HTTP/1.1\r\n"
                     b"Host: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode())
        writer.write(body[: 1 << 20])   # the start of it; the answer comes before the rest
        try:
            line = await asyncio.wait_for(reader.readline(), 30)
            statuses[int(line.split()[1])] += 1
        except (OSError, IndexError, ValueError, TimeoutError):
            statuses[0] += 1
        writer.close()
    return statuses


def _bad_logins(port: int, foreign: ssl.SSLContext, seconds: float) -> tuple[Counter[str], float]:
    """Logins with a foreign CA's certificate from 127.0.0.2, paced at BAD_LOGIN_RATE by
    threads on blocking sockets (the handshakes run outside the GIL); the outcomes and the
    rate actually offered."""
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    start = time.monotonic()

    def one(worker: int) -> None:
        sent = 0
        while (due := start + (sent * ATTACKERS + worker) / BAD_LOGIN_RATE) < start + seconds:
            time.sleep(max(0.0, due - time.monotonic()))
            sent += 1
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10,
                                              source_address=(ATTACKER, 0)) as raw, \
                        foreign.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"POST /edge/client/v1/authenticate?method=cert HTTP/1.1\r\n"
                                b"Host: x\r\nContent-Length: 0\r\n\r\n")
                    line = tls.recv(64)
                    outcome = line.split()[1].decode() if line else "closed"
            except (OSError, ssl.SSLError):
                outcome = "refused"
            with lock:
                outcomes[outcome] += 1

    threads = [threading.Thread(target=one, args=(i,)) for i in range(ATTACKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes, sum(outcomes.values()) / (time.monotonic() - start)


async def _closed(readers: list[asyncio.StreamReader], deadline: float) -> int:
    async def one(reader: asyncio.StreamReader) -> bool:
        try:
            await asyncio.wait_for(reader.read(), deadline)
            return True
        except (OSError, ssl.SSLError):
            return True
        except TimeoutError:
            return False
    return sum(await asyncio.gather(*(one(r) for r in readers)))


def test_slow_clients_big_bodies_and_foreign_certificates_while_a_real_client_works(
        overlay: Overlay, tmp_path: Path) -> None:
    port = _controller_port(overlay)
    network = psutil.Process(overlay.processes["network"].pid)
    before = network.memory_info().rss
    ca = overlay.directory / "net" / "pki" / "ca.pem"
    trusted, foreign = client_context(ca), client_context(ca, foreign_client(tmp_path))

    def real_client() -> float:
        started = time.monotonic()
        tunneler(overlay.directory, "enroll", "--jwt", "late.jwt", "--identity", "late.json")
        proxy_port = free_port()
        overlay.start("proxy2", "proxy", "--identity", "client1.json", f"echo={proxy_port}")
        wait_for_port(proxy_port)
        roundtrip(proxy_port, b"served during the flood").close()
        return time.monotonic() - started

    async def flood() -> tuple[int, Counter[int], tuple[Counter[str], float], float, int]:
        slow = await _slow(port, trusted)
        logins = asyncio.ensure_future(asyncio.to_thread(_bad_logins, port, foreign,
                                                         BAD_LOGIN_SECONDS))
        bodies = asyncio.ensure_future(_big_bodies(port, trusted))
        served = await asyncio.to_thread(real_client)
        peak = network.memory_info().rss
        closed = await _closed(slow, READ_HEADER_TIMEOUT + 30)
        return closed, await bodies, await logins, served, peak

    closed, bodies, (logins, rate), served, peak = asyncio.run(flood())
    print(f"controller flood: {closed}/{SLOW_CLIENTS} slow clients closed, big bodies "
          f"{dict(bodies)}, foreign-certificate logins {dict(logins)} (offered {rate:.0f}/s "
          f"from {ATTACKER}), real client enrolled and served in {served:.2f} s, RSS growth "
          f"{(peak - before) / 2**20:.1f} MiB")
    assert closed == SLOW_CLIENTS
    assert bodies == Counter({413: BIG_BODIES})
    assert "200" not in logins and sum(logins.values()) > 0
    throttled = [json.loads(line) for line in overlay.log("network").splitlines()
                 if "http.source_throttled" in line]
    assert [t["source"] for t in throttled] == [ATTACKER], throttled
    assert peak - before <= RSS_GROWTH_LIMIT
    assert (overlay.directory / "late.json").exists()
