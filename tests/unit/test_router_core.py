"""The router's sans-IO core: hello, Connect/Bind pairing, ordering, relay, close, policy, caps."""

from __future__ import annotations

import random

import pytest
from router_support import MemoryAuthority, SimPeer, hello

from tunneler.channel.message import (
    CONTENT_TYPE_LATENCY,
    CONTENT_TYPE_RESULT,
    HELLO_VERSION_HEADER,
    LATENCY_PROBE_TIME_HEADER,
    MAGIC,
    PREFIX,
    Message,
)
from tunneler.edge import messages as e
from tunneler.router.authority import ApiSessionInfo
from tunneler.router.core import RouterCore

HOST_KEY = bytes(range(32))
DIALER_KEY = bytes(range(32, 64))


class World:
    """A core with an authenticated host (bound to `svc`) and an authenticated dialer."""

    def __init__(self, *, encrypted: bool = False, bind: bool = True) -> None:
        self.auth = MemoryAuthority()
        self.core = RouterCore(self.auth, version="9.9.9", rng=random.Random(1))
        self.host_api = self.auth.add_identity("host", "fp-host")
        self.dialer_api = self.auth.add_identity("dialer", "fp-dialer")
        self.host = self.peer(self.host_api)
        self.dialer = self.peer(self.dialer_api)
        self.encrypted = encrypted
        self.bind_session = self.auth.add_session(self.host_api, "svc", "Bind", encrypted=encrypted)
        self.dial_session = self.auth.add_session(self.dialer_api, "svc", "Dial",
                                                  encrypted=encrypted)
        if bind:
            self.host.request(e.bind(1, self.bind_session.token, "host",
                                     public_key=HOST_KEY if encrypted else None))
            assert self.host.one().content_type == e.CONTENT_TYPE_STATE_CONNECTED

    def peer(self, api: ApiSessionInfo) -> SimPeer:
        fingerprint = next(iter(api.cert_fingerprints))
        peer = SimPeer(self.core, fingerprint, api.identity_name)
        peer.request(hello(api.token))
        assert peer.one().get_bool(2)
        return peer

    def connect(self, conn_id: int = 7, **kwargs: object) -> tuple[int, Message]:
        """Dialer sends Connect; returns (connect seq, the Dial the host received)."""
        if self.encrypted:
            kwargs.setdefault("public_key", DIALER_KEY)
        seq = self.dialer.request(e.connect(conn_id, self.dial_session.token, "dialer",
                                            **kwargs))  # type: ignore[arg-type]
        return seq, self.host.one()

    def circuit(self, conn_id: int = 7, child: int = 100, **kwargs: object) -> None:
        """A connected circuit: dialer conn_id <-> host child."""
        _seq, dial = self.connect(conn_id, **kwargs)
        self.host.reply(dial, e.dial_success(1, child))
        assert self.host.one().content_type == e.CONTENT_TYPE_STATE_CONNECTED
        assert self.dialer.one().content_type == e.CONTENT_TYPE_STATE_CONNECTED


def test_hello_accepted_with_version_and_latency_probe_answered() -> None:
    auth = MemoryAuthority()
    core = RouterCore(auth, version="1.2.3")
    api = auth.add_identity("a", "fp-a")
    peer = SimPeer(core, "fp-a")
    seq = peer.request(hello(api.token))
    reply = peer.one()
    assert reply.content_type == CONTENT_TYPE_RESULT and reply.reply_for == seq
    assert reply.get_bool(2)
    version = reply.get_str(HELLO_VERSION_HEADER)
    assert version is not None and version.startswith("v1.2.3|") and version.count("|") == 4
    probe = Message(CONTENT_TYPE_LATENCY).set_uint64(LATENCY_PROBE_TIME_HEADER, 12345)
    seq = peer.request(probe)
    answer = peer.one()
    assert answer.reply_for == seq and answer.get_int(LATENCY_PROBE_TIME_HEADER) == 12345
    assert core.stats.channels_active == 1


