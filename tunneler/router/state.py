"""The router's in-memory records: channels, circuits, routes, terminators and counters.

A `RouterChannel` is one authenticated (or authenticating) TLS channel: its sans-IO
`ChannelConnection`, the routes of the circuits that cross it keyed by the peer's connection
id, the listeners (terminators) it registered, the Dials it is answering, and the ordered
output queue the adapter writes once per receive. `sink` is the I/O side (the asyncio protocol,
or a recorder in unit tests).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from tunneler.channel.connection import (
    HELLO_MAX_BODY_LEN,
    HELLO_MAX_HEADERS_LEN,
    ChannelConnection,
)
from tunneler.channel.message import Message
from tunneler.router.authority import ApiSessionInfo, SessionInfo
from tunneler.router.frames import FrameSplitter

ROUTER_ASSIGNED_IDS = 0x7FFFFFFF + 1
NUDGE_CONN_ID = 0xFFFFFFFF  # never assigned: a read nudge inspects no real connection


class ChannelSink(Protocol):
    """What the core needs from the transport under a channel."""

    def write(self, data: bytes) -> None:
        """Queue bytes on the transport."""

    def close(self, *, abort: bool = False) -> None:
        """Close after flushing (or at once with `abort`)."""

    def pause_reading(self) -> None:
        """Stop delivering received bytes."""

    def resume_reading(self) -> None:
        """Deliver received bytes again."""

    def nudge_acknowledged(self) -> None:
        """The SDK answered the latest read nudge: it has read everything sent before it."""


@dataclass
class RouterStats:
    """Counters exposed for metrics."""

    channels_active: int = 0
    circuits_active: int = 0
    circuits_created: int = 0
    terminators_active: int = 0
    bytes_relayed: int = 0
    frames_relayed: int = 0
    handshake_failures: int = 0
    pending_evicted: int = 0     # pending connections closed to make room for newer ones
    protocol_violations: int = 0
    hello_failures: Counter[str] = field(default_factory=Counter)
    dial_failures: Counter[str] = field(default_factory=Counter)


class RouterChannel:
    """One channel to an SDK (dialer, host, or both)."""

    def __init__(self, channel_id: int, sink: ChannelSink, fingerprint: str, peer: str,
                 *, max_body_len: int) -> None:
        self.id = channel_id
        self.sink = sink
        self.fingerprint = fingerprint
        self.peer = peer
        self.conn = ChannelConnection(expect_hello=True, max_body_len=max_body_len)
        self.splitter = FrameSplitter(HELLO_MAX_HEADERS_LEN, HELLO_MAX_BODY_LEN)
        self.api_session: ApiSessionInfo | None = None
        self.token_expires_at: float | None = None  # OIDC access token's exp (None: legacy)
        self.routes: dict[int, Route] = {}
        self.listeners: dict[int, Terminator] = {}
        self.pending_dials: dict[int, Circuit] = {}
        self.out: list[bytes | bytearray | memoryview] = []
        self.closing: str | None = None  # None | "graceful" | "abort" | "lost"
        self.congested = False
        self.blocking: set[RouterChannel] = set()  # sources paused because we are congested
        self.blocked_by: set[RouterChannel] = set()  # congested destinations pausing us
        self.supports_inspect = False  # hello header 1023 (libziti 1.x): read nudges are safe
        self.nudge_sequence: int | None = None  # the latest nudge (ConnInspectRequest) sent
        self._next_assigned_id = ROUTER_ASSIGNED_IDS

    def assign_conn_id(self) -> int:
        """A connection id for a host-side connection, from the router's half of the id space
        (as OpenZiti's router: above 2**31 - 1, so never one the SDK picks for itself)."""
        while True:
            conn_id = self._next_assigned_id
            self._next_assigned_id = conn_id + 1 if conn_id < 0xFFFFFFFE else ROUTER_ASSIGNED_IDS
            if conn_id not in self.routes and conn_id not in self.listeners:
                return conn_id

    def enqueue_raw(self, *parts: bytes | bytearray | memoryview) -> None:
        """Queue raw frame bytes after whatever the connection already queued."""
        if self.conn.pending_output:
            self.out.append(self.conn.data_to_send())
        self.out.extend(parts)

    def take_output(self) -> bytes:
        """Everything queued, in order, as one buffer."""
        if self.conn.pending_output:
            self.out.append(self.conn.data_to_send())
        if not self.out:
            return b""
        data = b"".join(self.out)
        self.out.clear()
        return data

    @property
    def identity_name(self) -> str:
        """The authenticated identity's name ("" before the hello)."""
        return self.api_session.identity_name if self.api_session else ""


@dataclass(eq=False)
class Terminator:
    """A host's listener for a service (from its Bind)."""

    id: str
    session: SessionInfo
    channel: RouterChannel
    listener_id: int
    public_key: bytes | None
    cost: int
    precedence: int
    identity: str
    assign_ids: bool = False  # Bind asked for router-provided connection ids (libziti 1.x)


@dataclass(eq=False)
class Circuit:
    """A dialer connection paired with a host connection through one terminator."""

    id: int
    session: SessionInfo
    dialer: RouterChannel
    dialer_conn_id: int
    terminator: Terminator
    connect: Message
    dialer_key: bytes | None
    host_conn_id: int | None = None
    assigned_conn_id: int | None = None  # the host's connection id, when the router assigns it
    dial_sequence: int | None = None
    early: list[Message] = field(default_factory=list)
    early_bytes: int = 0

    @property
    def host(self) -> RouterChannel:
        """The hosting side's channel."""
        return self.terminator.channel

    @property
    def connected(self) -> bool:
        """True once both sides were told StateConnected."""
        return self.host_conn_id is not None


@dataclass(eq=False, slots=True)
class Route:
    """Where Data for one connection id on one channel goes."""

    circuit: Circuit
    side: str  # "dialer" | "host": which end of the circuit this channel is
    peer: RouterChannel | None = None  # None while the circuit is dialing
    peer_conn_id: bytes = b""  # 4 bytes LE, the id on the peer channel
