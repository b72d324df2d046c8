"""LLM stub: the sans-IO chat core, and the aiohttp server in-process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from openai._streaming import SSEDecoder
from structlog.testing import capture_logs

from tunneler.cli import main as cli
from tunneler.controller import pki
from tunneler.errors import ConfigError, InvalidRequest
from tunneler.llmstub import chat
from tunneler.llmstub.server import MAX_BODY_BYTES, LlmStub, server_ssl_context

USER = {"role": "user", "content": "hello there"}
REPLY = 'You said: "hello there". This reply comes from the tunneler demo model.'


@pytest.fixture(autouse=True)
def _default_logging() -> Iterator[None]:
    """`cli.main` points structlog at the current (capsys) stderr; undo that around each test."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def body(**fields: Any) -> bytes:
    return json.dumps({"model": "tunneler-demo", "messages": [USER], **fields}).encode()


# --- sans-IO core --------------------------------------------------------------------------


def test_tokens_join_back_to_the_text() -> None:
    text = chat.reply_text("  a  b\tc ")
    assert text == 'You said: "a b c". ' + chat.REPLY_SENTENCE
    assert "".join(chat.tokenize(text)) == text
    assert chat.tokenize("x  y") == ["x", "  y"]
    assert chat.reply_text("") == chat.REPLY_SENTENCE


def test_reply_echoes_last_user_message_and_counts_tokens() -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
                {"role": "assistant", "content": None},
                {"role": "user", "content": [{"type": "text", "text": "hello"},
                                             {"type": "image_url", "image_url": {"url": "x"}},
                                             {"type": "text", "text": "there"}]}]
    request = chat.parse_chat_request(json.dumps({"messages": messages}).encode())
    reply = chat.generate(request)
    assert reply.text == REPLY
    assert reply.finish_reason == "stop"
    assert reply.usage() == {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17}
    assert request.model == chat.MODEL_ID and not request.stream


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_cuts_the_reply(field: str) -> None:
    reply = chat.generate(chat.parse_chat_request(body(**{field: 3})))
    assert reply.text == 'You said: "hello'
    assert reply.finish_reason == "length"
    assert reply.usage()["completion_tokens"] == 3


def test_reply_length_is_capped() -> None:
    words = " ".join(["w"] * (chat.MAX_REPLY_TOKENS + 10))
    request = chat.parse_chat_request(json.dumps({"messages": [
        {"role": "user", "content": words}], "max_tokens": 10**9}).encode())
    reply = chat.generate(request)
    assert len(reply.tokens) == chat.MAX_REPLY_TOKENS
    assert reply.finish_reason == "length"


@pytest.mark.parametrize(("raw", "param", "fragment"), [
    (b"{not json", None, "not valid JSON"),
    (b"\xff\xfe", None, "not valid JSON"),
    (b"[1, 2]", None, "JSON object"),
    (b"{}", "messages", "must provide a 'messages'"),
    (b'{"messages": []}', "messages", "non-empty array"),
    (b'{"messages": "hi"}', "messages", "non-empty array"),
    (b'{"messages": [{"content": "x"}]}', "messages[0]", "string 'role'"),
    (b'{"messages": [{"role": "user", "content": 5}]}', "messages[0].content", "string or"),
    (b'{"messages": [{"role": "user", "content": [1]}]}', "messages[0].content", "objects"),
    (b'{"messages": [{"role": "user", "content": [{"type": "text"}]}]}',
     "messages[0].content", "'text'"),
    (body(max_tokens=0), "max_tokens", "positive integer"),
    (body(max_tokens=True), "max_tokens", "positive integer"),
    (body(max_completion_tokens="3"), "max_completion_tokens", "positive integer"),
    (body(stream="yes"), "stream", "boolean"),
    (body(stream_options=[]), "stream_options", "object"),
    (body(n=2), "n", "n=1"),
    (body(model=""), "model", "non-empty string"),
])
def test_invalid_requests_name_the_problem(raw: bytes, param: str | None, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        chat.parse_chat_request(raw)
    assert info.value.param == param
    assert fragment in info.value.message


def test_too_many_messages_refused() -> None:
    raw = json.dumps({"messages": [USER] * (chat.MAX_MESSAGES + 1)}).encode()
    with pytest.raises(InvalidRequest, match="more than"):
        chat.parse_chat_request(raw)


def test_stream_chunks_in_order() -> None:
    reply = chat.generate(chat.parse_chat_request(body(max_tokens=2)))
    chunks = chat.stream_chunks("id1", 7, "m", reply, include_usage=True)
    deltas = [c["choices"][0]["delta"] if c["choices"] else None for c in chunks]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "You"},
                      {"content": " said:"}, {}, None]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 3 + ["length"]
    assert chunks[-1]["usage"] == reply.usage()
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {(c["id"], c["created"], c["model"]) for c in chunks} == {("id1", 7, "m")}


