"""Edge messages against the protocol doc's worked bytes; end-to-end crypto round trips."""

from __future__ import annotations

import pytest

from tunneler.channel.connection import ChannelConnection
from tunneler.channel.message import REPLY_FOR_HEADER, FrameDecoder, Message, encode
from tunneler.edge import crypto
from tunneler.edge import messages as e
from tunneler.edge.appdata import decode_app_data, encode_app_data
from tunneler.errors import CryptoError

PK = bytes(range(32))


def hexbytes(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def sent(message: Message, sequence: int) -> bytes:
    message.sequence = sequence
    return encode(message)


def test_connect_matches_documented_bytes() -> None:
    msg = e.connect(0, "2b1c4c2e-8d4b-4a6f-9a61-3d2f1e0c9b8a", "client1")
    assert sent(msg, 1) == hexbytes("""
        03 06 09 0c 6f ed 00 00 01 00 00 00 27 00 00 00 24 00 00 00 e8 03 00 00 04 00 00 00
        00 00 00 00 e9 03 00 00 04 00 00 00 00 00 00 00 f0 03 00 00 07 00 00 00 63 6c 69 65
        6e 74 31""") + b"2b1c4c2e-8d4b-4a6f-9a61-3d2f1e0c9b8a"


def test_fin_and_data_match_documented_bytes() -> None:
    assert sent(e.fin(0, 2), 3) == hexbytes("""
        03 06 09 0c 72 ed 00 00 03 00 00 00 24 00 00 00 00 00 00 00
        e8 03 00 00 04 00 00 00 00 00 00 00 e9 03 00 00 04 00 00 00 02 00 00 00
        f2 03 00 00 04 00 00 00 01 00 00 00""")
    assert sent(e.data(0, 1, b"hello"), 2) == hexbytes("""
        03 06 09 0c 72 ed 00 00 02 00 00 00 18 00 00 00 05 00 00 00 e8 03 00 00 04 00 00 00
        00 00 00 00 e9 03 00 00 04 00 00 00 01 00 00 00 68 65 6c 6c 6f""")


def test_bind_matches_documented_bytes() -> None:
    msg = e.bind(1, "5e1f0a2b-bind", "host1", public_key=PK)
    expected = hexbytes("""
        03 06 09 0c 76 ed 00 00 01 00 00 00 4d 00 00 00 0d 00 00 00 e8 03 00 00 04 00 00 00
        01 00 00 00 e9 03 00 00 04 00 00 00 00 00 00 00 f0 03 00 00 05 00 00 00 68 6f 73 74
        31 eb 03 00 00 20 00 00 00""") + PK + b"5e1f0a2b-bind"
    assert sent(msg, 1) == expected
    assert len(expected) == 110


def test_dial_success_as_reply_matches_documented_bytes() -> None:
    conn = ChannelConnection()
    conn.send(Message(1))
    conn.send(Message(1))
    conn.data_to_send()
    dial = e.dial(1, "tok", "client1")
    dial.sequence = 5
    conn.reply(dial, e.dial_success(1, 2))
    assert conn.data_to_send() == hexbytes("""
        03 06 09 0c 74 ed 00 00 02 00 00 00 24 00 00 00 04 00 00 00
        01 00 00 00 04 00 00 00 05 00 00 00 e8 03 00 00 04 00 00 00 01 00 00 00
        e9 03 00 00 04 00 00 00 00 00 00 00 02 00 00 00""")


def test_accessors() -> None:
    (dial,) = FrameDecoder().feed(sent(e.dial(7, "tok", "c", public_key=PK, app_data=b"{}"), 5))
    assert e.conn_id_of(dial) == 7
    assert dial.headers[e.PUBLIC_KEY_HEADER] == PK
    assert e.body_text(dial) == "tok"
    assert e.new_conn_id_of(e.dial_success(1, 0xFFFFFFFE)) == 0xFFFFFFFE
    assert e.new_conn_id_of(e.dial_failed(1, "")) is None
    assert e.is_fin(e.fin(1, 1)) and not e.is_fin(e.data(1, 1, b"x"))
    closed = e.state_closed(3, "no terminators", error_code=e.ERROR_INVALID_TERMINATOR)
    assert closed.get_int(e.ERROR_CODE_HEADER) == 8
    assert REPLY_FOR_HEADER not in closed.headers


def test_crypto_round_trip_both_directions() -> None:
    dialer, host = crypto.KeyPair.generate(), crypto.KeyPair.generate()
    ck = crypto.client_keys(dialer, host.public)
    sk = crypto.server_keys(host, dialer.public)
    assert ck.tx == sk.rx and ck.rx == sk.tx
    enc, dec = crypto.Encryptor(ck.tx), crypto.Decryptor(sk.rx)
    assert len(enc.header) == crypto.HEADER_BYTES
    assert dec.feed(enc.header) is None and dec.ready
    chunk = enc.encrypt(b"hello")
    assert len(chunk) == 5 + crypto.OVERHEAD
    assert dec.feed(chunk) == b"hello"
    assert dec.feed(enc.encrypt(b"")) == b""


def test_crypto_failures_are_typed() -> None:
    kp = crypto.KeyPair.generate()
    with pytest.raises(CryptoError):
        crypto.client_keys(kp, None)
    with pytest.raises(CryptoError):
        crypto.server_keys(kp, b"short")
    keys = crypto.client_keys(kp, crypto.KeyPair.generate().public)
    with pytest.raises(CryptoError, match="header"):
        crypto.Decryptor(keys.rx).feed(b"x" * 10)
    dec = crypto.Decryptor(keys.rx)
    dec.feed(crypto.Encryptor(keys.rx).header)
    with pytest.raises(CryptoError, match="decryption"):
        dec.feed(b"\x00" * 40)


def test_app_data_round_trip_and_lenient_decode() -> None:
    raw = encode_app_data({"dst_hostname": "llm.private.test", "dst_port": 8000, "x": None})
    assert decode_app_data(raw) == {"dst_hostname": "llm.private.test", "dst_port": "8000"}
    assert decode_app_data(b'{"connType":null,"dst_ip":"1.2.3.4"}') == {"dst_ip": "1.2.3.4"}
    for bad in (None, b"", b"not json", b"[1,2]", b"\xff", b"{" * 10000):
        assert decode_app_data(bad) == {}