@pytest.mark.parametrize(("token", "fingerprint", "label"), [
    (None, "fp-a", "missing_token"),
    ("not-a-token", "fp-a", "invalid_api_session"),
    ("GOOD", "fp-other", "cert_mismatch"),
])
def test_hello_rejected(token: str | None, fingerprint: str, label: str) -> None:
    auth = MemoryAuthority()
    core = RouterCore(auth, version="1")
    api = auth.add_identity("a", "fp-a")
    peer = SimPeer(core, fingerprint)
    peer.request(hello(api.token if token == "GOOD" else token))
    reply = peer.one()
    assert reply.content_type == CONTENT_TYPE_RESULT and not reply.get_bool(2)
    assert reply.body
    assert peer.sink.closed == "graceful"
    assert core.stats.hello_failures[label] == 1


def test_first_frame_not_hello_aborts() -> None:
    auth = MemoryAuthority()
    core = RouterCore(auth, version="1")
    peer = SimPeer(core, "fp")
    peer.send(e.connect(1, "tok", "x"))
    assert peer.sink.closed == "abort"


def test_full_circuit_ordering_relay_fin_and_close() -> None:
    w = World()
    connect_seq, dial = w.connect(7, app_data=b'{"dst_port": "80"}')
    assert dial.content_type == e.CONTENT_TYPE_DIAL
    assert e.conn_id_of(dial) == 1
    assert e.body_text(dial) == w.bind_session.token
    assert dial.get_str(e.CALLER_ID_HEADER) == "dialer"
    assert dial.headers[e.APP_DATA_HEADER] == b'{"dst_port": "80"}'
    assert e.PUBLIC_KEY_HEADER not in dial.headers
    w.host.reply(dial, e.dial_success(1, 100))
    host_connected = w.host.one()
    assert host_connected.content_type == e.CONTENT_TYPE_STATE_CONNECTED
    dialer_connected = w.dialer.one()
    assert dialer_connected.content_type == e.CONTENT_TYPE_STATE_CONNECTED
    assert dialer_connected.reply_for == connect_seq and e.conn_id_of(dialer_connected) == 7
    assert e.PUBLIC_KEY_HEADER not in dialer_connected.headers  # the 0.29.3 pitfall
    assert w.core.stats.circuits_active == 1

    w.dialer.send(e.data(7, 1, b"ping"))
    got = w.host.one()
    assert (got.content_type, e.conn_id_of(got), got.body) == (e.CONTENT_TYPE_DATA, 100, b"ping")
    w.host.send(e.data(100, 1, b"pong"))
    got = w.dialer.one()
    assert (e.conn_id_of(got), got.body) == (7, b"pong")
    w.dialer.send(e.fin(7, 2))
    fin = w.host.one()
    assert e.is_fin(fin) and e.conn_id_of(fin) == 100 and fin.body == b""
    w.host.send(e.state_closed(100))
    closed = w.dialer.one()
    assert closed.content_type == e.CONTENT_TYPE_STATE_CLOSED and e.conn_id_of(closed) == 7
    assert closed.body
    assert w.host.messages() == []  # a StateClosed is never answered
    assert w.core.stats.circuits_active == 0
    assert w.core.stats.bytes_relayed == 8


def test_state_connected_to_host_precedes_dialer_data_on_the_same_channel() -> None:
    """Host and dialer on one channel: the host's StateConnected comes first in the stream."""
    w = World()
    # host identity also dials through its own channel
    dial_session = w.auth.add_session(w.host_api, "svc", "Dial")
    seq = w.host.request(e.connect(50, dial_session.token, "host"))
    dial = w.host.one()
    w.host.reply(dial, e.dial_success(1, 51))
    first, second = w.host.messages()
    assert first.reply_for is not None and e.conn_id_of(first) == 1
    assert second.reply_for == seq and e.conn_id_of(second) == 50
    w.host.send(e.data(50, 1, b"loop"))
    got = w.host.one()
    assert (e.conn_id_of(got), got.body) == (51, b"loop")


