"""The router's raw frame splitter and the Data fast path's ConnId lookup."""

from __future__ import annotations

import pytest

from tunneler.channel.message import MAGIC, PREFIX, Message, encode
from tunneler.edge import messages as e
from tunneler.errors import FrameError
from tunneler.router.frames import FrameSplitter, body_length, data_conn_id_offset


def frame(message: Message, sequence: int = 3) -> bytes:
    message.sequence = sequence
    return encode(message)


def test_splitter_yields_whole_frames_across_arbitrary_chunks() -> None:
    frames = [frame(e.data(1, i, bytes([i]) * (i * 100))) for i in range(1, 6)]
    stream = b"".join(frames)
    splitter = FrameSplitter(1024, 4096)
    got: list[bytes] = []
    for index in range(0, len(stream), 37):
        splitter.feed(stream[index : index + 37])
        while (item := splitter.next_frame()) is not None:
            assert item[0] == e.CONTENT_TYPE_DATA
            got.append(item[1])
    assert got == frames and splitter.buffered == 0


@pytest.mark.parametrize("step", [37, 4096, 1 << 20])
def test_splitter_splits_what_the_transport_read_into_it(step: int) -> None:
    frames = [frame(e.data(1, i, bytes([i]) * (i * 100_000))) for i in range(1, 6)]  # to 500 KB
    stream = b"".join(frames)
    splitter = FrameSplitter(1024, 1 << 20)
    got: list[bytes] = []
    offset = 0
    while offset < len(stream):
        area = splitter.writable(min(step, len(stream) - offset))
        piece = stream[offset:offset + min(step, area.nbytes)]
        area[:len(piece)] = piece
        splitter.written(len(piece))
        offset += len(piece)
        while (item := splitter.next_frame()) is not None:
            got.append(item[1])
    assert got == frames and splitter.buffered == 0


@pytest.mark.parametrize("raw", [
    PREFIX.pack(MAGIC, 1, 0, 2000, 0),       # headers over cap
    PREFIX.pack(MAGIC, 1, 0, 0, 5000),       # body over cap
    b"\x03\x06\x09\x0a",                      # wrong magic, detected before 20 bytes
    b"x" * 20,
])
def test_splitter_rejects_before_buffering(raw: bytes) -> None:
    splitter = FrameSplitter(1024, 4096)
    splitter.feed(raw)
    with pytest.raises(FrameError):
        splitter.next_frame()


def test_conn_id_offset_for_plain_data_and_fin() -> None:
    raw = frame(e.data(0x01020304, 9, b"body"))
    offset = data_conn_id_offset(raw)
    assert raw[offset : offset + 4] == (0x01020304).to_bytes(4, "little")
    assert body_length(raw) == 4
    fin = frame(e.fin(5, 1))
    assert fin[data_conn_id_offset(fin):][:4] == (5).to_bytes(4, "little")


@pytest.mark.parametrize("message", [
    e.data(1, 1, b"x").set_int32(1, 7),                    # channel header present
    Message(e.CONTENT_TYPE_DATA, {e.SEQ_HEADER: b"\0\0\0\0"}),  # no ConnId
    Message(e.CONTENT_TYPE_DATA, {e.CONN_ID_HEADER: b"\1\0"}),  # short ConnId
])
def test_conn_id_offset_declines(message: Message) -> None:
    assert data_conn_id_offset(frame(message)) == -1


def test_conn_id_offset_declines_overrunning_header() -> None:
    raw = bytearray(frame(e.data(1, 1, b"xyz")))
    raw[24:28] = (999).to_bytes(4, "little")  # first header's length runs past the block
    assert data_conn_id_offset(bytes(raw)) == -1
