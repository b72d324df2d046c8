"""Per-service counting outside the engine: `Stats.meter`, dial failure reasons, and
`run-host`'s dial handler counting a real loopback target (flows, bytes, connect time)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tunneler.bridges import StreamBridge
from tunneler.client.listener import IncomingDial
from tunneler.configs import parse_host
from tunneler.errors import DialError
from tunneler.host import dial_handler
from tunneler.ops.stats import OTHER, Stats, failure_reason


def test_meter_is_the_service_entry_and_feeds_the_snapshot() -> None:
    stats = Stats()
    meter = stats.meter("llm")
    meter.bytes_up += 10
    meter.bytes_down += 2048
    assert stats.meter("llm") is meter
    counters = stats.snapshot()
    assert (counters.services["llm"].bytes_up, counters.flows.bytes_down) == (10, 2048)


@pytest.mark.parametrize(("exc", "reason"), [
    (TimeoutError(), "timeout"),
    (DialError("dial 'x' timed out after 5s"), "timeout"),
    (DialError("no edge router reachable: tls://r:1: refused"), "no_router"),
    (DialError("dial 'x': controller: CONTROLLER_UNAVAILABLE: GET /sessions"), "controller"),
    (DialError("service has no terminators"), "refused"),
    (OSError("network unreachable"), "error"),
])
def test_failure_reasons(exc: BaseException, reason: str) -> None:
    assert failure_reason(exc) == reason
    assert reason != OTHER


def _echo_server() -> tuple[socket.socket, int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    return server, server.getsockname()[1]


def test_host_dial_handler_counts_flow_bytes_and_connect_time() -> None:
    server, port = _echo_server()
    config = parse_host({"protocol": "tcp", "address": "127.0.0.1", "port": port}, "echo")
    stats = Stats()

    async def scenario() -> None:
        on_dial = dial_handler("echo", config, stats)
        sink = await on_dial(IncomingDial("client1", {}))
        assert isinstance(sink, StreamBridge)
        loop = asyncio.get_running_loop()
        peer, _ = await loop.run_in_executor(None, server.accept)
        with peer:
            assert stats.active_flows("echo") == 1
            sink.edge_data(b"request")                 # overlay -> hosted server
            assert await loop.run_in_executor(None, peer.recv, 100) == b"request"
            await loop.run_in_executor(None, peer.sendall, b"answer!!")
            assert sink.transport is not None
            sink.transport.resume_reading()            # no edge connection in this test
            for _ in range(100):
                if stats.meter("echo").bytes_up:
                    break
                await asyncio.sleep(0.01)
            sink.edge_closed(abrupt=False)             # the dialer hung up
        for _ in range(100):
            if stats.active_flows("echo") == 0:
                break
            await asyncio.sleep(0.01)

    try:
        asyncio.run(scenario())
    finally:
        server.close()
    counters = stats.snapshot()
    assert counters.services["echo"].flows_opened == 1
    assert counters.services["echo"].flows_active == 0
    assert (counters.services["echo"].bytes_up, counters.services["echo"].bytes_down) == (8, 7)
    assert counters.dial_latency.count == 1 and stats.last_error("echo") is None


def test_host_dial_handler_counts_a_refused_target() -> None:
    server, port = _echo_server()
    server.close()                                     # nothing listens there now
    config = parse_host({"protocol": "tcp", "address": "127.0.0.1", "port": port}, "gone")
    stats = Stats()
    on_dial = dial_handler("gone", config, stats)

    async def scenario() -> None:
        await on_dial(IncomingDial("client1", {}))

    with pytest.raises(DialError):
        asyncio.run(scenario())
    assert stats.snapshot().dial_failures == {"refused": 1}
    assert "failed" in (stats.last_error("gone") or "")
    assert stats.active_flows("gone") == 0