def test_sse_events_decode_with_the_openai_parser_byte_by_byte() -> None:
    payloads: list[dict[str, Any]] = [{"text": 'line\nbreak "quoted" \u00e9'}, {"n": 2}]
    wire = b"".join(chat.sse_event(p) for p in payloads) + chat.SSE_DONE
    assert wire.count(b"\n\n") == 3
    events = list(SSEDecoder().iter_bytes(iter([wire[i:i + 1] for i in range(len(wire))])))
    assert [e.json() for e in events[:-1]] == payloads
    assert events[-1].data == "[DONE]"


# --- the server, in-process ----------------------------------------------------------------

Scenario = Callable[[aiohttp.ClientSession, str, LlmStub], Awaitable[None]]


@contextlib.asynccontextmanager
async def running(stub: LlmStub, ssl_context: ssl.SSLContext | None = None,
                  ) -> AsyncIterator[str]:
    port = await stub.start("127.0.0.1", 0, ssl_context)
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        await stub.close()


def run(scenario: Scenario, *, token_delay: float = 0.0, max_streams: int = 8) -> None:
    async def main() -> None:
        stub = LlmStub(token_delay=token_delay, max_streams=max_streams, clock=lambda: 1000.5)
        async with running(stub) as url, aiohttp.ClientSession() as session:
            await scenario(session, url, stub)
    asyncio.run(main())


async def post(session: aiohttp.ClientSession, url: str,
               data: bytes | io.BytesIO) -> tuple[int, Any]:
    async with session.post(f"{url}/v1/chat/completions", data=data,
                            headers={"Content-Type": "application/json"}) as response:
        return response.status, await response.json()


def test_models() -> None:
    async def scenario(session: aiohttp.ClientSession, url: str, stub: LlmStub) -> None:
        async with session.get(f"{url}/v1/models") as response:
            assert response.status == 200
            assert await response.json() == {"object": "list", "data": [
                {"id": "tunneler-demo", "object": "model", "created": 1000,
                 "owned_by": "tunneler"}]}
        async with session.get(f"{url}/v1/models/tunneler-demo") as response:
            assert (await response.json())["id"] == "tunneler-demo"
        async with session.get(f"{url}/v1/models/gpt-9") as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "model_not_found"
    run(scenario)


def test_completion() -> None:
    async def scenario(session: aiohttp.ClientSession, url: str, stub: LlmStub) -> None:
        status, answer = await post(session, url, body())
        assert status == 200
        assert answer["id"].startswith("chatcmpl-")
        assert answer["object"] == "chat.completion"
        assert answer["created"] == 1000 and answer["model"] == "tunneler-demo"
        assert answer["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": REPLY,
                                                  "refusal": None}}]
        assert answer["usage"] == {"prompt_tokens": 2, "completion_tokens": 12,
                                   "total_tokens": 14}
        assert stub.stats.completions == 1 and stub.stats.streams_started == 0
    with capture_logs() as logs:
        run(scenario)
    served = [e for e in logs if e["event"] == "llmstub.request_served"]
    assert served == [{"event": "llmstub.request_served", "log_level": "info",
                       "component": "llmstub",
                       "method": "POST", "path": "/v1/chat/completions", "status": 200,
                       "duration_ms": served[0]["duration_ms"]}]


