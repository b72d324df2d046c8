"""A bound service on a router link: Bind, incoming Dials, child connections, Unbind.

Legacy (libziti 0.29.3) mode, openziti-protocol.md §3.7: for each Dial the host first asks
`on_dial` to reach the local target (it returns a connected `OverlaySink` or raises `DialError`),
then answers DialSuccess (body = new child ConnId, as a reply to the Dial) and waits for the
router's StateConnected (a reply to the DialSuccess) before the child sends its crypto header.
On failure it answers DialFailed with the reason. Encrypted services use one key pair per
Bind; each child derives its keys from it and the dialer's key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tunneler.channel.message import Message
from tunneler.client.conn import (
    ACCEPT_TIMEOUT,
    ConnState,
    EdgeConnection,
    accept_request,
    is_invalid_session,
)
from tunneler.client.link import LinkHandler, RouterLink
from tunneler.edge import crypto
from tunneler.edge import messages as edge
from tunneler.edge.appdata import decode_app_data
from tunneler.errors import CryptoError, DialError, InvalidSessionError
from tunneler.log import get_logger
from tunneler.overlay import OverlaySink

log = get_logger("listener")

BIND_TIMEOUT = 10.0
MAX_PENDING_DIALS = 256


@dataclass(frozen=True)
class IncomingDial:
    """What the router told us about a dialer."""

    caller_id: str
    app_data: dict[str, str]


DialHandler = Callable[[IncomingDial], Awaitable[OverlaySink]]


@dataclass(frozen=True)
class BindOptions:
    """Terminator options sent in the Bind."""

    cost: int = 0
    precedence: int = edge.PRECEDENCE_DEFAULT
    terminator_identity: str | None = None


class EdgeListener(LinkHandler):
    """One Bind of one service on one link."""

    def __init__(self, link: RouterLink, conn_id: int, session_token: str, caller_id: str,
                 on_dial: DialHandler, new_conn_id: Callable[[], int], *, encrypted: bool,
                 options: BindOptions | None = None) -> None:
        self.link = link
        self.conn_id = conn_id
        self._token = session_token
        self._caller_id = caller_id
        self._on_dial = on_dial
        self._new_conn_id = new_conn_id
        self._keys = crypto.KeyPair.generate() if encrypted else None
        self._options = options or BindOptions()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()

    async def bind(self, timeout: float = BIND_TIMEOUT) -> None:
        """Send the Bind and wait for StateConnected.

        Raises:
            InvalidSessionError, DialError, TimeoutError.
        """
        message = edge.bind(self.conn_id, self._token, self._caller_id,
                            public_key=None if self._keys is None else self._keys.public,
                            terminator_identity=self._options.terminator_identity,
                            cost=self._options.cost, precedence=self._options.precedence)
        self.link.register(self.conn_id, self)
        try:
            reply = await self.link.request_async(message, timeout)
        except BaseException:
            self.link.unregister(self.conn_id)
            raise
        if reply.content_type != edge.CONTENT_TYPE_STATE_CONNECTED:
            self.link.unregister(self.conn_id)
            reason = edge.body_text(reply)
            raise (InvalidSessionError if is_invalid_session(reason) else DialError)(
                reason or "Invalid Session")

    @property
    def closed(self) -> bool:
        """True once the router or the link ended this bind."""
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        """Until the router drops the bind or the link goes away."""
        await self._closed.wait()

    def unbind(self) -> None:
        """Remove the terminator (Unbind) and stop accepting."""
        if not self._closed.is_set():
            self._closed.set()
            self.link.unregister(self.conn_id)
            if not self.link.closed:
                self.link.send(edge.unbind(self.conn_id, self._token))
        for task in list(self._tasks):
            task.cancel()

    # -- LinkHandler -----------------------------------------------------------------------
    def handle_message(self, message: Message) -> None:
        if message.content_type == edge.CONTENT_TYPE_DIAL:
            self._dial_received(message)
        elif message.content_type == edge.CONTENT_TYPE_STATE_CLOSED:
            log.info("listener.unbound_by_router", conn_id=self.conn_id,
                     reason=edge.body_text(message))
            self.link.unregister(self.conn_id)
            self._closed.set()

    def link_lost(self) -> None:
        self._closed.set()

    def set_link_writable(self, writable: bool) -> None:
        """Listeners read nothing locally."""

    # -- incoming dials --------------------------------------------------------------------
    def _dial_received(self, message: Message) -> None:
        if len(self._tasks) >= MAX_PENDING_DIALS:
            self.link.reply(message, edge.dial_failed(self.conn_id, "too many pending dials"))
            return
        task = asyncio.get_running_loop().create_task(self._accept(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, message: Message) -> None:
        try:
            keys = None
            if self._keys is not None:
                keys = crypto.server_keys(self._keys, message.headers.get(edge.PUBLIC_KEY_HEADER))
            incoming = IncomingDial(message.get_str(edge.CALLER_ID_HEADER) or "",
                                    decode_app_data(message.headers.get(edge.APP_DATA_HEADER)))
            sink = await self._on_dial(incoming)
        except (DialError, CryptoError) as exc:
            log.info("listener.dial_refused", conn_id=self.conn_id, reason=str(exc))
            self._refuse(message, str(exc))
            return
        except Exception:  # dial boundary: a bug must not leave the dialer waiting
            log.exception("listener.dial_handler_crashed", conn_id=self.conn_id)
            self._refuse(message, "internal error in the hosting tunneler")
            return
        child = EdgeConnection(self.link, self._new_conn_id(), sink, state=ConnState.ACCEPTING)

        def on_connected(reply: Message | None) -> None:
            if reply is not None and reply.content_type == edge.CONTENT_TYPE_STATE_CONNECTED:
                child.established(keys)
            elif child.state is not ConnState.CLOSED:
                child.close()
                sink.edge_closed(abrupt=True)

        self.link.request(accept_request(self.conn_id, message, child.conn_id), ACCEPT_TIMEOUT,
                          on_connected)

    def _refuse(self, message: Message, reason: str) -> None:
        if not self.link.closed:
            self.link.reply(message, edge.dial_failed(self.conn_id, reason))
