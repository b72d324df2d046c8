"""An edge connection (one circuit end) on a router link: dial, data, half-close, close, crypto.

States::

    CONNECTING --StateConnected--> CONNECTED --both FINs / StateClosed / close()--> CLOSED
    ACCEPTING  --StateConnected--> CONNECTED      (host side child, after DialSuccess)
    CONNECTING/ACCEPTING --StateClosed, timeout, link loss--> CLOSED

Received bytes go to an `OverlaySink` (the local socket bridge) given at creation; the sink is told
`edge_connected` synchronously when the connection becomes CONNECTED, so Data that arrives in
the same read already has somewhere to go. A sink that loses its local side calls `close()`;
the peer then sees StateClosed without FIN, which it treats as abrupt (RST to its app).
Encryption (openziti-protocol.md §3.8): our 24-byte stream header is the first Data we send
right after StateConnected; the first Data we receive must be the peer's header; FIN is never
encrypted. Data is sent in chunks of at most `MAX_CHUNK` bytes.
"""

from __future__ import annotations

import asyncio
import enum

from tunneler.channel.message import REPLY_FOR_HEADER, Message
from tunneler.client.link import LinkHandler, RouterLink
from tunneler.edge import crypto
from tunneler.edge import messages as edge
from tunneler.errors import CryptoError, DialError, DialFailure, InvalidSessionError
from tunneler.log import get_logger
from tunneler.overlay import OverlaySink

log = get_logger("conn")

MAX_CHUNK = 64 * 1024
DIAL_TIMEOUT = 10.0
ACCEPT_TIMEOUT = 10.0


class ConnState(enum.Enum):
    """Lifecycle of an edge connection."""

    CONNECTING = "connecting"
    ACCEPTING = "accepting"
    CONNECTED = "connected"
    CLOSED = "closed"


def is_invalid_session(reason: str) -> bool:
    """libziti's rule: the body equals "Invalid Session" or is a prefix of it (even empty)."""
    return edge.INVALID_SESSION.startswith(reason)


def refusal_reason(reason: str) -> DialFailure:
    """What a router's refusal text means for counting: the wire carries only text, so this
    is the one place it is read (a router or host that timed out says "timed out")."""
    return DialFailure.TIMEOUT if "timed out" in reason else DialFailure.REFUSED


class EdgeConnection(LinkHandler):
    """One end of a circuit, registered on a link under its ConnId."""

    def __init__(self, link: RouterLink, conn_id: int, sink: OverlaySink, *,
                 state: ConnState = ConnState.CONNECTING) -> None:
        self.link = link
        self.conn_id = conn_id
        self.state = state
        self._sink = sink
        self._seq = 0
        self._encryptor: crypto.Encryptor | None = None
        self._decryptor: crypto.Decryptor | None = None
        self.sent_fin = False
        self.received_fin = False
        self._paused = False
        link.register(conn_id, self)

    # -- becoming connected ----------------------------------------------------------------
    def established(self, keys: crypto.SessionKeys | None) -> None:
        """StateConnected arrived: set up crypto, send our stream header, start the sink."""
        self.state = ConnState.CONNECTED
        if keys is not None:
            self._encryptor = crypto.Encryptor(keys.tx)
            self._decryptor = crypto.Decryptor(keys.rx)
            self._send_data(self._encryptor.header)
        self._sink.edge_connected(self)
        if not self.link.writable:
            self._sink.set_link_writable(False)

    # -- sending ---------------------------------------------------------------------------
    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _send_data(self, payload: bytes) -> None:
        self.link.send(edge.data(self.conn_id, self._next_seq(), payload))

    def write(self, data: bytes) -> None:
        """Send payload (split into chunks of at most 64 KiB, encrypted if the service is)."""
        if self.state is not ConnState.CONNECTED or self.sent_fin:
            return
        encryptor = self._encryptor
        if encryptor is None:
            for offset in range(0, len(data), MAX_CHUNK):
                self._send_data(data[offset:offset + MAX_CHUNK] if len(data) > MAX_CHUNK else data)
            return
        with memoryview(data) as view:  # encrypted from slices of the caller's bytes, not copies
            for offset in range(0, len(data), MAX_CHUNK):
                self._send_data(encryptor.encrypt(view[offset:offset + MAX_CHUNK]))

    def write_eof(self) -> None:
        """Half-close: FIN (an empty, never encrypted Data with Flags = 1)."""
        if self.state is not ConnState.CONNECTED or self.sent_fin:
            return
        self.sent_fin = True
        self.link.send(edge.fin(self.conn_id, self._next_seq()))
        if self.received_fin:
            self._finish(abrupt=False)

    def pause(self) -> None:
        """The sink is full: stop reading the link (every circuit on it) until `resume`."""
        if not self._paused and self.state is not ConnState.CLOSED:
            self._paused = True
            self.link.pause_reading_for(self)

    def resume(self) -> None:
        """The sink drained (also done by `close`, so a closed circuit never holds the link)."""
        if self._paused:
            self._paused = False
            self.link.resume_reading_for(self)

    def close(self) -> None:
        """Close now: StateClosed to the peer; the sink is not called back."""
        self.resume()
        if self.state is ConnState.CLOSED:
            return
        self.state = ConnState.CLOSED
        self.link.unregister(self.conn_id)
        if not self.link.closed:
            self.link.send(edge.state_closed(self.conn_id, seq=self._next_seq()))

    def _finish(self, abrupt: bool) -> None:
        self.close()
        self._sink.edge_closed(abrupt)

    # -- receiving -------------------------------------------------------------------------
    def handle_message(self, message: Message) -> None:
        if message.content_type == edge.CONTENT_TYPE_DATA:
            if self.state is ConnState.CONNECTED:
                self._data_received(message)
        elif (message.content_type == edge.CONTENT_TYPE_STATE_CLOSED
              and self.state is ConnState.CONNECTED):
            self.state = ConnState.CLOSED
            self.resume()
            self.link.unregister(self.conn_id)
            self._sink.edge_closed(abrupt=not self.received_fin)

    def _data_received(self, message: Message) -> None:
        if edge.is_fin(message):
            if not self.received_fin:
                self.received_fin = True
                self._sink.edge_eof()
                if self.sent_fin:
                    self._finish(abrupt=False)
            return
        body = message.body
        if not body or self.received_fin:
            return
        if self._decryptor is not None:
            try:
                plaintext = self._decryptor.feed(body)
            except CryptoError as exc:
                log.warning("conn.decrypt_failed", conn_id=self.conn_id, reason=str(exc))
                self._finish(abrupt=True)
                return
            if plaintext is None or not plaintext:
                return
            body = plaintext
        self._sink.edge_data(body)

    def link_lost(self) -> None:
        self.resume()
        if self.state is not ConnState.CLOSED:
            self.state = ConnState.CLOSED
            self._sink.edge_closed(abrupt=True)

    def set_link_writable(self, writable: bool) -> None:
        if self.state is ConnState.CONNECTED:
            self._sink.set_link_writable(writable)


