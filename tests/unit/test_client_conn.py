"""Edge connection and listener state machines, driven through a recording link.

The link here only records what would be written and lets the test play the router; the
crypto, message builders and state logic are the real ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.unit.link_support import RecordingLink, as_link
from tunneler.channel.message import REPLY_FOR_HEADER, Message
from tunneler.client.conn import MAX_CHUNK, ConnState, EdgeConnection, dial, is_invalid_session
from tunneler.client.listener import EdgeListener, IncomingDial
from tunneler.edge import crypto
from tunneler.edge import messages as edge
from tunneler.errors import DialError, DialFailure, InvalidSessionError


class Sink:
    """Records what the connection delivers."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.data = bytearray()

    def edge_connected(self, conn: EdgeConnection) -> None:
        self.events.append("connected")

    def edge_data(self, data: bytes) -> None:
        self.data += data

    def edge_eof(self) -> None:
        self.events.append("eof")

    def edge_closed(self, abrupt: bool) -> None:
        self.events.append(("closed", abrupt))

    def set_link_writable(self, writable: bool) -> None:
        self.events.append(("writable", writable))


def _dial(link: RecordingLink, sink: Sink, reply: Callable[[Message], Message | None], *,
          encrypted: bool) -> EdgeConnection:
    async def run() -> EdgeConnection:
        task = asyncio.ensure_future(dial(as_link(link), 7, "tok", "me", sink, encrypted=encrypted,
                                          app_data=b'{"dst_port":"80"}'))
        await asyncio.sleep(0)
        connect, callback = link.requests[-1]
        callback(reply(connect))
        return await task
    return asyncio.run(run())


def _connected(public_key: bytes | None = None) -> Callable[[Message], Message]:
    return lambda connect: edge.state_connected(7, public_key=public_key)


def test_connect_carries_libziti_headers_and_plain_data_flows() -> None:
    link, sink = RecordingLink(), Sink()
    conn = _dial(link, sink, _connected(), encrypted=False)
    connect = link.sent[0]
    assert connect.content_type == edge.CONTENT_TYPE_CONNECT
    assert list(connect.headers) == [edge.CONN_ID_HEADER, edge.SEQ_HEADER,
                                     edge.CALLER_ID_HEADER, edge.APP_DATA_HEADER]
    assert connect.body == b"tok"
    assert sink.events == ["connected"] and conn.state is ConnState.CONNECTED
    conn.write(b"x" * (MAX_CHUNK * 2 + 1))
    sizes = [len(m.body) for m in link.sent[1:]]
    assert sizes == [MAX_CHUNK, MAX_CHUNK, 1]
    assert [m.get_int(edge.SEQ_HEADER) for m in link.sent[1:]] == [1, 2, 3]
    conn.handle_message(edge.data(7, 1, b"hello"))
    assert sink.data == b"hello"


def test_encrypted_dial_sends_header_first_and_round_trips() -> None:
    host = crypto.KeyPair.generate()
    link, sink = RecordingLink(), Sink()
    conn = _dial(link, sink, _connected(host.public), encrypted=True)
    dialer_public = link.sent[0].headers[edge.PUBLIC_KEY_HEADER]
    host_keys = crypto.server_keys(host, dialer_public)
    header = link.sent[1]
    assert len(header.body) == crypto.HEADER_BYTES
    decryptor = crypto.Decryptor(host_keys.rx)
    assert decryptor.feed(header.body) is None
    conn.write(b"secret")
    assert decryptor.feed(link.sent[2].body) == b"secret"
    encryptor = crypto.Encryptor(host_keys.tx)
    conn.handle_message(edge.data(7, 1, encryptor.header))
    conn.handle_message(edge.data(7, 2, encryptor.encrypt(b"answer")))
    assert sink.data == b"answer"
    conn.write_eof()
    fin = link.sent[-1]
    assert edge.is_fin(fin) and fin.body == b""


def test_encrypted_dial_without_host_key_fails() -> None:
    with pytest.raises(DialError, match="no key"):
        _dial(RecordingLink(), Sink(), _connected(None), encrypted=True)