def parse_sse(raw: bytes) -> list[str]:
    assert raw.endswith(b"\n\n")
    events = raw[:-2].split(b"\n\n")
    assert all(e.startswith(b"data: ") and b"\n" not in e for e in events)
    return [e[len(b"data: "):].decode() for e in events]


def test_streaming_chunks_format() -> None:
    async def scenario(session: aiohttp.ClientSession, url: str, stub: LlmStub) -> None:
        data = body(stream=True, stream_options={"include_usage": True})
        async with session.post(f"{url}/v1/chat/completions", data=data) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
            assert response.headers["Cache-Control"] == "no-cache"
            raw = await response.read()
        events = parse_sse(raw)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert len({c["id"] for c in chunks}) == 1
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["choices"][0]["delta"]["content"] for c in chunks[1:-2]) == REPLY
        assert len(chunks) == 1 + 12 + 2
        assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                            "finish_reason": "stop"}
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 14
        assert (stub.stats.streams_started, stub.stats.streams_completed) == (1, 1)
    run(scenario)


def test_tokens_are_flushed_one_by_one() -> None:
    async def scenario(session: aiohttp.ClientSession, url: str, stub: LlmStub) -> None:
        arrivals = []
        async with session.post(f"{url}/v1/chat/completions", data=body(stream=True)) as resp:
            buffer = b""
            async for data in resp.content.iter_any():
                buffer += data
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    arrivals.append((time.monotonic(), event))
        assert len(arrivals) == 1 + 12 + 1 + 1
        spread = arrivals[12][0] - arrivals[1][0]
        assert spread >= 11 * 0.03
    run(scenario, token_delay=0.03)


@pytest.mark.parametrize(("data", "param"), [
    (b"{oops", None), (b'{"model": "tunneler-demo"}', "messages")])
def test_bad_requests_get_openai_errors(data: bytes, param: str | None) -> None:
    async def scenario(session: aiohttp.ClientSession, url: str, stub: LlmStub) -> None:
        status, answer = await post(session, url, data)
        assert status == 400
        assert answer["error"]["type"] == "invalid_request_error"
        assert answer["error"]["param"] == param
        assert answer["error"]["message"]
        status, _ = await post(session, url, body())
        assert status == 200
    run(scenario)


def test_unknown_path_method_and_oversized_body() -> None:
    async def scenario(session: aiohttp.ClientSession, url: str, stub: LlmStub) -> None:
        async with session.get(f"{url}/v1/nothing") as response:
            assert response.status == 404
            assert response.content_type == "application/json"
            error = (await response.json())["error"]
            assert error["message"] == "Unknown request URL: GET /v1/nothing."
            assert error["type"] == "invalid_request_error"
        async with session.get(f"{url}/v1/chat/completions") as response:
            assert response.status == 405
            assert (await response.json())["error"]["type"] == "invalid_request_error"
        status, answer = await post(session, url, io.BytesIO(b" " * (MAX_BODY_BYTES + 1)))
        assert status == 413 and answer["error"]["code"] == "request_too_large"
        async with session.get(f"{url}/stats") as response:
            stats = await response.json()
        assert stats["requests"] == 3 and stats["completions"] == 0
    run(scenario)


async def _read_some_then_close(session: aiohttp.ClientSession, url: str) -> None:
    response = await session.post(f"{url}/v1/chat/completions", data=body(stream=True))
    await response.content.readuntil(b"\n\n")
    await response.content.readuntil(b"\n\n")
    response.close()


async def _stats_when(url: str, session: aiohttp.ClientSession,
                      done: Callable[[dict[str, int]], bool]) -> dict[str, int]:
    deadline = time.monotonic() + 3.0
    while True:
        async with session.get(f"{url}/stats") as response:
            stats: dict[str, int] = await response.json()
        if done(stats) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.02)