def test_encrypted_service_exchanges_keys_only_when_required() -> None:
    w = World(encrypted=True)
    _seq, dial = w.connect(7)
    assert dial.headers[e.PUBLIC_KEY_HEADER] == DIALER_KEY
    w.host.reply(dial, e.dial_success(1, 100))
    w.host.one()
    connected = w.dialer.one()
    assert connected.headers[e.PUBLIC_KEY_HEADER] == HOST_KEY


def test_encrypted_service_without_dialer_key_is_refused() -> None:
    w = World(encrypted=True)
    w.dialer.request(e.connect(7, w.dial_session.token, "dialer"))
    refused = w.dialer.one()
    assert refused.content_type == e.CONTENT_TYPE_STATE_CLOSED
    assert "encryption required" in e.body_text(refused)
    assert w.host.messages() == []


def test_unencrypted_service_never_forwards_keys() -> None:
    w = World()
    _seq, dial = w.connect(7, public_key=DIALER_KEY)
    assert e.PUBLIC_KEY_HEADER not in dial.headers


def test_no_terminator_gives_clear_reason() -> None:
    w = World(bind=False)
    w.dialer.request(e.connect(7, w.dial_session.token, "dialer"))
    refused = w.dialer.one()
    assert refused.content_type == e.CONTENT_TYPE_STATE_CLOSED
    text = e.body_text(refused)
    assert text == "service svc has no terminators"
    assert not e.INVALID_SESSION.startswith(text)
    assert refused.get_int(e.ERROR_CODE_HEADER) == e.ERROR_INVALID_TERMINATOR


@pytest.mark.parametrize("case", ["unknown", "wrong_type", "other_identity"])
def test_bad_session_is_invalid_session(case: str) -> None:
    w = World()
    token = {"unknown": "nope", "wrong_type": w.bind_session.token,
             "other_identity": w.auth.add_session(w.host_api, "svc", "Dial").token}[case]
    seq = w.dialer.request(e.connect(7, token, "dialer"))
    refused = w.dialer.one()
    assert refused.reply_for == seq and e.body_text(refused) == e.INVALID_SESSION
    assert refused.get_int(e.ERROR_CODE_HEADER) == e.ERROR_INVALID_SESSION


def test_session_of_another_api_session_of_the_same_identity_is_refused() -> None:
    w = World()
    other = ApiSessionInfo("as-dialer-2", "token-2", w.dialer_api.identity_id, "dialer",
                           w.dialer_api.cert_fingerprints)
    w.auth.api_sessions[other.token] = other
    foreign = w.auth.add_session(other, "svc", "Dial")
    w.dialer.request(e.connect(7, foreign.token, "dialer"))
    refused = w.dialer.one()
    assert refused.content_type == e.CONTENT_TYPE_STATE_CLOSED
    assert e.body_text(refused) == e.INVALID_SESSION  # so the SDK gets a session of its own
    assert refused.get_int(e.ERROR_CODE_HEADER) == e.ERROR_INVALID_SESSION
    assert not w.core.book.circuits


def test_dial_not_permitted_is_refused_without_retry_text() -> None:
    w = World()
    w.auth.revoke(w.dialer_api, "svc", "Dial")
    w.dialer.request(e.connect(7, w.dial_session.token, "dialer"))
    text = e.body_text(w.dialer.one())
    assert "not permitted" in text


def test_bind_without_permission_refused() -> None:
    w = World(bind=False)
    session = w.auth.add_session(w.host_api, "other", "Bind", permit=False)
    w.host.request(e.bind(3, session.token, "host"))
    refused = w.host.one()
    assert refused.content_type == e.CONTENT_TYPE_STATE_CLOSED and "not permitted" in e.body_text(
        refused)
    assert len(w.core.book.terminators) == 0


def test_duplicate_conn_id_refused_without_harming_existing_circuit() -> None:
    w = World()
    w.circuit(7, 100)
    w.dialer.request(e.connect(7, w.dial_session.token, "dialer"))
    assert "in use" in e.body_text(w.dialer.one())
    w.dialer.send(e.data(7, 1, b"still"))
    assert w.host.one().body == b"still"


