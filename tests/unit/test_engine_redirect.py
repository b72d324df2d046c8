"""--tcp-redirect: sockets the kernel DNAT'ed to the listener, and the nftables table itself.

The engine runs for real; the accepted sockets are real loopback TCP connections handed to
the interceptor as the listener would, with `SO_ORIGINAL_DST` played by a lookup (conntrack
needs root: the privileged test drives real nftables). The nft command is a recorded runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from typing import Any

import pytest
import uvloop
from engine_support import StaticContext, running_engine, service
from test_engine_tcp import llm_context, vip_for

from tunneler.counters import Count, Refusal
from tunneler.engine.engine import Engine
from tunneler.errors import ConfigError, TunError
from tunneler.overlay import OverlayConnection, OverlaySink
from tunneler.tun import redirect
from tunneler.tun.redirect import Nft, Redirect, original_destination, render, table_name


class EchoConnection:
    """An overlay connection whose service echoes every byte, and on EOF half-closes too and
    ends the connection."""

    def __init__(self, sink: OverlaySink) -> None:
        self.sink = sink
        self.closed = False

    def write(self, data: bytes) -> None:
        asyncio.get_running_loop().call_soon(self.sink.edge_data, data)

    def write_eof(self) -> None:
        loop = asyncio.get_running_loop()
        loop.call_soon(self.sink.edge_eof)
        loop.call_soon(self.sink.edge_closed, False)

    def close(self) -> None:
        self.closed = True

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass


class EchoContext(StaticContext):
    """Dials succeed (after `gate`, when set) onto an echoing service."""

    async def dial(self, service_name: str, sink: OverlaySink, *,
                   app_data: dict[str, str | int | None] | None = None,
                   terminator_identity: str | None = None,
                   timeout: float = 5.0) -> OverlayConnection:
        self.dials.append((service_name, app_data, timeout))
        if self.gate is not None:
            await self.gate.wait()
        conn = EchoConnection(sink)
        sink.edge_connected(conn)
        return conn


class Destination:
    """Plays SO_ORIGINAL_DST: what the app asked for, or None (a socket conntrack left alone)."""

    def __init__(self) -> None:
        self.value: tuple[int, int] | None = None

    def __call__(self, sock: socket.socket) -> tuple[int, int] | None:
        return self.value


@contextlib.asynccontextmanager
async def redirected(engine: Engine) -> AsyncIterator[
        tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A loopback connection whose accepted end goes to the interceptor, as from the listener."""
    tcp = engine.tcp
    assert tcp is not None

    class Handover(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            tcp.accepted(transport)  # type: ignore[arg-type]

    server = await asyncio.get_running_loop().create_server(Handover, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        server.close()


async def _is_reset(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(10):
            await reader.read(10)
    except ConnectionResetError:
        return True
    return False


async def _until(check: Any) -> None:
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached in 10 s")


@contextlib.asynccontextmanager
async def llm_flow(ctx: StaticContext) -> AsyncIterator[
        tuple[Engine, str, asyncio.StreamReader, asyncio.StreamWriter]]:
    """An engine on `ctx`, and a redirected socket the app meant for llm.private.test:8000."""
    destination = Destination()
    async with running_engine([ctx], lookup=destination) as (engine, _kernel):
        vip = await vip_for(engine, "llm.private.test")
        destination.value = (int(IPv4Address(vip)), 8000)
        async with redirected(engine) as (reader, writer):
            yield engine, vip, reader, writer


def test_a_redirected_socket_is_dialed_with_its_original_destination_then_bridged() -> None:
    async def main() -> None:
        ctx = EchoContext(list(llm_context().services.values()))
        async with llm_flow(ctx) as (engine, vip, reader, writer):
            assert engine.tcp is not None
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
            (name, app_data, _timeout), = ctx.dials
            assert name == "llm" and app_data is not None
            assert (app_data["dst_ip"], app_data["dst_port"]) == (vip, "8000")
            assert app_data["src_ip"] == "127.0.0.1"
            assert engine.tcp.flows == 1
            writer.write_eof()  # the half-close goes through, the service ends the flow
            assert await asyncio.wait_for(reader.read(), 10) == b""
            await _until(lambda: engine.tcp is not None and engine.tcp.flows == 0)
            counts = engine.metrics.counts
            assert (counts[Count.TCP_FLOWS_OPENED], counts[Count.TCP_FLOWS_CLOSED]) == (1, 1)

    asyncio.run(main())


def test_bytes_sent_while_the_service_is_dialed_reach_it_once_it_is_up() -> None:
    # the app's connect() returned at once (the kernel's handshake): it writes before the
    # circuit exists, and uvloop reads the socket after connection_made whatever we ask
    async def main() -> None:
        ctx = EchoContext(list(llm_context().services.values()))
        ctx.gate = asyncio.Event()
        async with llm_flow(ctx) as (engine, _vip, reader, writer):
            writer.write(b"early")
            await _until(lambda: engine.tcp is not None and engine.tcp.pending == 1)
            await asyncio.sleep(0.05)
            ctx.gate.set()
            assert await asyncio.wait_for(reader.readexactly(5), 10) == b"early"

    asyncio.run(main())
    uvloop.run(main())  # the daemon's loop: it reads a socket after connection_made regardless


def test_a_redirected_socket_waits_for_its_dial_and_is_reset_when_the_dial_fails() -> None:
    async def main() -> None:
        ctx = llm_context()
        ctx.gate = asyncio.Event()
        async with llm_flow(ctx) as (engine, _vip, reader, writer):
            assert engine.tcp is not None
            writer.write(b"early")
            await _until(lambda: engine.tcp is not None and engine.tcp.pending == 1)
            ctx.gate.set()
            assert await _is_reset(reader)
            assert engine.metrics.counts[Count.TCP_DIALS_FAILED] == 1
            assert engine.tcp.pending == 0 and engine.tcp.flows == 0

    asyncio.run(main())


def test_a_redirected_socket_still_dialing_is_reset_when_the_engine_stops() -> None:
    async def main() -> None:
        ctx = llm_context()
        ctx.gate = asyncio.Event()  # never set: the dial hangs
        async with llm_flow(ctx) as (engine, _vip, reader, _writer):
            await _until(lambda: engine.tcp is not None and engine.tcp.pending == 1)
            assert engine.tcp is not None
            await engine.tcp.close(0.1)
            assert await _is_reset(reader)

    asyncio.run(main())


def test_redirected_sockets_nobody_intercepts_or_without_a_destination_are_reset() -> None:
    async def main() -> None:
        destination = Destination()
        ctx = EchoContext([service("llm", ["llm.private.test"], 8000)])
        async with running_engine([ctx], lookup=destination) as (engine, _kernel):
            assert engine.tcp is not None
            vip = int(IPv4Address(await vip_for(engine, "llm.private.test")))
            for value in (None, (vip, 22)):
                destination.value = value
                async with redirected(engine) as (reader, _writer):
                    assert await _is_reset(reader)
            assert engine.metrics.counts[Count.TCP_ACCEPT_UNKNOWN] == 1
            assert engine.metrics.refusals[Refusal.NO_INTERCEPT] == 1
            engine.drain()
            destination.value = (vip, 8000)
            async with redirected(engine) as (reader, _writer):
                assert await _is_reset(reader)
            assert engine.metrics.refusals[Refusal.DRAINING] == 1
            assert ctx.dials == []

    asyncio.run(main())


def test_the_table_catches_tcp_to_the_prefixes_except_our_addresses() -> None:
    redirect = Redirect(table_name("tun-0.a"), ("100.64.0.1", 41000),
                        ("100.64.0.0/10", "198.51.100.0/24"), ("100.64.0.1", "198.51.100.9"))
    assert redirect.table == "tunneler_tun_0_a"
    assert render(redirect) == (
        "table ip tunneler_tun_0_a {}\n"
        "delete table ip tunneler_tun_0_a\n"
        "table ip tunneler_tun_0_a {\n"
        "  chain output {\n"
        "    type nat hook output priority -100; policy accept;\n"
        "    meta l4proto tcp ip daddr { 100.64.0.0/10, 198.51.100.0/24 }"
        " ip daddr != { 100.64.0.1, 198.51.100.9 } counter dnat to 100.64.0.1:41000\n"
        "  }\n"
        "}\n")
    for bad in ({"table": "x; flush ruleset"}, {"prefixes": ("10.0.0.0/8 }",)},
                {"exclude": ("1.2.3.4 }",)}, {"prefixes": ()}, {"target": ("100.64.0.1", 0)}):
        fields: dict[str, Any] = {"table": "t", "target": ("100.64.0.1", 1),
                                  "prefixes": ("10.0.0.0/8",), **bad}
        with pytest.raises(ValueError):
            Redirect(**fields)


def test_nft_gets_the_script_on_stdin_and_its_errors_are_reported() -> None:
    calls: list[tuple[list[str], str | None]] = []
    answers = [(0, ""), (1, "Error: Could not process rule: Operation not permitted"),
               (0, ""), (1, "Error: Could not process rule: No such file or directory")]

    def run(args: list[str], *, input: str | None, **_kw: Any) -> Any:
        calls.append((args, input))
        code, stderr = answers.pop(0)
        return subprocess.CompletedProcess(args, code, "", stderr)

    nft = Nft(run)
    redirect = Redirect("tunneler_t0", ("100.64.0.1", 9), ("100.64.0.0/10",))
    nft.apply(redirect)
    assert calls[0][0][1:] == ["-f", "-"] and calls[0][1] == render(redirect)
    with pytest.raises(TunError, match=r"Operation not permitted.*CAP_NET_ADMIN"):
        nft.apply(redirect)
    assert nft.delete("tunneler_t0") is True
    assert calls[2][0][1:] == ["delete", "table", "ip", "tunneler_t0"]
    assert nft.delete("tunneler_t0") is False  # already gone


def test_without_nft_the_redirect_is_a_config_error_that_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redirect.shutil, "which", lambda _name: None)
    with pytest.raises(ConfigError, match="apt-get install nftables"):
        redirect.nft_binary()
    with pytest.raises(ConfigError, match="nftables"):
        Nft().delete("tunneler_t0")


def test_a_socket_conntrack_did_not_rewrite_has_no_original_destination() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as client:
        accepted, _ = server.accept()
        with accepted:
            assert original_destination(accepted) is None
            assert original_destination(client) is None
