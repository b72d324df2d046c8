"""Channel v2 framing and the sans-IO connection, checked against the protocol doc's bytes."""

from __future__ import annotations

import pytest

from tunneler.channel import message as m
from tunneler.channel.connection import (
    ChannelConnection,
    MessageReceived,
    ProtocolViolation,
    ReplyReceived,
    ReplyTimedOut,
)
from tunneler.errors import FrameError

TOKEN = "6d7f2a9c-1b8e-4f3a-9c2d-0e5f6a7b8c9d"
HELLO_BYTES = bytes.fromhex(
    "0306090c000000000000000" "02c000000"
    "14000000ea030000240000003664376632613963"
    "2d316238652d346633612d396332642d306535663661376238633964"
    "7a6974692d73646b2d635b305d406d79686f7374"
)
HELLO_REPLY_BYTES = bytes.fromhex(
    "0306090c02000000ffffffff3f00000000000000"
    "010000000400000000000000"
    "020000000100000001"
    "0400000022000000" + b"v0.26.0|abc|2022-07-22|linux|amd64".hex()
)
PROBE = bytes.fromhex(
    "0306090c03000000040000001000000000000000" "80000000080000001" "5cd5b0700000000"
)
PROBE_REPLY = bytes.fromhex(
    "0306090c02000000090000002500000000000000"
    "010000000400000004000000" "020000000100000001" "8000000008000000" "15cd5b0700000000"
)


def hello() -> m.Message:
    return m.Message(m.CONTENT_TYPE_HELLO, {1002: TOKEN.encode()}, b"ziti-sdk-c[0]@myhost")


def test_hello_encodes_to_the_documented_bytes() -> None:
    assert m.encode(hello()) == HELLO_BYTES
    assert len(HELLO_BYTES) == 84


def test_hello_reply_decodes() -> None:
    (reply,) = m.FrameDecoder().feed(HELLO_REPLY_BYTES)
    assert reply.content_type == m.CONTENT_TYPE_RESULT
    assert reply.sequence == -1
    assert reply.reply_for == 0
    assert reply.get_bool(m.RESULT_SUCCESS_HEADER)
    assert reply.get_str(m.HELLO_VERSION_HEADER) == "v0.26.0|abc|2022-07-22|linux|amd64"
    assert m.encode(reply) == HELLO_REPLY_BYTES


def test_latency_probe_is_answered_with_reflected_header() -> None:
    conn = ChannelConnection()
    for _ in range(9):  # the documented reply carries sequence 9
        conn.send(m.Message(m.CONTENT_TYPE_PING))
    conn.data_to_send()
    assert conn.receive_data(PROBE) == []
    assert conn.data_to_send() == PROBE_REPLY


def test_decoder_byte_at_a_time_equals_one_chunk() -> None:
    stream = HELLO_BYTES + HELLO_REPLY_BYTES + PROBE
    decoder = m.FrameDecoder()
    one_by_one = [msg for i in range(len(stream)) for msg in decoder.feed(stream[i : i + 1])]
    assert one_by_one == m.FrameDecoder().feed(stream)
    assert len(one_by_one) == 3


def _read_into(decoder: m.FrameDecoder, data: bytes, step: int) -> list[m.Message]:
    """What a BufferedProtocol transport does: read up to `step` bytes into writable()."""
    messages, offset = [], 0
    while offset < len(data):
        area = decoder.writable(min(step, len(data) - offset))
        piece = data[offset:offset + min(step, area.nbytes)]
        area[:len(piece)] = piece
        messages += decoder.written(len(piece))
        offset += len(piece)
    return messages


@pytest.mark.parametrize("step", [997, 16 * 1024, 1 << 20])
def test_reading_into_the_area_decodes_what_feeding_decodes(step: int) -> None:
    big = m.encode(m.Message(m.CONTENT_TYPE_PING, {1: b"h"}, bytes(range(256)) * 6000))  # 1.5 MB
    stream = HELLO_BYTES + big + PROBE + big + HELLO_REPLY_BYTES
    decoder = m.FrameDecoder()
    assert _read_into(decoder, stream, step) == m.FrameDecoder().feed(stream)
    assert decoder.buffered == 0
    assert decoder.writable(1).nbytes == m.RECEIVE_AREA  # shrunk back after the 1.5 MB frames


def test_a_prefix_alone_does_not_allocate_its_frame() -> None:
    decoder = m.FrameDecoder()
    prefix = m.PREFIX.pack(m.MAGIC, 0, 0, 0, m.MAX_BODY_LEN)  # announces 16 MiB
    assert _read_into(decoder, prefix, len(prefix)) == []
    assert decoder.writable(1).nbytes < m.RECEIVE_AREA + 64  # the area, not 16 MiB


def test_a_view_kept_by_the_transport_survives_the_area_growing() -> None:
    decoder = m.FrameDecoder()
    big = m.encode(m.Message(m.CONTENT_TYPE_PING, {}, bytes(m.RECEIVE_AREA * 2)))
    old = decoder.writable(m.RECEIVE_AREA)
    old[:m.RECEIVE_AREA] = big[:m.RECEIVE_AREA]
    assert decoder.written(m.RECEIVE_AREA) == []
    assert _read_into(decoder, big[m.RECEIVE_AREA:], 64 * 1024)[0].body == bytes(2 * m.RECEIVE_AREA)
    old[:4] = b"late"  # no BufferError: the area was replaced, never resized under the view


