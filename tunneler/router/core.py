"""The router's sans-IO core: channel lifecycle, hello validation, frame dispatch, timers.

The adapter calls `open_channel()` after the TLS handshake, `receive()` with every read,
`tick()` a few times a second, `sweep()` every few seconds, `channel_lost()` when a transport
goes away, `set_congested()` from the transport's pause/resume-writing callbacks, and `flush()`
after each of these so that every touched channel gets one write. Authentication (hello): the
API session named by header 1002 must exist and list the SHA-1 fingerprint of the client
certificate presented in the TLS handshake; or the header is an OIDC access token (a JWT) that
the controller's key signed, unexpired, naming a live API session and listing the certificate
in `z_cfs`. Such channels take UpdateToken (60803) with the refreshed token and are closed
(`router.token_expired`) when their token expires without one.
"""

from __future__ import annotations

import platform
import random
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import rsa

from tunneler import jwt, oidctokens
from tunneler.channel.connection import (
    ChannelEvent,
    MessageReceived,
    ProtocolViolation,
    ReplyReceived,
    ReplyTimedOut,
)
from tunneler.channel.message import MAX_HEADERS_LEN, Message, discard_buffer
from tunneler.edge import messages as e
from tunneler.errors import FrameError, TokenError
from tunneler.log import get_logger
from tunneler.router.authority import ApiSessionInfo, RouterAuthority
from tunneler.router.circuits import CircuitBook
from tunneler.router.outbox import Outbox
from tunneler.router.state import NUDGE_CONN_ID, ChannelSink, RouterChannel, RouterStats

#: the router's body cap, below the channel decoder's 16 MiB `MAX_BODY_LEN` (clients send Data
#: in chunks of at most 64 KiB, client/conn.py `MAX_CHUNK`)
ROUTER_MAX_BODY_LEN = 1024 * 1024
ROUTER_CAPABILITIES = b""  # big-endian bit mask (ziti common/capabilities); no bit is ours
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
log = get_logger("router")

Handler = Callable[[RouterChannel, Message, float], None]


def hello_version(version: str) -> str:
    """The HelloVersion header value: version|revision|build date|os|arch."""
    machine = platform.machine().lower()
    return "|".join((f"v{version}", "tunneler", "unknown", platform.system().lower(),
                     _ARCH.get(machine, machine)))


