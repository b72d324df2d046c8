"""Edge messages (openziti sdk-golang `ziti/edge/messages.go`): constants, builders, accessors.

Builders return `channel.message.Message` objects ready for `ChannelConnection.send()`; the
channel sequence is assigned on send. Header layouts follow openziti-protocol.md §3 exactly,
including the order libziti 0.29.3 writes (ConnId, Seq, CallerId, PublicKey, ...).
"""

from __future__ import annotations

import struct

from tunneler.channel.message import Message

CONTENT_TYPE_CONNECT = 60783
CONTENT_TYPE_STATE_CONNECTED = 60784
CONTENT_TYPE_STATE_CLOSED = 60785
CONTENT_TYPE_DATA = 60786
CONTENT_TYPE_DIAL = 60787
CONTENT_TYPE_DIAL_SUCCESS = 60788
CONTENT_TYPE_DIAL_FAILED = 60789
CONTENT_TYPE_BIND = 60790
CONTENT_TYPE_UNBIND = 60791
CONTENT_TYPE_STATE_SESSION_ENDED = 60792
CONTENT_TYPE_UPDATE_BIND = 60794
CONTENT_TYPE_CONN_INSPECT_REQUEST = 60798
CONTENT_TYPE_CONN_INSPECT_RESPONSE = 60799
CONTENT_TYPE_UPDATE_TOKEN_SUCCESS = 60801
CONTENT_TYPE_UPDATE_TOKEN_FAILURE = 60802
CONTENT_TYPE_UPDATE_TOKEN = 60803

CONN_ID_HEADER = 1000
SEQ_HEADER = 1001
SESSION_TOKEN_HEADER = 1002
PUBLIC_KEY_HEADER = 1003
COST_HEADER = 1004
PRECEDENCE_HEADER = 1005
TERMINATOR_IDENTITY_HEADER = 1006
CALLER_ID_HEADER = 1008
CRYPTO_METHOD_HEADER = 1009
FLAGS_HEADER = 1010
APP_DATA_HEADER = 1011
ROUTER_PROVIDED_CONN_ID_HEADER = 1012
ERROR_CODE_HEADER = 1014
SUPPORTS_INSPECT_HEADER = 1023
ROUTER_CAPABILITIES_HEADER = 1039

FIN_FLAG = 1

PRECEDENCE_DEFAULT = 0
PRECEDENCE_REQUIRED = 1
PRECEDENCE_FAILED = 2

ERROR_INTERNAL = 1
ERROR_INVALID_API_SESSION = 2
ERROR_INVALID_SESSION = 3
ERROR_WRONG_SESSION_TYPE = 4
ERROR_INVALID_SERVICE = 6
ERROR_INVALID_TERMINATOR = 8

# The reply text libziti retries on (a fresh session, up to 3 times); see protocol doc §3.5.3.
INVALID_SESSION = "Invalid Session"

_U32 = struct.Struct("<I")


def _edge(content_type: int, conn_id: int, seq: int = 0, body: bytes = b"") -> Message:
    message = Message(content_type, body=body)
    message.set_int32(CONN_ID_HEADER, conn_id)
    message.set_int32(SEQ_HEADER, seq)
    return message


def _with_optional(message: Message, caller_id: str | None, public_key: bytes | None,
                   terminator_identity: str | None = None,
                   app_data: bytes | None = None) -> Message:
    if caller_id is not None:
        message.set_str(CALLER_ID_HEADER, caller_id)
    if public_key is not None:
        message.headers[PUBLIC_KEY_HEADER] = public_key
    if terminator_identity:
        message.set_str(TERMINATOR_IDENTITY_HEADER, terminator_identity)
    if app_data is not None:
        message.headers[APP_DATA_HEADER] = app_data
    return message


def connect(conn_id: int, session_token: str, caller_id: str, *, public_key: bytes | None = None,
            terminator_identity: str | None = None, app_data: bytes | None = None) -> Message:
    """Dialer → router: open a circuit to a service (body = Dial session token)."""
    message = _edge(CONTENT_TYPE_CONNECT, conn_id, body=session_token.encode())
    return _with_optional(message, caller_id, public_key, terminator_identity, app_data)