@pytest.mark.parametrize("reason", ["Invalid Session", "Invalid", ""])
def test_invalid_session_and_its_prefixes_ask_for_a_new_session(reason: str) -> None:
    assert is_invalid_session(reason)
    with pytest.raises(InvalidSessionError):
        _dial(RecordingLink(), Sink(), lambda m: edge.state_closed(7, reason), encrypted=False)


def test_other_refusals_are_plain_dial_errors() -> None:
    with pytest.raises(DialError, match="no terminators") as info:
        _dial(RecordingLink(), Sink(), lambda m: edge.state_closed(7, "no terminators"),
              encrypted=False)
    assert not isinstance(info.value, InvalidSessionError)


@pytest.mark.parametrize(("reason", "failure"), [
    ("no terminators", DialFailure.REFUSED),
    ("timed out waiting for the host to accept the dial", DialFailure.TIMEOUT),
    ("host refused the dial: connect to tcp:10.0.0.9:8000 timed out after 5s",
     DialFailure.TIMEOUT),
])
def test_a_refusal_carries_its_reason_for_counting(reason: str, failure: DialFailure) -> None:
    with pytest.raises(DialError) as info:
        _dial(RecordingLink(), Sink(), lambda m: edge.state_closed(7, reason), encrypted=False)
    assert info.value.reason is failure and str(info.value) == reason


@pytest.mark.parametrize("end", ["close", "peer_closed", "link_lost"])
def test_a_paused_connection_never_holds_its_link_paused_once_it_ends(end: str) -> None:
    link, sink = RecordingLink(), Sink()
    conn = _dial(link, sink, _connected(), encrypted=False)
    conn.pause()
    conn.pause()
    assert link.pausers == {conn}
    conn.resume()
    assert link.pausers == set()
    conn.pause()
    if end == "close":
        conn.close()
    elif end == "peer_closed":
        conn.handle_message(edge.state_closed(7, "closed by peer"))
    else:
        conn.link_lost()
    assert link.pausers == set() and conn.state is ConnState.CLOSED
    conn.pause()                      # a closed connection has nothing to pause
    assert link.pausers == set()


def test_timeout_is_reported() -> None:
    with pytest.raises(TimeoutError):
        _dial(RecordingLink(), Sink(), lambda m: None, encrypted=False)


def test_half_close_both_ways_then_graceful_close() -> None:
    link, sink = RecordingLink(), Sink()
    conn = _dial(link, sink, _connected(), encrypted=False)
    conn.handle_message(edge.data(7, 1, b"a"))
    conn.handle_message(edge.fin(7, 2))
    conn.handle_message(edge.data(7, 3, b"late"))
    assert sink.data == b"a" and sink.events == ["connected", "eof"]
    conn.write(b"reply")
    conn.write_eof()
    assert [m.content_type for m in link.sent[-3:]] == [
        edge.CONTENT_TYPE_DATA, edge.CONTENT_TYPE_DATA, edge.CONTENT_TYPE_STATE_CLOSED]
    assert sink.events[-1] == ("closed", False)
    assert 7 not in link.handlers


@pytest.mark.parametrize(("fin_first", "abrupt"), [(False, True), (True, False)])
def test_state_closed_is_abrupt_unless_the_peer_finished(fin_first: bool, abrupt: bool) -> None:
    link, sink = RecordingLink(), Sink()
    conn = _dial(link, sink, _connected(), encrypted=False)
    if fin_first:
        conn.handle_message(edge.fin(7, 1))
    conn.handle_message(edge.state_closed(7, "closed by peer"))
    assert sink.events[-1] == ("closed", abrupt)
    assert conn.state is ConnState.CLOSED


def test_link_loss_is_abrupt_and_bad_ciphertext_closes() -> None:
    host = crypto.KeyPair.generate()
    link, sink = RecordingLink(), Sink()
    conn = _dial(link, sink, _connected(host.public), encrypted=True)
    conn.handle_message(edge.data(7, 1, b"not a 24-byte header"))
    assert sink.events[-1] == ("closed", True)
    assert link.sent[-1].content_type == edge.CONTENT_TYPE_STATE_CLOSED
    link2, sink2 = RecordingLink(), Sink()
    conn2 = _dial(link2, sink2, _connected(), encrypted=False)
    conn2.link_lost()
    assert sink2.events[-1] == ("closed", True)