def test_dial_failed_and_dial_timeout() -> None:
    w = World()
    _seq, dial = w.connect(7)
    w.host.reply(dial, e.dial_failed(1, "nothing listening"))
    text = e.body_text(w.dialer.one())
    assert "nothing listening" in text
    _seq, dial = w.connect(8)
    w.core.tick(10.0)
    w.core.flush()
    assert "timed out" in e.body_text(w.dialer.one())
    # the late DialSuccess is answered with StateClosed so the host drops its connection
    w.host.reply(dial, e.dial_success(1, 200))
    late = w.host.one()
    assert late.content_type == e.CONTENT_TYPE_STATE_CLOSED and e.conn_id_of(late) == 200
    assert w.core.stats.dial_failures["dial_timeout"] == 1


def test_dialer_data_before_connected_is_buffered_then_relayed() -> None:
    w = World()
    _seq, dial = w.connect(7)
    w.dialer.send(e.data(7, 1, b"early"))
    assert w.host.messages() == []
    w.host.reply(dial, e.dial_success(1, 100))
    connected, data = w.host.messages()
    assert connected.content_type == e.CONTENT_TYPE_STATE_CONNECTED
    assert (e.conn_id_of(data), data.body) == (100, b"early")


def test_unknown_conn_id_answered_with_state_closed_but_state_closed_is_not() -> None:
    w = World()
    w.dialer.send(e.data(99, 1, b"x"))
    closed = w.dialer.one()
    assert closed.content_type == e.CONTENT_TYPE_STATE_CLOSED and e.conn_id_of(closed) == 99
    w.dialer.send(e.state_closed(98))
    assert w.dialer.messages() == []


def test_unbind_and_state_closed_on_listener_remove_terminator() -> None:
    w = World()
    w.host.request(e.unbind(1, w.bind_session.token))
    reply = w.host.one()
    assert e.body_text(reply) == "unbind successful"
    assert len(w.core.book.terminators) == 0
    w.host.request(e.bind(2, w.bind_session.token, "host"))
    w.host.one()
    w.host.send(e.state_closed(2))
    assert len(w.core.book.terminators) == 0
    assert w.host.messages() == []


def test_host_channel_loss_closes_dialer_circuits_and_terminators() -> None:
    w = World()
    w.circuit(7, 100)
    _seq, _dial = w.connect(8)  # still dialing
    w.core.channel_lost(w.host.channel)
    w.core.flush()
    closed = {e.conn_id_of(m): m for m in w.dialer.messages()}
    assert set(closed) == {7, 8}
    assert all(m.content_type == e.CONTENT_TYPE_STATE_CLOSED and m.body for m in closed.values())
    assert len(w.core.book.terminators) == 0 and w.core.stats.circuits_active == 0


def test_dialer_channel_loss_closes_host_side() -> None:
    w = World()
    w.circuit(7, 100)
    w.core.channel_lost(w.dialer.channel)
    w.core.flush()
    closed = w.host.one()
    assert closed.content_type == e.CONTENT_TYPE_STATE_CLOSED and e.conn_id_of(closed) == 100


def test_policy_sweep_closes_only_revoked_circuits() -> None:
    w = World()
    other_bind = w.auth.add_session(w.host_api, "other", "Bind")
    w.host.request(e.bind(2, other_bind.token, "host"))
    w.host.one()
    other_dial = w.auth.add_session(w.dialer_api, "other", "Dial")
    w.circuit(7, 100)
    w.dialer.request(e.connect(8, other_dial.token, "dialer"))
    dial = w.host.one()
    w.host.reply(dial, e.dial_success(2, 101))
    w.host.messages()
    w.dialer.messages()
    w.auth.revoke(w.dialer_api, "svc", "Dial")
    w.core.sweep()
    w.core.flush()
    assert [e.conn_id_of(m) for m in w.dialer.messages()] == [7]
    assert [e.conn_id_of(m) for m in w.host.messages()] == [100]
    w.dialer.send(e.data(8, 1, b"unaffected"))
    assert w.host.one().body == b"unaffected"
    # bind revocation removes the terminator and tells the host
    w.auth.revoke(w.host_api, "svc", "Bind")
    w.core.sweep()
    w.core.flush()
    closed = w.host.one()
    assert closed.content_type == e.CONTENT_TYPE_STATE_CLOSED and e.conn_id_of(closed) == 1
    assert len(w.core.book.terminators) == 1


