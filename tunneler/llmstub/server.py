"""aiohttp adapter of the LLM stub: the OpenAI-compatible HTTP API and `tunneler llm-stub`.

Routes: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions` (JSON or
server-sent events, one chunk per token, `token_delay` seconds apart) and `GET /stats`
(counters for end-to-end tests). Every error is an OpenAI error object. A client that goes
away mid-stream is noticed at the next write: generation stops and `streams_cancelled`
grows. Bounded: request bodies up to `MAX_BODY_BYTES`, at most `max_streams` concurrent
streams (further ones get 429).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ssl
import stat
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from tunneler import aio
from tunneler.errors import ConfigError, InvalidRequest
from tunneler.httpserver import HttpListener, json_response
from tunneler.llmstub import chat
from tunneler.log import get_logger

log = get_logger("llmstub")

MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_STREAMS = 256
DEFAULT_TOKEN_DELAY = 0.05
MAX_TOKEN_DELAY = 60.0
KEEPALIVE_TIMEOUT = 15.0
TLS_HANDSHAKE_TIMEOUT = 10.0
SHUTDOWN_GRACE = 0.25
"""Seconds running handlers get at shutdown before they are cancelled."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass
class Stats:
    """Counters served at `GET /stats` (requests excludes `/stats` itself)."""

    requests: int = 0
    completions: int = 0
    """Non-streaming chat completions answered."""
    streams_started: int = 0
    streams_completed: int = 0
    streams_cancelled: int = 0
    streams_active: int = 0


def _error(status: int, message: str, *, error_type: str = "invalid_request_error",
           param: str | None = None, code: str | None = None) -> web.Response:
    body = chat.error_body(message, error_type=error_type, param=param, code=code)
    return json_response(body, status)


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """An OpenAI error object for aiohttp's own errors (404, 405, 413, ...)."""
    if exc.status == 404:
        return _error(404, f"Unknown request URL: {request.method} {request.path}.",
                      code="unknown_url")
    if exc.status == 413:
        return _error(413, f"request body larger than {MAX_BODY_BYTES} bytes",
                      code="request_too_large")
    return _error(exc.status, exc.reason)