def test_bytes_read_into_a_closed_channel_are_discarded() -> None:
    connection = ChannelConnection()
    area = connection.receive_buffer(4)
    area[:4] = b"\x04bad"
    (event,) = connection.received(4)
    assert isinstance(event, ProtocolViolation) and connection.closed
    area = connection.receive_buffer(len(HELLO_BYTES))
    area[:len(HELLO_BYTES)] = HELLO_BYTES
    assert connection.received(len(HELLO_BYTES)) == []


@pytest.mark.parametrize(
    ("name", "frame"),
    [
        ("bad magic", b"\x03\x06\x09\x0d" + bytes(16)),
        ("v1 magic first byte wrong", b"\x04"),
        ("oversized body", m.PREFIX.pack(m.MAGIC, 0, 0, 0, 2**32 - 1)),
        ("oversized headers", m.PREFIX.pack(m.MAGIC, 0, 0, 2**31 - 1, 0)),
        ("header past block", m.PREFIX.pack(m.MAGIC, 0, 0, 8, 0) + b"\x01\0\0\0\x05\0\0\0"),
        ("truncated header entry", m.PREFIX.pack(m.MAGIC, 0, 0, 3, 0) + b"\x01\x00\x00"),
    ],
)
def test_malformed_frames_raise_frame_error(name: str, frame: bytes) -> None:
    decoder = m.FrameDecoder()
    with pytest.raises(FrameError):
        decoder.feed(frame)
    with pytest.raises(FrameError):  # a failed decoder stays failed
        decoder.feed(HELLO_BYTES)


def test_oversized_frame_is_rejected_before_its_body_arrives() -> None:
    decoder = m.FrameDecoder(max_body_len=1024)
    with pytest.raises(FrameError, match="over cap"):
        decoder.feed(m.PREFIX.pack(m.MAGIC, 60786, 1, 0, 1025))
    assert decoder.buffered == 0


def test_too_many_headers_rejected() -> None:
    block = bytes.fromhex("0100000000000000") * (m.MAX_HEADER_COUNT + 1)
    with pytest.raises(FrameError, match="headers"):
        m.FrameDecoder().feed(m.PREFIX.pack(m.MAGIC, 0, 0, len(block), 0) + block)


def test_a_bad_header_in_a_frame_that_arrived_in_pieces_is_a_protocol_violation() -> None:
    # found by tests/support/fuzz.py: the failed decode left a view on the partial-frame
    # buffer in its traceback, and clearing that buffer raised BufferError instead
    block = bytes.fromhex("e8030000" "64000000") + b"short"   # header 1000 claims 100 bytes
    frame = m.PREFIX.pack(m.MAGIC, 0, 0, len(block), 0) + block
    connection = ChannelConnection()
    assert connection.receive_data(frame[:7]) == []
    (event,) = connection.receive_data(frame[7:])
    assert isinstance(event, ProtocolViolation) and "runs past" in event.reason
    assert connection.closed


def test_server_requires_hello_first_and_caps_it() -> None:
    server = ChannelConnection(expect_hello=True)
    events = server.receive_data(m.encode(m.Message(m.CONTENT_TYPE_PING)))
    assert isinstance(events[0], ProtocolViolation)
    assert server.closed
    big = ChannelConnection(expect_hello=True)
    (event,) = big.receive_data(m.PREFIX.pack(m.MAGIC, 0, 0, 0, 5000))
    assert isinstance(event, ProtocolViolation)


def test_request_reply_and_timeout() -> None:
    client, server = ChannelConnection(), ChannelConnection(expect_hello=True)
    seq = client.request(hello(), now=0.0, timeout=5.0)
    assert seq == 0
    (event,) = server.receive_data(client.data_to_send())
    assert isinstance(event, MessageReceived)
    server.send_result(event.message, True, version="v1|x|y|linux|amd64")
    (reply,) = client.receive_data(server.data_to_send())
    assert isinstance(reply, ReplyReceived)
    assert reply.request_sequence == 0
    assert reply.message.get_bool(m.RESULT_SUCCESS_HEADER)
    late = client.request(m.Message(m.CONTENT_TYPE_PING), now=1.0, timeout=2.0)
    assert client.get_timer() == 3.0
    assert client.handle_timer(2.9) == []
    assert client.handle_timer(3.0) == [ReplyTimedOut(late)]
    assert client.get_timer() is None


def test_unsolicited_reply_is_an_ordinary_message() -> None:
    conn = ChannelConnection()
    stray = m.Message(m.CONTENT_TYPE_RESULT).set_int32(m.REPLY_FOR_HEADER, 42)
    (event,) = conn.receive_data(m.encode(stray))
    assert isinstance(event, MessageReceived)


def test_int_headers_read_leniently() -> None:
    msg = m.Message(0, {1: b"\x05", 2: b"\x05\x00", 3: b"\xff\xff\xff\xff", 4: bytes(8)})
    assert (msg.get_int(1), msg.get_int(2), msg.get_int(3), msg.get_int(4)) == (5, 5, -1, 0)
    assert msg.get_int(99) is None
    assert not msg.get_bool(99)
