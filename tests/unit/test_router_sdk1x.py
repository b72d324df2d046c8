"""What the router does for libziti 1.x SDKs: router-provided connection ids, read nudges, and
the hello reply headers (docs/compatibility.md)."""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.unit.router_support import MemoryAuthority, SimPeer, hello
from tunneler import oidctokens
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


# -- OIDC access tokens in Hello and UpdateToken ---------------------------------------------

class OidcWorld:
    """A router that takes access tokens signed by KEY; the wall clock is `self.now`."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.auth = MemoryAuthority()
        self.core = RouterCore(self.auth, version="1", token_key=KEY.public_key(),
                               wall_clock=lambda: self.now)
        self.api = self.auth.add_identity("sdk", "fp-sdk")

    def token(self, *, session: str | None = None, fingerprint: str = "fp-sdk",
              lifetime: float = 30.0, key: rsa.RSAPrivateKey | None = None) -> str:
        return oidctokens.issue(oidctokens.TYPE_ACCESS, key or KEY, issuer="https://c/oidc",
                                identity_id=self.api.identity_id,
                                api_session_id=session or self.api.id,
                                fingerprints=(fingerprint,), config_types=(),
                                lifetime=lifetime, now=self.now)

    def peer(self, token: str) -> tuple[SimPeer, Message]:
        peer = SimPeer(self.core, "fp-sdk", "sdk")
        peer.request(_hello_1x(token))
        return peer, peer.one()


KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_hello_with_an_access_token_is_accepted_and_names_its_api_session() -> None:
    w = OidcWorld()
    peer, reply = w.peer(w.token())
    assert reply.get_bool(2)
    assert peer.channel.api_session is not None and peer.channel.api_session.id == w.api.id
    assert peer.channel.token_expires_at == w.now + 30


@pytest.mark.parametrize(("case", "label"), [
    ("forged", "invalid_token"), ("expired", "expired_token"),
    ("other_cert", "cert_mismatch"), ("revoked_session", "invalid_api_session")])
def test_hello_with_a_bad_access_token_is_refused(case: str, label: str) -> None:
    w = OidcWorld()
    token = {"forged": lambda: w.token(key=rsa.generate_private_key(65537, 2048)),
             "expired": lambda: w.token(lifetime=-60),
             "other_cert": lambda: w.token(fingerprint="fp-someone-else"),
             "revoked_session": lambda: w.token(session="as-gone")}[case]()
    _, reply = w.peer(token)
    assert not reply.get_bool(2)
    assert w.core.stats.hello_failures[label] == 1


def test_update_token_extends_the_channel_and_expiry_closes_it() -> None:
    w = OidcWorld()
    peer, _ = w.peer(w.token(lifetime=30))
    w.now += 20
    fresh = w.token(lifetime=30)
    seq = peer.request(Message(e.CONTENT_TYPE_UPDATE_TOKEN, body=fresh.encode()))
    reply = peer.one()
    assert reply.content_type == e.CONTENT_TYPE_UPDATE_TOKEN_SUCCESS and reply.reply_for == seq
    assert peer.channel.token_expires_at == w.now + 30
    w.now += 25  # past the first token's expiry, within the second's
    w.core.sweep()
    w.core.flush()
    assert peer.sink.closed is None
    w.now += 30
    w.core.sweep()
    w.core.flush()
    assert peer.sink.closed == "abort"


@pytest.mark.parametrize("case", ["other_session", "garbage"])
def test_a_bad_update_token_is_refused_and_closes_the_channel(case: str) -> None:
    w = OidcWorld()
    peer, _ = w.peer(w.token())
    other = w.auth.add_identity("sdk2", "fp-sdk")
    body = {"other_session": lambda: w.token(session=other.id), "garbage": lambda: "x.y.z"}[case]()
    peer.request(Message(e.CONTENT_TYPE_UPDATE_TOKEN, body=body.encode()))
    reply = peer.one()
    assert reply.content_type == e.CONTENT_TYPE_UPDATE_TOKEN_FAILURE and reply.body
    assert peer.sink.closed == "graceful"


def test_routers_without_the_key_refuse_access_tokens_and_legacy_channels_refuse_updates() -> None:
    w = OidcWorld()
    legacy = RouterCore(w.auth, version="1")
    peer = SimPeer(legacy, "fp-sdk", "sdk")
    peer.request(_hello_1x(w.token()))
    assert not peer.one().get_bool(2)
    old = SimPeer(w.core, "fp-sdk", "sdk")
    old.request(_hello_1x(w.api.token))
    assert old.one().get_bool(2)
    old.request(Message(e.CONTENT_TYPE_UPDATE_TOKEN, body=w.token().encode()))
    assert old.one().content_type == e.CONTENT_TYPE_UPDATE_TOKEN_FAILURE
