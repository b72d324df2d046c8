"""`tunneler llm-stub` as a real process, driven by the official `openai` client."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

PROMPT = "one two three four five six seven eight nine ten"
REPLY = f'You said: "{PROMPT}". This reply comes from the tunneler demo model.'
REPLY_TOKENS = 20
TOKEN_DELAY = 0.05
MESSAGES: list[Any] = [{"role": "system", "content": "You are a test."},
                       {"role": "user", "content": PROMPT}]


@dataclass
class Stub:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.base_url[:-3]}/stats", timeout=2) as response:
            stats: dict[str, int] = json.load(response)
        return stats

    def log_events(self) -> list[str]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line)["event"] for line in lines if line.startswith("{")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(stub: Stub, deadline: float) -> None:
    while True:
        try:
            stub.stats()
            return
        except (urllib.error.URLError, ConnectionError) as exc:
            if stub.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llm-stub did not start: {stub.log_path.read_text()}") from exc
            time.sleep(0.05)


@contextlib.contextmanager
def running_stub(log_path: Path) -> Iterator[Stub]:
    port = _free_port()
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "tunneler", "llm-stub", "--listen", "127.0.0.1",
             "--port", str(port), "--token-delay", str(TOKEN_DELAY)],
            stdout=subprocess.DEVNULL, stderr=log_file)
    stub = Stub(process, f"http://127.0.0.1:{port}/v1", log_path)
    try:
        _wait_ready(stub, time.monotonic() + 15)
        yield stub
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert "llmstub.stopped" in stub.log_events()


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stub]:
    with running_stub(tmp_path_factory.mktemp("llmstub") / "stub.log") as running:
        yield running


def _client(stub: Stub) -> openai.OpenAI:
    return openai.OpenAI(base_url=stub.base_url, api_key="any-key", max_retries=0, timeout=10)


def test_models_and_completion_sync(stub: Stub) -> None:
    with _client(stub) as client:
        assert [model.id for model in client.models.list()] == ["tunneler-demo"]
        answer = client.chat.completions.create(model="tunneler-demo", messages=MESSAGES)
        assert answer.choices[0].message.content == REPLY
        assert answer.choices[0].message.role == "assistant"
        assert answer.choices[0].finish_reason == "stop"
        assert answer.usage is not None
        assert answer.usage.completion_tokens == REPLY_TOKENS
        short = client.chat.completions.create(model="tunneler-demo", messages=MESSAGES,
                                               max_tokens=4)
        assert short.choices[0].message.content == 'You said: "one two'
        assert short.choices[0].finish_reason == "length"


def test_errors_reach_the_client_as_openai_errors(stub: Stub) -> None:
    with _client(stub) as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tunneler-demo", messages=[])
    assert info.value.status_code == 400
    assert "non-empty" in info.value.message


def test_streaming_sync_tokens_arrive_incrementally(stub: Stub) -> None:
    with _client(stub) as client:
        started = time.monotonic()
        stream = client.chat.completions.create(model="tunneler-demo", messages=MESSAGES,
                                                stream=True)
        arrivals: list[tuple[float, str]] = []
        finish = []
        for chunk in stream:
            choice = chunk.choices[0]
            if choice.delta.content:
                arrivals.append((time.monotonic() - started, choice.delta.content))
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    assert "".join(text for _, text in arrivals) == REPLY
    assert len(arrivals) == REPLY_TOKENS
    assert finish == ["stop"]
    first, last = arrivals[0][0], arrivals[-1][0]
    assert last - first >= (REPLY_TOKENS - 1) * TOKEN_DELAY * 0.8
    assert first < last / 4


def test_streaming_async_tokens_arrive_incrementally(stub: Stub) -> None:
    async def scenario() -> tuple[list[float], str]:
        client = openai.AsyncOpenAI(base_url=stub.base_url, api_key="k", max_retries=0)
        try:
            chat = await client.chat.completions.create(model="tunneler-demo", messages=MESSAGES)
            assert chat.choices[0].message.content == REPLY
            started = time.monotonic()
            stream = await client.chat.completions.create(
                model="tunneler-demo", messages=MESSAGES, stream=True,
                stream_options={"include_usage": True})
            times, text = [], ""
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    times.append(time.monotonic() - started)
                    text += chunk.choices[0].delta.content
                if chunk.usage is not None:
                    assert chunk.usage.completion_tokens == REPLY_TOKENS
            return times, text
        finally:
            await client.close()
    times, text = asyncio.run(scenario())
    assert text == REPLY
    assert len(times) == REPLY_TOKENS
    assert times[-1] - times[0] >= (REPLY_TOKENS - 1) * TOKEN_DELAY * 0.8


def _stats_when_cancelled(stub: Stub) -> dict[str, int]:
    deadline = time.monotonic() + 3
    stats = stub.stats()
    while stats["streams_cancelled"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
        stats = stub.stats()
    return stats


def test_closing_a_stream_midway_cancels_it_on_the_server(tmp_path: Path) -> None:
    with running_stub(tmp_path / "stub.log") as stub, _client(stub) as client:
        stream = client.chat.completions.create(model="tunneler-demo", messages=MESSAGES,
                                                stream=True)
        received = [chunk.choices[0].delta.content for chunk in itertools.islice(stream, 4)]
        stream.close()
        assert "".join(filter(None, received)) == 'You said: "one'
        stats = _stats_when_cancelled(stub)
        assert stats["streams_cancelled"] == 1
        assert stats["streams_started"] == 1
        assert stats["streams_completed"] == 0
        assert stats["streams_active"] == 0
    assert "llmstub.stream_cancelled" in stub.log_events()


def test_async_stream_cancelled_by_the_caller(tmp_path: Path) -> None:
    async def scenario(stub: Stub) -> None:
        client = openai.AsyncOpenAI(base_url=stub.base_url, api_key="k", max_retries=0)
        try:
            stream = await client.chat.completions.create(
                model="tunneler-demo", messages=MESSAGES, stream=True)
            async for chunk in stream:
                if chunk.choices[0].delta.content:
                    break
            await stream.close()
        finally:
            await client.close()

    with running_stub(tmp_path / "stub.log") as stub:
        asyncio.run(scenario(stub))
        stats = _stats_when_cancelled(stub)
        assert (stats["streams_cancelled"], stats["streams_completed"]) == (1, 0)
