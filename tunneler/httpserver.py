"""An aiohttp application served by asyncio's own server: the controller API and the LLM stub.

`HttpListener.start(app, host, port, ssl_context, ...)` sets up an ``AppRunner`` (no access log)
and listens through ``loop.create_server``, so TLS gets a handshake timeout (aiohttp's sites
offer none); it returns the bound port. ``close()`` stops listening, then closes the open
connections (handlers get the runner's ``shutdown_timeout``). ``json_response`` renders a JSON
body.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

from aiohttp import web

DEFAULT_SHUTDOWN_TIMEOUT = 60.0  # aiohttp's own default


def json_response(payload: Any, status: int = 200) -> web.Response:
    """`payload` as an `application/json` response."""
    return web.Response(body=json.dumps(payload).encode(), status=status,
                        content_type="application/json")


class HttpListener:
    """One aiohttp application on one listening socket."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None

    async def start(self, app: web.Application, host: str, port: int,
                    ssl_context: ssl.SSLContext | None, *, keepalive_timeout: float,
                    handshake_timeout: float,
                    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> int:
        """Listen on host:port (0: any free port); returns the bound port.

        Raises:
            OSError: the address cannot be bound (nothing is left running).
        """
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=keepalive_timeout,
                                     shutdown_timeout=shutdown_timeout)
        await self._runner.setup()
        protocol_factory = self._runner.server
        assert protocol_factory is not None  # set by setup()
        try:
            self._server = await asyncio.get_running_loop().create_server(
                protocol_factory, host, port, ssl=ssl_context,
                ssl_handshake_timeout=None if ssl_context is None else handshake_timeout)
        except OSError:
            await self.close()
            raise
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and close open connections (idempotent)."""
        server, runner = self._server, self._runner
        self._server = self._runner = None
        if server is not None:
            server.close()
        if runner is not None:
            await runner.cleanup()
        if server is not None:
            await server.wait_closed()