def _listener_flow(on_dial: Callable[[IncomingDial], Any], *, encrypted: bool,
                   dialer_key: bytes | None = None) -> RecordingLink:
    link = RecordingLink()
    ids = iter(range(100, 200))

    async def run() -> None:
        listener = EdgeListener(as_link(link), 5, "bind-tok", "host", on_dial, lambda: next(ids),
                                encrypted=encrypted)
        bind_task = asyncio.ensure_future(listener.bind())
        await asyncio.sleep(0)
        link.requests[-1][1](edge.state_connected(5))
        await bind_task
        incoming = edge.dial(5, "bind-tok", "client1", public_key=dialer_key,
                             app_data=b'{"dst_port":"8080"}')
        incoming.sequence = 42
        listener.handle_message(incoming)
        for _ in range(5):
            await asyncio.sleep(0)
        if link.requests[-1][0].content_type == edge.CONTENT_TYPE_DIAL_SUCCESS:
            link.requests[-1][1](edge.state_connected(5))
    asyncio.run(run())
    return link


def test_listener_accepts_with_dial_success_then_sends_crypto_header() -> None:
    dialer = crypto.KeyPair.generate()
    sink = Sink()
    seen: list[IncomingDial] = []

    async def on_dial(incoming: IncomingDial) -> Sink:
        seen.append(incoming)
        return sink

    link = _listener_flow(on_dial, encrypted=True, dialer_key=dialer.public)
    bind = link.sent[0]
    assert bind.content_type == edge.CONTENT_TYPE_BIND and len(bind.headers[1003]) == 32
    success = link.sent[1]
    assert success.content_type == edge.CONTENT_TYPE_DIAL_SUCCESS
    assert list(success.headers) == [edge.CONN_ID_HEADER, edge.SEQ_HEADER, REPLY_FOR_HEADER]
    assert success.get_int(REPLY_FOR_HEADER) == 42
    assert edge.new_conn_id_of(success) == 100
    assert seen == [IncomingDial("client1", {"dst_port": "8080"})]
    assert sink.events == ["connected"]
    header = link.sent[2]
    assert edge.conn_id_of(header) == 100 and len(header.body) == crypto.HEADER_BYTES
    keys = crypto.client_keys(dialer, bind.headers[edge.PUBLIC_KEY_HEADER])
    assert crypto.Decryptor(keys.rx).feed(header.body) is None


def test_listener_answers_dial_failed_with_the_reason() -> None:
    async def on_dial(incoming: IncomingDial) -> Sink:
        raise DialError("connect to tcp:127.0.0.1:1 failed: Connection refused")

    link = _listener_flow(on_dial, encrypted=False)
    failed = link.sent[-1]
    assert failed.content_type == edge.CONTENT_TYPE_DIAL_FAILED
    assert failed.get_int(REPLY_FOR_HEADER) == 42
    assert b"Connection refused" in failed.body


def test_listener_refuses_encrypted_dial_without_key() -> None:
    async def on_dial(incoming: IncomingDial) -> Sink:
        raise AssertionError("must not be called")

    link = _listener_flow(on_dial, encrypted=True, dialer_key=None)
    assert link.sent[-1].content_type == edge.CONTENT_TYPE_DIAL_FAILED


def test_listener_answers_dial_failed_when_the_handler_has_a_bug() -> None:
    async def on_dial(incoming: IncomingDial) -> Sink:
        raise ValueError("invalid literal for int() with base 10: '\u00b2'")

    link = _listener_flow(on_dial, encrypted=False)
    failed = link.sent[-1]
    assert failed.content_type == edge.CONTENT_TYPE_DIAL_FAILED
    assert failed.get_int(REPLY_FOR_HEADER) == 42
    assert failed.body == b"internal error in the hosting tunneler"