def bind(conn_id: int, session_token: str, caller_id: str, *, public_key: bytes | None = None,
         terminator_identity: str | None = None, cost: int = 0,
         precedence: int = PRECEDENCE_DEFAULT) -> Message:
    """Host → router: register a terminator for a service (body = Bind session token)."""
    message = _edge(CONTENT_TYPE_BIND, conn_id, body=session_token.encode())
    _with_optional(message, caller_id, public_key, terminator_identity)
    if cost:
        message.headers[COST_HEADER] = struct.pack("<H", cost & 0xFFFF)
    if precedence:
        message.headers[PRECEDENCE_HEADER] = bytes([precedence & 0xFF])
    return message


def unbind(conn_id: int, session_token: str) -> Message:
    """Host → router: remove the terminator registered by `bind`."""
    return _edge(CONTENT_TYPE_UNBIND, conn_id, body=session_token.encode())


def dial(listener_id: int, session_token: str, caller_id: str, *,
         public_key: bytes | None = None, app_data: bytes | None = None,
         router_conn_id: int | None = None) -> Message:
    """Router → host: a dialer wants a connection through this listener.

    `router_conn_id` (header 1012) is the id the router assigned to the host's new connection,
    for hosts whose Bind asked for router-provided ids (libziti 1.x).
    """
    message = _edge(CONTENT_TYPE_DIAL, listener_id, body=session_token.encode())
    if router_conn_id is not None:
        message.set_int32(ROUTER_PROVIDED_CONN_ID_HEADER, router_conn_id)
    return _with_optional(message, caller_id, public_key, None, app_data)


def conn_inspect_request(conn_id: int) -> Message:
    """Router → SDK: ask about one connection (the SDK answers with ConnInspectResponse)."""
    return _edge(CONTENT_TYPE_CONN_INSPECT_REQUEST, conn_id)


def dial_success(listener_id: int, new_conn_id: int) -> Message:
    """Host → router: accepted; body = the new connection's id (u32 LE). Send as a reply."""
    return _edge(CONTENT_TYPE_DIAL_SUCCESS, listener_id, body=_U32.pack(new_conn_id))


def dial_failed(listener_id: int, reason: str) -> Message:
    """Host → router: refused, with a reason. Send as a reply to the Dial."""
    return _edge(CONTENT_TYPE_DIAL_FAILED, listener_id, body=reason.encode())


def state_connected(conn_id: int, *, public_key: bytes | None = None) -> Message:
    """Router → SDK: Connect/Bind/DialSuccess accepted. Send as a reply."""
    message = _edge(CONTENT_TYPE_STATE_CONNECTED, conn_id)
    if public_key is not None:
        message.headers[PUBLIC_KEY_HEADER] = public_key
    return message


def state_closed(conn_id: int, reason: str = "", *, seq: int = 0,
                 error_code: int | None = None) -> Message:
    """Either way: a connection is closed (or a request failed, when sent as a reply)."""
    message = _edge(CONTENT_TYPE_STATE_CLOSED, conn_id, seq, reason.encode())
    if error_code is not None:
        message.set_int32(ERROR_CODE_HEADER, error_code)
    return message


def data(conn_id: int, seq: int, payload: bytes) -> Message:
    """Either way: payload bytes (plaintext or one secretstream chunk)."""
    return _edge(CONTENT_TYPE_DATA, conn_id, seq, payload)


def fin(conn_id: int, seq: int) -> Message:
    """Either way: half-close; an empty Data with Flags = FIN, never encrypted."""
    message = _edge(CONTENT_TYPE_DATA, conn_id, seq)
    message.set_int32(FLAGS_HEADER, FIN_FLAG)
    return message


def conn_id_of(message: Message) -> int | None:
    """The ConnId header as an unsigned 32-bit integer."""
    value = message.headers.get(CONN_ID_HEADER)
    return None if value is None else int.from_bytes(value[:4], "little")


def is_fin(message: Message) -> bool:
    """True for a Data message carrying the FIN flag."""
    flags = message.get_int(FLAGS_HEADER)
    return flags is not None and bool(flags & FIN_FLAG)


def new_conn_id_of(dial_success_message: Message) -> int | None:
    """The child connection id carried in a DialSuccess body."""
    body = dial_success_message.body
    return _U32.unpack_from(body)[0] if len(body) >= 4 else None


def body_text(message: Message) -> str:
    """A message body as text (reasons, tokens)."""
    return message.body.decode("utf-8", "replace")
