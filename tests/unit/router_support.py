"""Router test support: an in-memory `RouterAuthority`, and two kinds of test peer.

`SimPeer` drives the sans-IO `RouterCore` directly (bytes in, bytes out, no sockets);
`TlsPeer` is a raw SDK stand-in on a real TLS connection, built on `ChannelConnection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import uuid
from dataclasses import dataclass, field

from tunneler.channel.connection import ChannelConnection, MessageReceived, ReplyReceived
from tunneler.channel.message import CONTENT_TYPE_HELLO, Message
from tunneler.edge.messages import SESSION_TOKEN_HEADER
from tunneler.router.authority import ApiSessionInfo, SessionInfo
from tunneler.router.core import RouterCore
from tunneler.router.state import RouterChannel


@dataclass
class MemoryAuthority:
    """A `RouterAuthority` over dicts, with helpers to grant and revoke."""

    api_sessions: dict[str, ApiSessionInfo] = field(default_factory=dict)
    sessions: dict[str, SessionInfo] = field(default_factory=dict)
    permits: set[tuple[str, str, str]] = field(default_factory=set)

    def api_session_by_token(self, token: str) -> ApiSessionInfo | None:
        return self.api_sessions.get(token)

    def api_session_info(self, session_id: str) -> ApiSessionInfo | None:
        return next((api for api in self.api_sessions.values() if api.id == session_id), None)

    def session_by_token(self, token: str) -> SessionInfo | None:
        return self.sessions.get(token)

    def is_permitted(self, identity_id: str, service_id: str, kind: str) -> bool:
        return (identity_id, service_id, kind) in self.permits

    def add_identity(self, name: str, fingerprint: str) -> ApiSessionInfo:
        api = ApiSessionInfo(f"as-{name}", str(uuid.uuid4()), f"id-{name}", name,
                             frozenset({fingerprint}))
        self.api_sessions[api.token] = api
        return api

    def add_session(self, api: ApiSessionInfo, service: str, kind: str, *,
                    encrypted: bool = False, permit: bool = True) -> SessionInfo:
        session = SessionInfo(f"s-{uuid.uuid4()}", str(uuid.uuid4()), kind, f"svc-{service}",
                              service, api.identity_id, api.id, encrypted)
        self.sessions[session.token] = session
        if permit:
            self.permits.add((api.identity_id, session.service_id, kind))
        return session

    def revoke(self, api: ApiSessionInfo, service: str, kind: str) -> None:
        self.permits.discard((api.identity_id, f"svc-{service}", kind))


def hello(token: str | None) -> Message:
    """An SDK hello (content type 0, header 1002)."""
    message = Message(CONTENT_TYPE_HELLO, body=b"ziti-sdk-c[0]@test")
    if token is not None:
        message.set_str(SESSION_TOKEN_HEADER, token)
    return message


class Recorder:
    """A `ChannelSink` that keeps what the core wrote and did."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed: str | None = None
        self.paused = False
        self.nudges_acknowledged = 0

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self, *, abort: bool = False) -> None:
        self.closed = "abort" if abort else "graceful"

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def nudge_acknowledged(self) -> None:
        self.nudges_acknowledged += 1


class SimPeer:
    """An SDK talking to a `RouterCore` through memory."""

    def __init__(self, core: RouterCore, fingerprint: str, name: str = "peer") -> None:
        self.core = core
        self.sink = Recorder()
        self.conn = ChannelConnection()
        self.channel: RouterChannel = core.open_channel(self.sink, fingerprint, name)

    def push(self, raw: bytes, now: float = 0.0) -> None:
        self.core.receive(self.channel, raw, now)
        self.core.flush()

    def send(self, message: Message, now: float = 0.0) -> int:
        sequence = self.conn.send(message)
        self.push(self.conn.data_to_send(), now)
        return sequence

    def request(self, message: Message, now: float = 0.0) -> int:
        sequence = self.conn.request(message, now, 60.0)
        self.push(self.conn.data_to_send(), now)
        return sequence

    def reply(self, request: Message, message: Message, now: float = 0.0) -> None:
        self.conn.reply(request, message)
        self.push(self.conn.data_to_send(), now)

    def messages(self) -> list[Message]:
        """Everything the router sent since the last call."""
        events = self.conn.receive_data(bytes(self.sink.written))
        self.sink.written.clear()
        return [ev.message for ev in events if isinstance(ev, MessageReceived | ReplyReceived)]

    def one(self) -> Message:
        """Exactly one message from the router."""
        messages = self.messages()
        assert len(messages) == 1, messages
        return messages[0]


#: the StreamReader's limit: it stops reading the socket at twice this much buffered
READER_LIMIT = 1 << 22


class TlsPeer:
    """A raw SDK stand-in on a real TLS connection to the router."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = ChannelConnection()
        self._inbox: list[Message] = []

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext, *, rcvbuf: int = 0,
                   limit: int = READER_LIMIT) -> TlsPeer:
        """Connect; `rcvbuf` > 0 fixes the socket's receive buffer (no autotuning)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=context, server_hostname="localhost", limit=limit)
        return cls(reader, writer)

    @classmethod
    async def authenticated(cls, port: int, context: ssl.SSLContext, token: str, *,
                            rcvbuf: int = 0, limit: int = READER_LIMIT) -> TlsPeer:
        peer = await cls.open(port, context, rcvbuf=rcvbuf, limit=limit)
        reply = await peer.exchange(hello(token))
        assert reply.get_bool(2), reply.body
        return peer

    def send(self, message: Message) -> int:
        sequence = self.conn.send(message)
        self.writer.write(self.conn.data_to_send())
        return sequence

    def reply(self, request: Message, message: Message) -> None:
        self.conn.reply(request, message)
        self.writer.write(self.conn.data_to_send())

    def send_request(self, message: Message) -> int:
        """Send a request whose reply `next()` will deliver; returns its sequence."""
        sequence = self.conn.request(message, 0.0, 1e9)
        self.writer.write(self.conn.data_to_send())
        return sequence

    async def exchange(self, message: Message, timeout: float = 5.0) -> Message:
        """Send a request and return its reply (other messages stay queued)."""
        sequence = self.send_request(message)
        return await self.next(lambda m: m.reply_for == sequence, timeout)

    async def next(self, match: object = None, timeout: float = 5.0) -> Message:
        """The next message from the router (optionally the first satisfying `match`)."""
        async with asyncio.timeout(timeout):
            while True:
                for index, message in enumerate(self._inbox):
                    if match is None or match(message):  # type: ignore[operator]
                        return self._inbox.pop(index)
                data = await self.reader.read(1 << 20)
                if not data:
                    raise ConnectionError("router closed the channel")
                for event in self.conn.receive_data(data):
                    if isinstance(event, MessageReceived | ReplyReceived):
                        self._inbox.append(event.message)
                self.writer.write(self.conn.data_to_send())

    async def wait_closed_by_router(self, timeout: float = 5.0) -> None:
        """Wait until the router closes the connection (messages before that are dropped)."""
        async with asyncio.timeout(timeout):
            while await self.reader.read(1 << 20):
                pass

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()
