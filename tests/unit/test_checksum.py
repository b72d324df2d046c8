"""RFC 1071 / RFC 1624 checksum helpers, checked against scapy and a word-by-word oracle."""

from __future__ import annotations

import random
from ipaddress import IPv4Address

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.utils import checksum as scapy_checksum

from tunneler.packet.checksum import (
    address_words,
    apply_delta,
    checksum_delta,
    internet_checksum,
    ones_sum,
    port_words,
    pseudo_header_sum,
)


def _oracle_sum(data: bytes) -> int:
    """Word-by-word end-around-carry sum, as RFC 1071 §4.1 writes it."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"\xff", b"\xff\xff", b"\xff\xff\x00\x01", b"\x12\x34\x56", bytes(64) + b"\x01"],
)
def test_ones_sum_matches_rfc1071_loop(data: bytes) -> None:
    assert ones_sum(data) == _oracle_sum(data)


def test_random_buffers_match_oracle_and_scapy() -> None:
    rng = random.Random(1071)
    for _ in range(300):
        data = rng.randbytes(rng.randrange(0, 300))
        assert ones_sum(data) == _oracle_sum(data)
        assert internet_checksum(data) == scapy_checksum(data)


def test_rfc1071_worked_example() -> None:
    # RFC 1071 §3: words 0001 f203 f4f5 f6f7 sum to ddf2 (folded), checksum 220d.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_sum(data) == 0xDDF2
    assert internet_checksum(data) == 0x220D


def test_pseudo_header_matches_scapy_udp_checksum() -> None:
    packet = IP(src="10.1.2.3", dst="100.64.0.9") / UDP(sport=4000, dport=53) / b"hello?"
    wire = bytes(packet)
    segment = wire[20:]
    zeroed = segment[:6] + b"\x00\x00" + segment[8:]
    initial = pseudo_header_sum(0x0A010203, 0x64400009, 17, len(segment))
    assert internet_checksum(zeroed, initial) == IP(wire)[UDP].chksum


def test_incremental_update_equals_full_recompute() -> None:
    rng = random.Random(1624)
    for _ in range(200):
        src, dst = rng.getrandbits(32), rng.getrandbits(32)
        new_src, new_port = rng.getrandbits(32), rng.randrange(1, 65536)
        packet = IP(src=str(IPv4Address(src)), dst=str(IPv4Address(dst))) / TCP(
            sport=1234, dport=80, seq=rng.getrandbits(32)
        )
        wire = bytearray(bytes(packet))
        delta = checksum_delta(
            address_words(src) + port_words(1234), address_words(new_src) + port_words(new_port)
        )
        old = int.from_bytes(wire[36:38], "big")
        rewritten = IP(src=str(IPv4Address(new_src)), dst=str(IPv4Address(dst)))
        expected = bytes(rewritten / TCP(sport=new_port, dport=80, seq=packet.seq))
        got = apply_delta(old, delta)
        # +0 and -0 are the same checksum; compare by validity and value modulo 0xFFFF.
        assert got % 0xFFFF == int.from_bytes(expected[36:38], "big") % 0xFFFF


def test_delta_of_identity_change_is_neutral() -> None:
    delta = checksum_delta(address_words(0x01020304), address_words(0x01020304))
    assert apply_delta(0x1234, delta) % 0xFFFF == 0x1234