class RouterCore:
    """Every channel of one router, and what happens when bytes arrive on them."""

    def __init__(self, authority: RouterAuthority, *, version: str,
                 max_body_len: int = ROUTER_MAX_BODY_LEN, rng: random.Random | None = None,
                 token_key: rsa.RSAPublicKey | None = None,
                 wall_clock: Callable[[], float] | None = None) -> None:
        self._authority = authority
        self._token_key = token_key  # the controller's key: OIDC access tokens in Hello
        self._wall_clock = wall_clock or (lambda: 0.0)  # epoch seconds, for token expiry
        self._max_body_len = max_body_len
        self._hello_version = hello_version(version)
        self.stats = RouterStats()
        self.outbox = Outbox()
        self.book = CircuitBook(authority, self.outbox, self.stats, rng)
        self.channels: dict[int, RouterChannel] = {}
        self._next_channel_id = 1
        self._handlers: dict[int, Handler] = {
            e.CONTENT_TYPE_CONNECT: self.book.connect,
            e.CONTENT_TYPE_BIND: self.book.bind,
            e.CONTENT_TYPE_UNBIND: self.book.unbind,
            e.CONTENT_TYPE_DATA: self.book.data,
            e.CONTENT_TYPE_STATE_CLOSED: self.book.state_closed,
            e.CONTENT_TYPE_DIAL_SUCCESS: self.book.late_dial_answer,
            e.CONTENT_TYPE_DIAL_FAILED: self.book.late_dial_answer,
            e.CONTENT_TYPE_CONN_INSPECT_RESPONSE: self._inspect_answered,
            e.CONTENT_TYPE_UPDATE_TOKEN: self._update_token,
        }

    # -- lifecycle -------------------------------------------------------------------------------
    def open_channel(self, sink: ChannelSink, fingerprint: str, peer: str) -> RouterChannel:
        """A TLS handshake completed; the channel now waits for its hello."""
        ch = RouterChannel(self._next_channel_id, sink, fingerprint, peer,
                           max_body_len=self._max_body_len)
        self._next_channel_id += 1
        self.channels[ch.id] = ch
        self.stats.channels_active += 1
        return ch

    def channel_lost(self, ch: RouterChannel) -> None:
        """The transport under `ch` is gone: close its circuits, drop its terminators."""
        if self.channels.pop(ch.id, None) is None:
            return
        ch.closing = "lost"
        self.stats.channels_active -= 1
        self.book.channel_lost(ch)
        self.outbox.forget(ch)
        self.outbox.dirty.discard(ch)
        log.info("router.channel_closed", channel=ch.id, identity=ch.identity_name)

    def close_channel(self, ch: RouterChannel, reason: str) -> None:
        """Abort a channel (the adapter will report `channel_lost` when the transport is gone)."""
        log.warning("router.channel_aborted", channel=ch.id, identity=ch.identity_name,
                    reason=reason)
        self.outbox.close(ch, abort=True)

    def flush(self) -> None:
        """Write every touched channel's output."""
        self.outbox.flush()

    def set_congested(self, ch: RouterChannel, congested: bool) -> None:
        """The transport of `ch` crossed its high (True) or low (False) water mark."""
        self.outbox.set_congested(ch, congested)

    # -- read nudges ------------------------------------------------------------------------------
    def nudge(self, ch: RouterChannel) -> bool:
        """Send a read nudge (a ConnInspectRequest for no connection) to an SDK that answers
        them; False when the channel does not take nudges.

        libziti 1.18 (tlsuv 0.42 `process_inbound`) reads at most 16 x 64 KiB per socket
        event; whatever TLS already decrypted beyond that waits for the next bytes to arrive.
        After a burst of 1 MiB or more the adapter nudges once the channel is quiet, and again
        until the SDK answers, so the tail of the burst is delivered (docs/compatibility.md).
        """
        if not ch.supports_inspect or ch.closing is not None:
            return False
        ch.nudge_sequence = self.outbox.send(ch, e.conn_inspect_request(NUDGE_CONN_ID))
        return True

    def _inspect_answered(self, ch: RouterChannel, msg: Message, now: float) -> None:
        if ch.nudge_sequence is not None and msg.reply_for == ch.nudge_sequence:
            ch.nudge_sequence = None
            ch.sink.nudge_acknowledged()

    # -- receiving -------------------------------------------------------------------------------
    def receive(self, ch: RouterChannel, data: bytes | bytearray | memoryview, now: float) -> None:
        """Bytes arrived on `ch`."""
        if ch.closing is None:
            ch.splitter.feed(data)
            self._split(ch, now)

    def receive_buffer(self, ch: RouterChannel, hint: int) -> memoryview:
        """Where the transport of `ch` reads its next bytes into (then `received`); bytes read
        after the channel started closing are discarded."""
        if ch.closing is not None:
            return discard_buffer()
        return ch.splitter.writable(hint)

    def received(self, ch: RouterChannel, count: int, now: float) -> None:
        """`count` bytes were read into `receive_buffer`."""
        if ch.closing is None:
            ch.splitter.written(count)
            self._split(ch, now)

    def _split(self, ch: RouterChannel, now: float) -> None:
        """Relay or handle every whole frame the splitter holds."""
        try:
            while ch.closing is None and (item := ch.splitter.next_frame()) is not None:
                content_type, frame = item
                if (content_type == e.CONTENT_TYPE_DATA and ch.api_session is not None
                        and self.book.relay_raw(ch, frame)):
                    continue
                self._dispatch(ch, ch.conn.receive_data(frame), now)
        except FrameError as exc:
            self.stats.protocol_violations += 1
            self.close_channel(ch, str(exc))
        except Exception:  # a bug must cost one channel, never the router
            log.exception("router.message_failed", channel=ch.id)
            self.close_channel(ch, "internal error")

    def _dispatch(self, ch: RouterChannel, events: list[ChannelEvent], now: float) -> None:
        for event in events:
            if isinstance(event, MessageReceived):
                self._on_message(ch, event.message, now)
            elif isinstance(event, ReplyReceived):
                self.book.dial_answered(ch, event.request_sequence, event.message)
            elif isinstance(event, ReplyTimedOut):
                self.book.dial_timed_out(ch, event.request_sequence)
            elif isinstance(event, ProtocolViolation):
                self.stats.protocol_violations += 1
                self.close_channel(ch, event.reason)
        if ch.conn.pending_output:
            self.outbox.dirty.add(ch)

    def _on_message(self, ch: RouterChannel, message: Message, now: float) -> None:
        if ch.api_session is None:
            self._on_hello(ch, message)
            return
        handler = self._handlers.get(message.content_type)
        if handler is not None:
            handler(ch, message, now)
        else:
            log.debug("router.message_ignored", channel=ch.id, content_type=message.content_type)

    def _on_hello(self, ch: RouterChannel, hello: Message) -> None:
        api, reason, label = self._check_hello(ch, hello)
        if api is None:
            self.stats.hello_failures[label] += 1
            log.warning("router.hello_rejected", channel=ch.id, peer=ch.peer, reason=label)
            self.outbox.dirty.add(ch)
            ch.conn.send_result(hello, False, reason)
            self.outbox.close(ch)
            return
        ch.api_session = api
        ch.supports_inspect = hello.get_bool(e.SUPPORTS_INSPECT_HEADER)
        ch.splitter.max_headers_len = MAX_HEADERS_LEN
        ch.splitter.max_body_len = self._max_body_len
        self.outbox.dirty.add(ch)
        # As OpenZiti 2.x routers, but only what we implement: the capability mask (none of
        # MultiChannel, ConnectV2, ServiceSubscriptions, PostureChecks, BindSuccess) and no
        # SupportsPostureChecks/SupportsBindSuccess headers.
        ch.conn.send_result(hello, True, version=self._hello_version,
                            headers={e.ROUTER_CAPABILITIES_HEADER: ROUTER_CAPABILITIES})
        log.info("router.channel_accepted", channel=ch.id, peer=ch.peer,
                 identity=api.identity_name)

    def _check_hello(self, ch: RouterChannel,
                     hello: Message) -> tuple[ApiSessionInfo | None, str, str]:
        token = hello.get_str(e.SESSION_TOKEN_HEADER)
        if not token:
            return None, "no api session token in hello", "missing_token"
        if oidctokens.looks_like_jwt(token):
            return self._check_access_token(ch, token)
        api = self._authority.api_session_by_token(token)
        if api is None:
            return None, "invalid api session", "invalid_api_session"
        if ch.fingerprint not in api.cert_fingerprints:
            return None, "client certificate does not belong to the api session", "cert_mismatch"
        return api, "", ""

    def _check_access_token(self, ch: RouterChannel,
                            token: str) -> tuple[ApiSessionInfo | None, str, str]:
        """An OIDC access token: the controller's signature, unexpired, this certificate in
        `z_cfs`, and its API session still alive (revocation)."""
        if self._token_key is None:
            return None, "this router does not accept OIDC tokens", "invalid_token"
        try:
            claims = oidctokens.verify(token, self._token_key, token_type=oidctokens.TYPE_ACCESS,
                                       now=self._wall_clock())
        except TokenError as exc:
            return None, str(exc), "expired_token" if exc.expired else "invalid_token"
        if ch.fingerprint not in claims.fingerprints:
            return None, "client certificate is not one the token was issued to", "cert_mismatch"
        api = self._authority.api_session_info(claims.api_session_id)
        if api is None or api.identity_id != claims.identity_id:
            return None, "invalid api session", "invalid_api_session"
        ch.token_expires_at = claims.expires_at
        return ApiSessionInfo(api.id, token, api.identity_id, api.identity_name,
                              claims.fingerprints), "", ""

    def _update_token(self, ch: RouterChannel, msg: Message, now: float) -> None:
        """UpdateToken (60803): a refreshed access token for the same API session."""
        current = ch.api_session
        assert current is not None
        reason = ""
        if ch.token_expires_at is None:
            reason = "this channel is not authenticated with an access token"
        else:
            api, reason, _ = self._check_access_token(ch, e.body_text(msg))
            if api is not None and api.id != current.id:
                reason = "invalid token, API session id does not match"
            elif api is not None:
                ch.api_session = api
                self.outbox.reply(ch, msg, Message(e.CONTENT_TYPE_UPDATE_TOKEN_SUCCESS))
                log.info("router.token_updated", channel=ch.id, identity=api.identity_name)
                return
        log.warning("router.token_update_refused", channel=ch.id, identity=current.identity_name,
                    reason=reason)
        self.outbox.reply(ch, msg, Message(e.CONTENT_TYPE_UPDATE_TOKEN_FAILURE,
                                           body=reason.encode()))
        self.outbox.close(ch)

    # -- time ------------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Expire Dial requests whose host did not answer in time."""
        for ch in [ch for ch in self.channels.values() if ch.pending_dials]:
            self._dispatch(ch, ch.conn.handle_timer(now), now)

    def sweep(self) -> None:
        """Re-check API sessions, access-token expiry, sessions and policy; close what is no
        longer allowed."""
        wall = self._wall_clock()
        for ch in list(self.channels.values()):
            api = ch.api_session
            if api is None or ch.closing is not None:
                continue
            if ch.token_expires_at is None:
                alive = self._authority.api_session_by_token(api.token) is not None
            else:
                alive = self._authority.api_session_info(api.id) is not None
                if alive and jwt.expired(ch.token_expires_at, wall, oidctokens.LEEWAY_SECONDS):
                    log.warning("router.token_expired", channel=ch.id,
                                identity=api.identity_name, expired_at=ch.token_expires_at)
                    self.close_channel(ch, "access token expired and was not updated")
                    continue
            if not alive:
                self.close_channel(ch, "api session no longer valid")
        self.book.sweep()
