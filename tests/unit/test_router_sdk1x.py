"""What the router does for libziti 1.x SDKs: router-provided connection ids, read nudges, and
the hello reply headers (docs/compatibility.md)."""

from __future__ import annotations

import random

from tests.unit.router_support import MemoryAuthority, SimPeer, hello
from tunneler.channel.message import Message
from tunneler.edge import messages as e
from tunneler.router import nudge
from tunneler.router.core import RouterCore
from tunneler.router.nudge import ReadNudger
from tunneler.router.state import NUDGE_CONN_ID, ROUTER_ASSIGNED_IDS


def _hello_1x(token: str) -> Message:
    message = hello(token)
    message.set_bool(e.SUPPORTS_INSPECT_HEADER, True)
    return message


def _router_conn_id(dial: Message) -> int:
    return int.from_bytes(dial.headers[e.ROUTER_PROVIDED_CONN_ID_HEADER], "little")


class World1x:
    """A libziti-1.x-like host (router-provided ids, inspect support) and a dialer."""

    def __init__(self) -> None:
        self.auth = MemoryAuthority()
        self.core = RouterCore(self.auth, version="9.9.9", rng=random.Random(1))
        host_api = self.auth.add_identity("host", "fp-host")
        dialer_api = self.auth.add_identity("dialer", "fp-dialer")
        self.host = SimPeer(self.core, "fp-host", "host")
        self.host.request(_hello_1x(host_api.token))
        self.hello_reply = self.host.one()
        self.dialer = SimPeer(self.core, "fp-dialer", "dialer")
        self.dialer.request(hello(dialer_api.token))
        assert self.dialer.one().get_bool(2)
        bind_session = self.auth.add_session(host_api, "svc", "Bind")
        self.dial_session = self.auth.add_session(dialer_api, "svc", "Dial")
        bind = e.bind(0, bind_session.token, "host")
        bind.set_bool(e.ROUTER_PROVIDED_CONN_ID_HEADER, True)
        self.host.request(bind)
        self.bound = self.host.one()

    def dial(self, conn_id: int = 7) -> tuple[int, Message]:
        seq = self.dialer.request(e.connect(conn_id, self.dial_session.token, "dialer"))
        return seq, self.host.one()


def test_hello_reply_has_the_capability_mask_and_no_unimplemented_feature() -> None:
    reply = World1x().hello_reply
    assert reply.get_bool(2)
    assert reply.headers[e.ROUTER_CAPABILITIES_HEADER] == b""
    assert 1032 not in reply.headers and 1024 not in reply.headers  # posture, bind success


def test_bind_with_router_provided_ids_gets_ids_and_dial_success_gets_no_reply() -> None:
    w = World1x()
    assert w.bound.content_type == e.CONTENT_TYPE_STATE_CONNECTED
    assert w.bound.get_bool(e.ROUTER_PROVIDED_CONN_ID_HEADER)
    connect_seq, dial = w.dial(7)
    assigned = _router_conn_id(dial)
    assert assigned >= ROUTER_ASSIGNED_IDS
    w.host.reply(dial, e.dial_success(0, assigned))
    assert w.host.messages() == []  # libziti 1.x expects no StateConnected for its DialSuccess
    connected = w.dialer.one()
    assert connected.content_type == e.CONTENT_TYPE_STATE_CONNECTED
    assert connected.reply_for == connect_seq
    w.host.send(e.data(assigned, 1, b"hello from the host"))
    relayed = w.dialer.one()
    assert relayed.body == b"hello from the host" and e.conn_id_of(relayed) == 7
    assert _router_conn_id(w.dial(8)[1]) == assigned + 1


def test_dial_success_with_another_id_than_assigned_is_refused() -> None:
    w = World1x()
    _, dial = w.dial(7)
    w.host.reply(dial, e.dial_success(0, 12345))
    refused = w.host.one()
    assert refused.content_type == e.CONTENT_TYPE_STATE_CLOSED
    closed = w.dialer.one()
    assert closed.content_type == e.CONTENT_TYPE_STATE_CLOSED
    assert "invalid connection id" in e.body_text(closed)


def test_nudge_is_a_conn_inspect_for_no_connection_and_its_answer_is_acknowledged() -> None:
    w = World1x()
    assert w.core.nudge(w.host.channel)
    w.core.flush()
    request = w.host.one()
    assert request.content_type == e.CONTENT_TYPE_CONN_INSPECT_REQUEST
    assert e.conn_id_of(request) == NUDGE_CONN_ID
    stale = Message(e.CONTENT_TYPE_CONN_INSPECT_RESPONSE, body=b"invalid conn id")
    stale.set_int32(e.CONN_ID_HEADER, NUDGE_CONN_ID)
    w.host.reply(Message(0, sequence=request.sequence - 1), stale)
    assert w.host.sink.nudges_acknowledged == 0
    answer = Message(e.CONTENT_TYPE_CONN_INSPECT_RESPONSE, body=b"invalid conn id")
    answer.set_int32(e.CONN_ID_HEADER, NUDGE_CONN_ID)
    w.host.reply(request, answer)
    assert w.host.sink.nudges_acknowledged == 1
    assert w.host.sink.closed is None


def test_sdks_without_inspect_support_are_never_nudged() -> None:
    w = World1x()
    assert not w.core.nudge(w.dialer.channel)
    w.core.flush()
    assert w.dialer.messages() == []


def test_nudger_waits_for_quiet_then_repeats_with_backoff_until_answered() -> None:
    nudger = ReadNudger()
    assert not nudger.wrote(nudge.NUDGE_AFTER_BYTES - 1)
    assert nudger.tick() == (False, True)  # output since the last tick: not quiet yet
    assert nudger.tick() == (False, False)  # quiet, but too little was sent to need a nudge
    assert nudger.wrote(1)
    assert nudger.tick() == (False, True)
    assert nudger.tick() == (True, True)
    intervals = []
    for _ in range(8):
        nudger.wrote(40)  # the nudge itself
        nudger.sent()
        intervals.append(nudger.interval)
        assert nudger.tick() == (True, True)  # unanswered: nudge again on the next quiet tick
    assert intervals[0] == nudge.FIRST_INTERVAL
    assert intervals == sorted(intervals) and intervals[-1] == nudge.MAX_INTERVAL
    nudger.acknowledged()
    assert nudger.interval == nudge.FIRST_INTERVAL
    assert nudger.tick() == (False, False)
