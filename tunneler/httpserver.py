"""An aiohttp application served by asyncio's own server: the controller API and the LLM stub.

`HttpListener.start(app, host, port, ssl_context, ...)` sets up an ``AppRunner`` (no access log)
and listens through ``loop.create_server``, so TLS gets a handshake timeout (aiohttp's sites
offer none); it returns the bound port. ``close()`` stops listening, then closes the open
connections (handlers get the runner's ``shutdown_timeout``). ``json_response`` renders a JSON
body.

With a `HandshakeGuard` (and TLS) the listener runs its own accept loop instead: a connection
from a source over its failed-handshake budget is closed at accept, before any TLS work; every
other one goes through `loop.connect_accepted_socket`, whose failure (a foreign certificate, a
broken or abandoned handshake) is charged to its source.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
import time
from typing import Any

from aiohttp import web

from tunneler.handshake_guard import HandshakeGuard
from tunneler.log import get_logger

log = get_logger("http")

DEFAULT_SHUTDOWN_TIMEOUT = 60.0  # aiohttp's own default
BACKLOG = 1024


def json_response(payload: Any, status: int = 200) -> web.Response:
    """`payload` as an `application/json` response."""
    return web.Response(body=json.dumps(payload).encode(), status=status,
                        content_type="application/json")


def _listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address of `host` (as asyncio's
    `create_server` makes them: SO_REUSEADDR, IPv6 sockets IPv6-only)."""
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if not port and len(sockets) > 1:   # port 0: every address on the first's port
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def _sends_something(sock: socket.socket, timeout: float) -> bool:
    """Wait until the peer sent its first bytes (left in the socket for TLS) or closed: True
    if it sent something.

    Raises:
        TimeoutError: it sent nothing for `timeout` seconds.
    """
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(sock.fileno(), ready)
    try:
        async with asyncio.timeout(timeout):
            await readable
    finally:
        loop.remove_reader(sock.fileno())
    return bool(sock.recv(1, socket.MSG_PEEK))


class HttpListener:
    """One aiohttp application on one listening socket."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, app: web.Application, host: str, port: int,
                    ssl_context: ssl.SSLContext | None, *, keepalive_timeout: float,
                    handshake_timeout: float,
                    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
                    guard: HandshakeGuard | None = None) -> int:
        """Listen on host:port (0: any free port); returns the bound port. With `guard`
        (and TLS), sources that keep failing handshakes are refused at accept.

        Raises:
            OSError: the address cannot be bound (nothing is left running).
        """
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=keepalive_timeout,
                                     shutdown_timeout=shutdown_timeout)
        await self._runner.setup()
        protocol_factory = self._runner.server
        assert protocol_factory is not None  # set by setup()
        loop = asyncio.get_running_loop()
        try:
            if guard is not None and ssl_context is not None:
                self._sockets = _listening_sockets(host, port)
                for sock in self._sockets:
                    self._spawn(self._accept(sock, protocol_factory, ssl_context,
                                             handshake_timeout, guard))
                return int(self._sockets[0].getsockname()[1])
            self._server = await loop.create_server(
                protocol_factory, host, port, ssl=ssl_context,
                ssl_handshake_timeout=None if ssl_context is None else handshake_timeout)
        except OSError:
            await self.close()
            raise
        return int(self._server.sockets[0].getsockname()[1])

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, listening: socket.socket, protocol_factory: web.Server,
                      ssl_context: ssl.SSLContext, handshake_timeout: float,
                      guard: HandshakeGuard) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listening)
            except OSError as exc:   # EMFILE and the like: the next accept may work
                log.warning("http.accept_failed", error=exc.strerror or str(exc))
                await asyncio.sleep(0.1)
                continue
            source = str(peer[0]) if isinstance(peer, tuple) else ""
            if not guard.admit(source, time.monotonic()):
                with contextlib.suppress(OSError):   # a reset, not a TLS alert: no work
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                continue
            self._spawn(self._handshake(sock, source, protocol_factory, ssl_context,
                                        handshake_timeout, guard))

    async def _handshake(self, sock: socket.socket, source: str,
                         protocol_factory: web.Server, ssl_context: ssl.SSLContext,
                         handshake_timeout: float, guard: HandshakeGuard) -> None:
        try:
            if not await _sends_something(sock, handshake_timeout):
                sock.close()   # a port probe: closed before any TLS work, not charged
                return
            await asyncio.get_running_loop().connect_accepted_socket(
                protocol_factory, sock, ssl=ssl_context, ssl_handshake_timeout=handshake_timeout)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            sock.close()
            if guard.failed(source, time.monotonic()):
                log.warning("http.source_throttled", source=source, budget=guard.budget,
                            window=guard.window)

    async def close(self) -> None:
        """Stop listening and close open connections (idempotent)."""
        server, runner = self._server, self._runner
        self._server = self._runner = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        if server is not None:
            server.close()
        if runner is not None:
            await runner.cleanup()
        if server is not None:
            await server.wait_closed()