async def dial(link: RouterLink, conn_id: int, session_token: str, caller_id: str,
               sink: OverlaySink, *, encrypted: bool, app_data: bytes | None = None,
               terminator_identity: str | None = None,
               timeout: float = DIAL_TIMEOUT) -> EdgeConnection:
    """Connect to a service over `link` (openziti-protocol.md §3.5).

    `terminator_identity` (header 1006) asks the router for the terminator bound with that
    identity (a host's `listenOptions.identity`), as `dialOptions.identity` does in OpenZiti.

    Raises:
        InvalidSessionError: the router rejected the session token (get a new one, retry).
        DialError: refused for another reason; TimeoutError: no answer within `timeout`.
    """
    keys = crypto.KeyPair.generate() if encrypted else None
    conn = EdgeConnection(link, conn_id, sink)
    message = edge.connect(conn_id, session_token, caller_id,
                           public_key=None if keys is None else keys.public, app_data=app_data,
                           terminator_identity=terminator_identity)
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_reply(reply: Message | None) -> None:
        try:
            _connect_replied(conn, keys, reply)
        except (DialError, TimeoutError) as exc:
            conn.state = ConnState.CLOSED
            link.unregister(conn_id)
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(None)

    sequence = link.request(message, timeout, on_reply)
    try:
        await future
    except asyncio.CancelledError:
        link.cancel_request(sequence)
        conn.close()
        raise
    return conn


def _connect_replied(conn: EdgeConnection, keys: crypto.KeyPair | None,
                     reply: Message | None) -> None:
    if reply is None:
        raise TimeoutError("no answer to Connect from the edge router")
    if reply.content_type == edge.CONTENT_TYPE_STATE_CLOSED:
        reason = edge.body_text(reply)
        if is_invalid_session(reason):
            raise InvalidSessionError(reason or "Invalid Session")
        raise DialError(reason, refusal_reason(reason))
    if reply.content_type != edge.CONTENT_TYPE_STATE_CONNECTED:
        raise DialError(f"unexpected reply to Connect (content type {reply.content_type})")
    session_keys = None
    if keys is not None:
        try:
            session_keys = crypto.client_keys(keys, reply.headers.get(edge.PUBLIC_KEY_HEADER))
        except CryptoError as exc:
            conn.close()
            raise DialError(f"service is encrypted but the host sent no key: {exc}") from exc
    conn.established(session_keys)


def accept_request(listener_id: int, dial_message: Message, child_id: int) -> Message:
    """DialSuccess for `dial_message`: headers exactly ConnId, Seq, ReplyFor (§3.7.2)."""
    message = edge.dial_success(listener_id, child_id)
    message.headers[REPLY_FOR_HEADER] = (dial_message.sequence & 0xFFFFFFFF).to_bytes(4, "little")
    return message