def test_expired_api_session_closes_its_channel() -> None:
    w = World()
    del w.auth.api_sessions[w.dialer_api.token]
    w.core.sweep()
    w.core.flush()
    assert w.dialer.sink.closed == "abort" and w.host.sink.closed is None


def test_terminator_selection_precedence_cost_and_identity() -> None:
    w = World(bind=False)
    for conn_id, cost, precedence, identity in [(1, 10, 0, "a"), (2, 5, 0, "b"),
                                                 (3, 50, 1, "c"), (4, 1, 2, "d")]:
        w.host.request(e.bind(conn_id, w.bind_session.token, "host", cost=cost,
                              precedence=precedence, terminator_identity=identity))
        w.host.one()
    _seq, dial = w.connect(7)
    assert e.conn_id_of(dial) == 3  # required beats lower cost
    w.host.send(e.unbind(3, w.bind_session.token))
    w.host.messages()
    _seq, dial = w.connect(8)
    assert e.conn_id_of(dial) == 2  # then lowest cost among default
    _seq, dial = w.connect(9, terminator_identity="d")
    assert e.conn_id_of(dial) == 4
    w.dialer.request(e.connect(10, w.dial_session.token, "dialer", terminator_identity="zz"))
    assert "no terminators for identity zz" in e.body_text(w.dialer.one())


def test_backpressure_pauses_sources_of_a_congested_channel() -> None:
    w = World()
    w.circuit(7, 100)
    w.core.set_congested(w.host.channel, True)
    assert not w.dialer.sink.paused
    w.dialer.send(e.data(7, 1, b"x" * 1000))
    assert w.dialer.sink.paused
    w.core.set_congested(w.host.channel, False)
    assert not w.dialer.sink.paused


def test_oversized_and_garbage_frames_abort_only_that_channel() -> None:
    w = World()
    w.circuit(7, 100)
    intruder_api = w.auth.add_identity("intruder", "fp-i")
    intruder = w.peer(intruder_api)
    intruder.push(PREFIX.pack(MAGIC, e.CONTENT_TYPE_DATA, 1, 0, 64 * 1024 * 1024))
    assert intruder.sink.closed == "abort"
    garbage = w.peer(w.auth.add_identity("garbage", "fp-g"))
    garbage.push(b"GET / HTTP/1.1\r\n\r\n")
    assert garbage.sink.closed == "abort"
    assert w.core.stats.protocol_violations == 2
    w.dialer.send(e.data(7, 1, b"fine"))
    assert w.host.one().body == b"fine"


def test_fast_path_preserves_edge_headers_and_strips_channel_headers() -> None:
    w = World()
    w.circuit(7, 100)
    message = e.data(7, 5, b"abc")
    message.headers[1099] = b"custom"
    w.dialer.send(message)
    got = w.host.one()
    assert got.headers[1099] == b"custom" and got.get_int(e.SEQ_HEADER) == 5
    sneaky = e.data(7, 6, b"def").set_int32(1, 0)  # a forged ReplyFor must not cross over
    w.dialer.send(sneaky)
    got = w.host.one()
    assert got.body == b"def" and got.reply_for is None


def test_fragmented_input_is_reassembled() -> None:
    w = World()
    w.circuit(7, 100)
    w.dialer.conn.send(e.data(7, 1, b"a" * 5000))
    w.dialer.conn.send(e.data(7, 2, b"b" * 10))
    raw = w.dialer.conn.data_to_send()
    for index in range(0, len(raw), 777):
        w.dialer.push(raw[index : index + 777])
    bodies = [m.body for m in w.host.messages()]
    assert bodies == [b"a" * 5000, b"b" * 10]