def test_client_disconnect_stops_the_stream() -> None:
    async def scenario(session: aiohttp.ClientSession, url: str, stub: LlmStub) -> None:
        await _read_some_then_close(session, url)
        stats = await _stats_when(url, session, lambda s: s["streams_cancelled"] > 0)
        assert stats == {"requests": 1, "completions": 0, "streams_started": 1,
                         "streams_completed": 0, "streams_cancelled": 1, "streams_active": 0}
    with capture_logs() as logs:
        run(scenario, token_delay=0.02)
    cancelled = [e for e in logs if e["event"] == "llmstub.stream_cancelled"]
    assert len(cancelled) == 1 and cancelled[0]["chunks_sent"] < 13


def test_concurrent_streams_are_capped() -> None:
    async def scenario(session: aiohttp.ClientSession, url: str, stub: LlmStub) -> None:
        first = await session.post(f"{url}/v1/chat/completions", data=body(stream=True))
        await first.content.readuntil(b"\n\n")
        status, answer = await post(session, url, body(stream=True))
        assert status == 429 and answer["error"]["code"] == "rate_limit_exceeded"
        status, _ = await post(session, url, body())
        assert status == 200
        assert (await first.read()).endswith(chat.SSE_DONE)
        assert stub.stats.streams_completed == 1
    run(scenario, token_delay=0.02, max_streams=1)


def test_shutdown_cancels_running_streams() -> None:
    async def main() -> None:
        stub = LlmStub(token_delay=5.0)
        async with running(stub) as url, aiohttp.ClientSession() as session:
            response = await session.post(f"{url}/v1/chat/completions", data=body(stream=True))
            await response.content.readuntil(b"\n\n")
            started = time.monotonic()
            await stub.close()
            assert time.monotonic() - started < 1.5
            response.close()
        assert stub.stats.streams_cancelled == 1 and stub.stats.streams_active == 0
    asyncio.run(main())


# --- TLS and command line ------------------------------------------------------------------


def _tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    ca_cert, ca_key = pki.create_ca()
    cert, key = pki.issue_server_cert("localhost", ca_cert, ca_key)
    paths = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    pki.write_cert(paths[0], ca_cert)
    pki.write_cert(paths[1], cert)
    pki.write_key(paths[2], key)
    return paths


def test_tls_serving(tmp_path: Path) -> None:
    ca, cert, key = _tls_files(tmp_path)
    client_context = ssl.create_default_context(cafile=str(ca))

    async def main() -> None:
        stub = LlmStub(token_delay=0.0)
        async with running(stub, server_ssl_context(cert, key)) as url, \
                aiohttp.ClientSession() as session:
            async with session.get(f"{url}/v1/models", ssl=client_context) as response:
                assert (await response.json())["data"][0]["id"] == "tunneler-demo"
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(f"{url}/v1/models", ssl=ssl.create_default_context())
    asyncio.run(main())


def test_tls_key_must_be_private(tmp_path: Path) -> None:
    _, cert, key = _tls_files(tmp_path)
    os.chmod(key, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        server_ssl_context(cert, key)
    os.chmod(key, 0o600)
    with pytest.raises(ConfigError, match="cannot load"):
        server_ssl_context(key, key)
    with pytest.raises(ConfigError, match="cannot read"):
        server_ssl_context(cert, tmp_path / "missing.key")


@pytest.mark.parametrize(("argv", "message"), [
    (["--token-delay", "-1"], "--token-delay"),
    (["--max-streams", "0"], "--max-streams"),
    (["--tls-cert", "x.pem"], "go together"),
])
def test_cli_rejects_bad_options(argv: list[str], message: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["llm-stub", *argv]) == 1
    assert message in capsys.readouterr().err


def test_cli_reports_a_busy_port(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert cli(["llm-stub", "--port", str(port)]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
