"""Per-service counting outside the engine: `Metrics.meter`, dial failure reasons, and
`run-host`'s dial handler counting a real loopback target (flows, bytes, connect time)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tunneler.bridges import StreamBridge
from tunneler.client.listener import IncomingDial
from tunneler.configs import parse_host
from tunneler.counters import Metrics, failure_reason
from tunneler.errors import DialError, DialFailure
from tunneler.host import dial_handler


def test_meter_is_the_service_entry_and_feeds_the_snapshot() -> None:
    stats = Metrics()
    meter = stats.meter("llm")
    meter.bytes_up += 10
    meter.bytes_down += 2048
    assert stats.meter("llm") is meter
    counters = stats.snapshot()
    assert (counters.services["llm"].bytes_up, counters.flows.bytes_down) == (10, 2048)


@pytest.mark.parametrize(("exc", "reason"), [
    (TimeoutError(), DialFailure.TIMEOUT),
    (DialError("dial 'x' timed out after 5s", DialFailure.TIMEOUT), DialFailure.TIMEOUT),
    (DialError("no edge router reachable", DialFailure.NO_ROUTER), DialFailure.NO_ROUTER),
    (DialError("dial 'x': controller: CONTROLLER_UNAVAILABLE", DialFailure.CONTROLLER),
     DialFailure.CONTROLLER),
    (DialError("service has no terminators"), DialFailure.REFUSED),
    (DialError("wording that says timed out but is a refusal"), DialFailure.REFUSED),
    (OSError("network unreachable"), DialFailure.ERROR),
])
def test_failure_reason_is_what_the_error_carries_never_its_text(
        exc: BaseException, reason: DialFailure) -> None:
    assert failure_reason(exc) is reason


def _echo_server() -> tuple[socket.socket, int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    return server, server.getsockname()[1]


def test_host_dial_handler_counts_flow_bytes_and_connect_time() -> None:
    server, port = _echo_server()
    config = parse_host({"protocol": "tcp", "address": "127.0.0.1", "port": port}, "echo")
    stats = Metrics()

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
    stats = Metrics()
    on_dial = dial_handler("gone", config, stats)

    async def scenario() -> None:
        await on_dial(IncomingDial("client1", {}))

    with pytest.raises(DialError):
        asyncio.run(scenario())
    assert stats.snapshot().dial_failures == {"refused": 1}
    assert "failed" in (stats.last_error("gone") or "")
    assert stats.active_flows("gone") == 0
