"""HttpListener: serves an aiohttp app on loopback, reports the bound port, cleans up on failure."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from aiohttp import web

from tunneler.httpserver import HttpListener, json_response


def _app() -> web.Application:
    async def hello(_request: web.Request) -> web.Response:
        return json_response({"hello": "world"}, status=201)
    app = web.Application()
    app.router.add_get("/", hello)
    return app


def test_serves_on_an_ephemeral_port_and_closes() -> None:
    async def scenario() -> None:
        listener = HttpListener()
        port = await listener.start(_app(), "127.0.0.1", 0, None, keepalive_timeout=1,
                                    handshake_timeout=1)
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://127.0.0.1:{port}/") as reply:
            assert reply.status == 201
            assert reply.content_type == "application/json"
            assert await reply.json() == {"hello": "world"}
        await listener.close()
        await listener.close()  # idempotent
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
    asyncio.run(scenario())


def test_bind_failure_raises_and_leaves_nothing_running() -> None:
    async def scenario() -> None:
        listener = HttpListener()
        with socket.create_server(("127.0.0.1", 0)) as busy, pytest.raises(OSError):
            await listener.start(_app(), "127.0.0.1", busy.getsockname()[1], None,
                                 keepalive_timeout=1, handshake_timeout=1)
        assert listener._runner is None and listener._server is None
    asyncio.run(scenario())