class LlmStub:
    """The application, its listener and its counters."""

    def __init__(self, *, token_delay: float = DEFAULT_TOKEN_DELAY,
                 max_streams: int = DEFAULT_MAX_STREAMS,
                 clock: Callable[[], float] = time.time) -> None:
        self.stats = Stats()
        self._token_delay = token_delay
        self._max_streams = max_streams
        self._clock = clock
        self._listener = HttpListener()

    def application(self) -> web.Application:
        """The aiohttp application (usable with aiohttp's test server)."""
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/v1/models", self.get_models)
        app.router.add_get("/v1/models/{model}", self.get_model)
        app.router.add_post("/v1/chat/completions", self.post_chat_completions)
        app.router.add_get("/stats", self.get_stats)
        return app

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        """Listen on host:port (port 0: any free port); returns the bound port.

        Raises:
            ConfigError: the address cannot be bound.
        """
        try:
            bound = await self._listener.start(self.application(), host, port, ssl_context,
                                               keepalive_timeout=KEEPALIVE_TIMEOUT,
                                               handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
                                               shutdown_timeout=SHUTDOWN_GRACE)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        log.info("llmstub.started", host=host, port=bound, tls=ssl_context is not None,
                 token_delay=self._token_delay)
        return bound

    async def close(self) -> None:
        """Stop listening; running streams get `SHUTDOWN_GRACE` seconds, then are cancelled."""
        await self._listener.close()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        if request.path != "/stats":
            self.stats.requests += 1
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = _http_error(request, exc)
        log.info("llmstub.request_served", method=request.method, path=request.path,
                 status=response.status,
                 duration_ms=round((time.monotonic() - started) * 1000, 1))
        return response

    async def get_models(self, request: web.Request) -> web.Response:
        """`GET /v1/models`."""
        return json_response(chat.models_list(int(self._clock())))

    async def get_model(self, request: web.Request) -> web.Response:
        """`GET /v1/models/{model}`."""
        name = request.match_info["model"]
        if name != chat.MODEL_ID:
            return _error(404, f"The model '{name}' does not exist", param="model",
                          code="model_not_found")
        return json_response(chat.model_object(int(self._clock())))

    async def get_stats(self, request: web.Request) -> web.Response:
        """`GET /stats`: the counters."""
        return json_response(dataclasses.asdict(self.stats))

    async def post_chat_completions(self, request: web.Request) -> web.StreamResponse:
        """`POST /v1/chat/completions`."""
        try:
            parsed = chat.parse_chat_request(await request.read())
        except InvalidRequest as exc:
            log.info("llmstub.request_rejected", reason=exc.message, param=exc.param)
            return _error(400, exc.message, param=exc.param)
        reply = chat.generate(parsed)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(self._clock())
        if not parsed.stream:
            self.stats.completions += 1
            return json_response(chat.completion(completion_id, created, parsed.model, reply))
        if self.stats.streams_active >= self._max_streams:
            log.warning("llmstub.stream_refused", active=self.stats.streams_active)
            return _error(429, "too many concurrent streams", error_type="requests",
                          code="rate_limit_exceeded")
        events = chat.stream_chunks(completion_id, created, parsed.model, reply,
                                    include_usage=parsed.include_usage)
        return await self._stream(request, completion_id, events, len(reply.tokens))

    async def _stream(self, request: web.Request, completion_id: str,
                      events: list[dict[str, Any]], token_count: int) -> web.StreamResponse:
        """Send `events` (role chunk, `token_count` token chunks, the rest), then `[DONE]`."""
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})
        self.stats.streams_started += 1
        self.stats.streams_active += 1
        log.info("llmstub.stream_started", id=completion_id, chunks=len(events))
        sent = 0
        try:
            await response.prepare(request)
            for sent, event in enumerate(events):
                if 0 < sent <= token_count:
                    await asyncio.sleep(self._token_delay)
                await response.write(chat.sse_event(event))
            await response.write(chat.SSE_DONE)
            await response.write_eof()
        except ConnectionResetError:
            self._cancelled(completion_id, sent)
        except asyncio.CancelledError:
            self._cancelled(completion_id, sent)
            raise
        else:
            self.stats.streams_completed += 1
            log.info("llmstub.stream_completed", id=completion_id, chunks=len(events))
        finally:
            self.stats.streams_active -= 1
        return response

    def _cancelled(self, completion_id: str, chunks_sent: int) -> None:
        self.stats.streams_cancelled += 1
        log.info("llmstub.stream_cancelled", id=completion_id, chunks_sent=chunks_sent)


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context from PEM files; the key must not be readable by others.

    Raises:
        ConfigError: a file is missing, unreadable, too open, or the pair does not match.
    """
    try:
        mode = stat.S_IMODE(key.stat().st_mode)
    except OSError as exc:
        raise ConfigError(f"cannot read TLS key {key}: {exc.strerror or exc}") from exc
    if mode & 0o077:
        raise ConfigError(f"TLS key {key} has mode {mode:o}; fix it with: chmod 600 {key}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate {cert} and key {key}: {exc}") from exc
    return context


def _check_args(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not 0 <= args.token_delay <= MAX_TOKEN_DELAY:
        raise ConfigError(f"--token-delay must be between 0 and {MAX_TOKEN_DELAY} seconds")
    if not 1 <= args.max_streams <= 65536:
        raise ConfigError("--max-streams must be between 1 and 65536")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if args.tls_cert is None:
        return None
    return server_ssl_context(Path(args.tls_cert), Path(args.tls_key))


def cmd_llm_stub(args: argparse.Namespace) -> int:
    """Serve the stub until SIGTERM or SIGINT."""
    ssl_context = _check_args(args)
    stub = LlmStub(token_delay=args.token_delay, max_streams=args.max_streams)
    return aio.run(lambda stop: serve(stub, args.listen, args.port, ssl_context, stop))


async def serve(stub: LlmStub, host: str, port: int, ssl_context: ssl.SSLContext | None,
                stop: asyncio.Event) -> int:
    """Serve until `stop` is set; returns the exit code."""
    try:
        await stub.start(host, port, ssl_context)
        await stop.wait()
    finally:
        await stub.close()
        log.info("llmstub.stopped", **dataclasses.asdict(stub.stats))
    return 0
