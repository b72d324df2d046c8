"""`tunneler.edge.secretstream` against libsodium (PyNaCl): byte-exact chunks, both directions.

libsodium's init_pull and init_push build the same state from a header, so a PyNaCl state
made by init_pull(our header) pushes the exact bytes our PushStream must produce.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl import bindings as sodium

from tunneler.edge import crypto, secretstream
from tunneler.edge.secretstream import (
    TAG_FINAL,
    TAG_MESSAGE,
    TAG_PUSH,
    TAG_REKEY,
    PullStream,
    PushStream,
    hchacha20,
)
from tunneler.errors import CryptoError

SIZES = (0, 1, 15, 16, 17, 63, 64, 65, 1000, 65536)
TAGS = (TAG_MESSAGE, TAG_PUSH, TAG_REKEY, TAG_FINAL)
MESSAGES_PER_STREAM = 1200
State = sodium.crypto_secretstream_xchacha20poly1305_state


def _nacl_pull_state(key: bytes, header: bytes) -> State:
    state = State()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, header, key)
    return state


def _nacl_push(state: State, message: bytes, ad: bytes, tag: int) -> bytes:
    return bytes(sodium.crypto_secretstream_xchacha20poly1305_push(state, message, ad or None, tag))


def _nacl_pull(state: State, chunk: bytes, ad: bytes) -> tuple[bytes, int]:
    message, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(state, chunk, ad or None)
    return bytes(message), tag


def _workload(seed: int, with_ad: bool, with_tags: bool) -> Iterator[tuple[bytes, bytes, int]]:
    """(message, ad, tag) triples: every listed size, then random sizes, many per stream."""
    rng = random.Random(seed)
    for i in range(MESSAGES_PER_STREAM):
        size = SIZES[i] if i < len(SIZES) else rng.choice((*SIZES, rng.randrange(4096)))
        ad = rng.randbytes(rng.choice((1, 7, 16, 33))) if with_ad and i % 3 else b""
        tag = rng.choice(TAGS) if with_tags and i % 5 == 4 else TAG_MESSAGE
        yield rng.randbytes(size), ad, tag


def test_hchacha20_matches_the_xchacha_draft_vector() -> None:
    # draft-irtf-cfrg-xchacha-03 §2.2.1
    key = bytes(range(32))
    data = bytes.fromhex("000000090000004a0000000031415927")
    assert hchacha20(key, data) == bytes.fromhex(
        "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc")


def test_hchacha20_subkey_reproduces_libsodium_xchacha20poly1305() -> None:
    for _ in range(20):
        key, nonce, message = os.urandom(32), os.urandom(24), os.urandom(100)
        expected = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(message, b"ad", nonce, key)
        ietf = ChaCha20Poly1305(hchacha20(key, nonce[:16]))
        assert ietf.encrypt(bytes(4) + nonce[16:], message, b"ad") == expected


@pytest.mark.parametrize(("with_ad", "with_tags"), [(False, False), (True, False), (True, True)])
def test_push_is_byte_exact_with_libsodium(with_ad: bool, with_tags: bool) -> None:
    key = os.urandom(32)
    ours = PushStream(key)
    reference = _nacl_pull_state(key, ours.header)  # same state as libsodium's init_push
    reader = _nacl_pull_state(key, ours.header)
    for message, ad, tag in _workload(1, with_ad, with_tags):
        chunk = ours.push(message, ad, tag)
        assert chunk == _nacl_push(reference, message, ad, tag)
        assert len(chunk) == len(message) + secretstream.ABYTES
        assert _nacl_pull(reader, chunk, ad) == (message, tag)


@pytest.mark.parametrize(("with_ad", "with_tags"), [(False, False), (True, False), (True, True)])
def test_pull_reads_libsodium_push(with_ad: bool, with_tags: bool) -> None:
    key = os.urandom(32)
    writer = State()
    ours = PullStream(key, sodium.crypto_secretstream_xchacha20poly1305_init_push(writer, key))
    for message, ad, tag in _workload(2, with_ad, with_tags):
        assert ours.pull(_nacl_push(writer, message, ad, tag), ad) == (message, tag)


@pytest.mark.parametrize("counter", [0xFFFFFFFE, 0xFFFFFFFF])
def test_counter_wrap_rekeys_like_libsodium(counter: int) -> None:
    # libsodium's public state layout: k[32], nonce[12] = counter (le32) ‖ inonce[8], _pad[8].
    key = os.urandom(32)
    ours = PushStream(key)
    reference = _nacl_pull_state(key, ours.header)
    reference.statebuf[32:36] = counter.to_bytes(4, "little")
    ours._counter = counter  # white-box: reaching 2**32 chunks for real is out of reach
    reader = PullStream(key, ours.header)
    reader._counter = counter
    for size in (10, 0, 70, 5):
        message = os.urandom(size)
        chunk = ours.push(message)
        assert chunk == _nacl_push(reference, message, b"", TAG_MESSAGE)
        assert reader.pull(chunk) == (message, TAG_MESSAGE)


def test_explicit_rekey_matches_libsodium() -> None:
    key = os.urandom(32)
    ours = PushStream(key)
    reference = _nacl_pull_state(key, ours.header)
    ours.push(b"one")
    _nacl_push(reference, b"one", b"", TAG_MESSAGE)
    ours.rekey()
    sodium.crypto_secretstream_xchacha20poly1305_rekey(reference)
    assert ours.push(b"two") == _nacl_push(reference, b"two", b"", TAG_MESSAGE)


def _stream_pair(ad: bytes = b"") -> tuple[PullStream, bytes, bytes]:
    key = os.urandom(32)
    writer = PushStream(key)
    return PullStream(key, writer.header), writer.push(b"payload" * 10, ad), key


@pytest.mark.parametrize("position", [0, 1, 35, -17, -1])  # tag, ciphertext, MAC
def test_tampered_chunk_is_refused_and_the_stream_survives(position: int) -> None:
    reader, chunk, _key = _stream_pair()
    tampered = bytearray(chunk)
    tampered[position] ^= 0x01
    with pytest.raises(CryptoError, match="authentication"):
        reader.pull(bytes(tampered))
    assert reader.pull(chunk) == (b"payload" * 10, TAG_MESSAGE)


def test_truncated_extended_replayed_and_wrong_ad_chunks_are_refused() -> None:
    reader, chunk, _key = _stream_pair(ad=b"context")
    for bad in (b"", chunk[:16], chunk[:-1], chunk + b"\x00"):
        with pytest.raises(CryptoError):
            reader.pull(bad, b"context")
    for wrong_ad in (b"", b"contexT"):
        with pytest.raises(CryptoError):
            reader.pull(chunk, wrong_ad)
    reader.pull(chunk, b"context")
    with pytest.raises(CryptoError):
        reader.pull(chunk, b"context")  # replay: the nonce has moved on


def test_wrong_key_is_refused() -> None:
    writer = PushStream(os.urandom(32))
    reader = PullStream(os.urandom(32), writer.header)
    with pytest.raises(CryptoError):
        reader.pull(writer.push(b"secret"))


@pytest.mark.parametrize("length", [0, 16, 23, 25, 48])
def test_headers_of_wrong_length_are_refused(length: int) -> None:
    with pytest.raises(CryptoError, match="header"):
        PullStream(os.urandom(32), os.urandom(length))
    with pytest.raises(CryptoError, match="header"):
        crypto.Decryptor(os.urandom(32)).feed(os.urandom(length))


@pytest.mark.parametrize("length", [0, 31, 33])
def test_keys_of_wrong_length_are_refused(length: int) -> None:
    with pytest.raises(CryptoError, match="key"):
        PushStream(os.urandom(length))
    with pytest.raises(CryptoError, match="key"):
        PullStream(os.urandom(length), os.urandom(24))


def test_tag_must_be_one_byte() -> None:
    with pytest.raises(CryptoError, match="tag"):
        PushStream(os.urandom(32)).push(b"x", tag=256)


def test_edge_crypto_interoperates_with_libsodium_both_ways() -> None:
    key = os.urandom(32)
    encryptor = crypto.Encryptor(key)
    reader = _nacl_pull_state(key, encryptor.header)
    decryptor = crypto.Decryptor(key)
    writer = State()
    header = sodium.crypto_secretstream_xchacha20poly1305_init_push(writer, key)
    assert decryptor.feed(header) is None
    for size in SIZES:
        message = os.urandom(size)
        assert _nacl_pull(reader, encryptor.encrypt(message), b"") == (message, TAG_MESSAGE)
        assert decryptor.feed(_nacl_push(writer, message, b"", TAG_MESSAGE)) == message
    with pytest.raises(CryptoError, match="decryption"):
        decryptor.feed(b"short")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=300), st.binary(max_size=40),
                          st.sampled_from(TAGS)), max_size=12))
def test_round_trip_property(chunks: list[tuple[bytes, bytes, int]]) -> None:
    key = os.urandom(32)
    writer = PushStream(key)
    ours, theirs = PullStream(key, writer.header), _nacl_pull_state(key, writer.header)
    for message, ad, tag in chunks:
        chunk = writer.push(message, ad, tag)
        assert ours.pull(chunk, ad) == (message, tag) == _nacl_pull(theirs, chunk, ad)
