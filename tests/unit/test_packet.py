"""Packet parser (named malformed corpus, scapy differential) and packet builders."""

from __future__ import annotations

import struct
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import Packet

from tunneler.packet import DropReason, Parsed, parse
from tunneler.packet.build import (
    MAX_UDP_PAYLOAD,
    build_icmp_port_unreachable,
    build_tcp_rst,
    build_udp4,
    build_udp6,
)
from tunneler.packet.checksum import internet_checksum, ones_sum, pseudo_header_sum

T = "100.64.0.1"
VIP = "100.64.0.7"


def tcp4(**tcp: object) -> bytes:
    return bytes(IP(src=T, dst=VIP) / TCP(sport=40000, dport=443, **tcp))


def udp4(payload: bytes = b"q" * 12) -> bytes:
    return bytes(IP(src=T, dst=VIP) / UDP(sport=40000, dport=53) / payload)


def _with_ip_checksum(buf: bytearray) -> bytes:
    ihl = (buf[0] & 0x0F) * 4
    if 20 <= ihl <= len(buf):
        buf[10:12] = b"\x00\x00"
        buf[10:12] = internet_checksum(buf[:ihl]).to_bytes(2, "big")
    return bytes(buf)


def mutate(base: bytes, offset: int, value: bytes, *, fix_ip_sum: bool = True) -> bytes:
    buf = bytearray(base)
    buf[offset : offset + len(value)] = value
    return _with_ip_checksum(buf) if fix_ip_sum else bytes(buf)


def set_total_length(base: bytes, total: int) -> bytes:
    return mutate(base, 2, struct.pack("!H", total))


def ip_with_options(options: bytes) -> bytes:
    return bytes(IP(src=T, dst=VIP, options=[options]) / TCP(sport=1, dport=2))


V4_TCP = tcp4(flags="S", seq=1000)
V4_UDP = udp4()
V6_TCP = bytes(IPv6(src="fd00::1", dst="fd00::7") / TCP(sport=40000, dport=443, flags="S"))

# name -> (packet bytes, expected drop reason)
CORPUS: dict[str, tuple[bytes, DropReason]] = {
    "empty": (b"", DropReason.TRUNCATED),
    **{f"ipv4_truncated_{n}": (V4_TCP[:n], DropReason.TRUNCATED) for n in (1, 2, 10, 19)},
    **{
        f"version_{v}": (mutate(V4_TCP, 0, bytes([v << 4 | 5])), DropReason.BAD_VERSION)
        for v in (0, 1, 5, 7, 15)
    },
    **{
        f"ihl_{i}": (mutate(V4_TCP, 0, bytes([0x40 | i]), fix_ip_sum=False), DropReason.BAD_IHL)
        for i in (0, 1, 4)
    },
    "ihl_past_end": (mutate(V4_TCP[:24], 0, b"\x4f"), DropReason.BAD_IHL),
    "total_length_0": (set_total_length(V4_TCP, 0), DropReason.BAD_TOTAL_LENGTH),
    "total_length_below_ihl": (set_total_length(V4_TCP, 19), DropReason.BAD_TOTAL_LENGTH),
    "total_length_past_read": (set_total_length(V4_TCP, 41), DropReason.BAD_TOTAL_LENGTH),
    "total_length_short_of_read": (set_total_length(V4_TCP, 39), DropReason.BAD_TOTAL_LENGTH),
    "trailing_bytes": (V4_TCP + b"\x00", DropReason.BAD_TOTAL_LENGTH),
    "bad_ip_checksum": (
        mutate(V4_TCP, 10, b"\xde\xad", fix_ip_sum=False),
        DropReason.BAD_IP_CHECKSUM,
    ),
    **{
        f"ip_options_{name}": (ip_with_options(opts), DropReason.BAD_IP_OPTIONS)
        for name, opts in {
            "length_0": b"\x07\x00\x00\x00",
            "length_1": b"\x44\x01\x00\x00",
            "length_past_end": b"\x01\x07\x08\x00",
            "type_only_at_end": b"\x01\x01\x01\x83",
        }.items()
    },
    "fragment_mf": (bytes(IP(src=T, dst=VIP, flags="MF") / TCP()), DropReason.FRAGMENT),
    "fragment_offset": (
        bytes(IP(src=T, dst=VIP, frag=100, proto=6) / (b"x" * 20)),
        DropReason.FRAGMENT,
    ),
    "fragment_last_past_65535": (
        bytes(IP(src=T, dst=VIP, frag=8191, proto=6) / (b"x" * 20)),
        DropReason.FRAGMENT,
    ),
    **{
        f"proto_{p}": (
            bytes(IP(src=T, dst=VIP, proto=p) / (b"x" * 20)),
            DropReason.UNSUPPORTED_PROTOCOL,
        )
        for p in (0, 2, 47, 50, 58, 132, 255)
    },
    "tcp_truncated_header": (
        bytes(IP(src=T, dst=VIP, proto=6) / (b"x" * 19)),
        DropReason.TRUNCATED,
    ),
    "tcp_no_header": (bytes(IP(src=T, dst=VIP, proto=6)), DropReason.TRUNCATED),
    **{
        f"tcp_offset_{d}": (mutate(V4_TCP, 32, bytes([d << 4])), DropReason.BAD_TCP_OFFSET)
        for d in (0, 1, 4)
    },
    "tcp_offset_past_end": (mutate(V4_TCP, 32, b"\x60"), DropReason.BAD_TCP_OFFSET),
    "tcp_offset_15_short": (mutate(V4_TCP, 32, b"\xf0"), DropReason.BAD_TCP_OFFSET),
    "tcp_sport_0": (tcp4(flags="S").replace(b"\x9c\x40", b"\x00\x00", 1), DropReason.BAD_PORT),
    "tcp_dport_0": (bytes(IP(src=T, dst=VIP) / TCP(sport=1, dport=0)), DropReason.BAD_PORT),
    "udp_truncated": (bytes(IP(src=T, dst=VIP, proto=17) / b"1234567"), DropReason.TRUNCATED),
    **{
        f"udp_length_{n}": (mutate(V4_UDP, 24, struct.pack("!H", n)), DropReason.BAD_UDP_LENGTH)
        for n in (0, 7, 8, 19, 21, 0xFFFF)
    },
    "udp_dport_0": (bytes(IP(src=T, dst=VIP) / UDP(sport=5, dport=0)), DropReason.BAD_PORT),
    "icmp_truncated": (bytes(IP(src=T, dst=VIP, proto=1) / b"1234567"), DropReason.TRUNCATED),
    **{f"ipv6_truncated_{n}": (V6_TCP[:n], DropReason.TRUNCATED) for n in (1, 8, 39)},
    "ipv6_payload_length_long": (mutate(V6_TCP, 4, b"\x00\x15"), DropReason.BAD_TOTAL_LENGTH),
    "ipv6_payload_length_short": (mutate(V6_TCP, 4, b"\x00\x13"), DropReason.BAD_TOTAL_LENGTH),
    "ipv6_jumbogram": (mutate(V6_TCP, 4, b"\x00\x00"), DropReason.BAD_TOTAL_LENGTH),
    "ipv6_hop_by_hop": (bytes(IPv6() / IPv6ExtHdrHopByHop() / TCP()), DropReason.IPV6_EXTENSION),
    "ipv6_routing": (bytes(IPv6() / IPv6ExtHdrRouting() / TCP()), DropReason.IPV6_EXTENSION),
    "ipv6_dest_opts": (bytes(IPv6() / IPv6ExtHdrDestOpt() / UDP()), DropReason.IPV6_EXTENSION),
    "ipv6_fragment": (bytes(IPv6() / IPv6ExtHdrFragment() / TCP()), DropReason.FRAGMENT),
    "ipv6_icmpv4_proto": (bytes(IPv6(nh=1) / (b"x" * 8)), DropReason.UNSUPPORTED_PROTOCOL),
    "ipv6_udp_checksum_0": (
        mutate(bytes(IPv6() / UDP(sport=1, dport=2)), 46, b"\x00\x00"),
        DropReason.BAD_UDP_CHECKSUM,
    ),
    "ipv6_tcp_offset_4": (mutate(V6_TCP, 52, b"\x40"), DropReason.BAD_TCP_OFFSET),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_malformed_corpus(name: str) -> None:
    packet, reason = CORPUS[name]
    assert parse(packet) is reason
    assert parse(bytearray(packet), Parsed()) is reason
    assert parse(memoryview(packet)) is reason


def _ip_int(address: str) -> int:
    return int(IPv4Address(address)) if ":" not in address else int(IPv6Address(address))


VALID: dict[str, Packet] = {
    "tcp_syn": IP(src=T, dst=VIP) / TCP(sport=40000, dport=443, flags="S"),
    "tcp_options": IP(src=T, dst=VIP)
    / TCP(sport=2, dport=3, flags="S", options=[("MSS", 1460), ("WScale", 7)]),
    "tcp_syn_fin": IP(src=T, dst=VIP) / TCP(sport=2, dport=3, flags="SF") / b"data",
    "tcp_ack_data": IP(src=T, dst=VIP) / TCP(sport=9, dport=80, flags="PA") / (b"x" * 1000),
    "ip_options": IP(src=T, dst=VIP, options=[b"\x01\x01\x01\x00"]) / TCP(sport=1, dport=2),
    "ip_option_rr": IP(src=T, dst=VIP, options=[b"\x07\x07\x04" + bytes(4) + b"\x00"])
    / UDP(sport=1, dport=2),
    "udp": IP(src=T, dst="100.64.0.2") / UDP(sport=5353, dport=53) / b"query",
    "udp_checksum_0_v4": IP(src=T, dst=VIP) / UDP(sport=7, dport=8, chksum=0) / b"z",
    "icmp_echo": IP(src=T, dst=VIP) / ICMP(type=8) / b"ping",
    "icmp_error": IP(src=T, dst=VIP) / ICMP(type=3, code=3) / IPerror() / UDPerror(),
    "tcp6": IPv6(src="fd00::1", dst="fd00::7") / TCP(sport=5, dport=6, flags="A"),
    "udp6": IPv6(src="fd00::1", dst="fd00::7") / UDP(sport=5, dport=6) / b"x",
    "icmp6": IPv6(src="fd00::1", dst="fd00::7", nh=58) / (b"\x80\x00" + b"\x00" * 6),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_packets_match_scapy(name: str) -> None:
    wire = bytes(VALID[name])
    parsed = parse(wire)
    assert isinstance(parsed, Parsed), parsed
    decoded = (IP if wire[0] >> 4 == 4 else IPv6)(wire)
    assert parsed.version == decoded.version
    assert parsed.total_length == len(wire)
    assert parsed.src == _ip_int(decoded.src)
    assert parsed.dst == _ip_int(decoded.dst)
    layer = decoded.payload
    assert parsed.l4_offset == len(wire) - len(bytes(layer))
    if isinstance(layer, TCP):
        assert (parsed.src_port, parsed.dst_port) == (layer.sport, layer.dport)
        assert parsed.tcp_flags == int(layer.flags)
        assert parsed.payload_offset == len(wire) - len(bytes(layer.payload))
    elif isinstance(layer, UDP):
        assert (parsed.src_port, parsed.dst_port) == (layer.sport, layer.dport)
        assert parsed.payload_offset == len(wire) - len(bytes(layer.payload))
    else:
        assert parsed.icmp_type == wire[parsed.l4_offset]
        assert parsed.payload_offset == parsed.l4_offset + 8


def test_parse_reuses_the_given_object() -> None:
    out = Parsed()
    assert parse(V4_TCP, out) is out
    assert parse(V4_UDP, out) is out
    assert out.tcp_flags == 0 and out.dst_port == 53
    assert "dst_port=53" in repr(out)


def test_header_checksum_check_can_be_disabled() -> None:
    bad = mutate(V4_TCP, 10, b"\x00\x01", fix_ip_sum=False)
    assert isinstance(parse(bad, check_ip_checksum=False), Parsed)


def assert_checksums_valid(wire: bytes) -> Packet:
    """Re-parse with our parser and with scapy; verify every checksum and scapy's recompute."""
    parsed = parse(wire)
    assert isinstance(parsed, Parsed), parsed
    l4 = wire[parsed.l4_offset :]
    if parsed.proto in (6, 17):
        pseudo = pseudo_header_sum(parsed.src, parsed.dst, parsed.proto, len(l4))
        assert internet_checksum(l4, pseudo) == 0
    else:
        assert ones_sum(l4) == 0xFFFF
    decoded = (IP if parsed.version == 4 else IPv6)(wire)
    fresh = decoded.copy()
    if parsed.version == 4:
        del fresh.chksum
    del fresh.payload.chksum
    recomputed = type(decoded)(bytes(fresh))
    if parsed.version == 4:
        assert recomputed.chksum == decoded.chksum
    assert recomputed.payload.chksum == decoded.payload.chksum
    return decoded


def test_build_udp4_round_trips_through_scapy() -> None:
    wire = build_udp4(_ip_int("100.64.0.2"), 53, _ip_int(T), 40000, b"answer", ident=7)
    decoded = assert_checksums_valid(wire)
    assert bytes(decoded[UDP].payload) == b"answer" and decoded[UDP].dport == 40000
    assert decoded.id == 7 and decoded.ttl == 64


def test_build_udp6_round_trips_through_scapy() -> None:
    wire = build_udp6(_ip_int("fd00::2"), 53, _ip_int("fd00::1"), 4, b"a" * 33)
    decoded = assert_checksums_valid(wire)
    assert bytes(decoded[UDP].payload) == b"a" * 33  # port 53 may decode as DNS


def test_build_udp_rejects_oversized_payload() -> None:
    assert len(build_udp4(1, 2, 3, 4, bytes(MAX_UDP_PAYLOAD))) == 0xFFFF
    with pytest.raises(ValueError, match="exceeds"):
        build_udp4(1, 2, 3, 4, bytes(MAX_UDP_PAYLOAD + 1))


RstCase = tuple[Callable[[], bytes], str, int, int]
RST_CASES: dict[str, RstCase] = {
    "syn": (lambda: tcp4(flags="S", seq=1000), "RA", 0, 1001),
    "syn_with_data": (
        lambda: bytes(IP(src=T, dst=VIP) / TCP(sport=1, dport=2, flags="S", seq=5) / b"abc"),
        "RA",
        0,
        9,
    ),
    "fin_no_ack": (lambda: tcp4(flags="F", seq=0xFFFFFFFF), "RA", 0, 0),
    "ack": (lambda: tcp4(flags="A", seq=1, ack=77), "R", 77, 0),
    "syn6": (lambda: V6_TCP, "RA", 0, 1),
}


@pytest.mark.parametrize("name", sorted(RST_CASES))
def test_build_tcp_rst(name: str) -> None:
    make, flags, seq, ack = RST_CASES[name]
    wire = make()
    parsed = parse(wire)
    assert isinstance(parsed, Parsed)
    rst = build_tcp_rst(wire, parsed)
    assert rst is not None
    decoded = assert_checksums_valid(rst)
    assert str(decoded[TCP].flags) == flags
    assert (decoded[TCP].seq, decoded[TCP].ack) == (seq, ack)
    assert (decoded.src, decoded.dst) == (
        (IP if wire[0] >> 4 == 4 else IPv6)(wire).dst,
        (IP if wire[0] >> 4 == 4 else IPv6)(wire).src,
    )
    assert (decoded[TCP].sport, decoded[TCP].dport) == (parsed.dst_port, parsed.src_port)


def test_no_rst_for_rst_or_udp() -> None:
    for wire in (tcp4(flags="R"), V4_UDP):
        parsed = parse(wire)
        assert isinstance(parsed, Parsed)
        assert build_tcp_rst(wire, parsed) is None


def test_build_icmp_port_unreachable() -> None:
    parsed = parse(V4_UDP)
    assert isinstance(parsed, Parsed)
    reply = build_icmp_port_unreachable(V4_UDP, parsed)
    assert reply is not None
    decoded = assert_checksums_valid(reply)
    assert (decoded[ICMP].type, decoded[ICMP].code) == (3, 3)
    assert bytes(decoded[IPerror])[:28] == V4_UDP[:28]
    assert decoded.dst == T
    icmp = parse(bytes(IP(src=T, dst=VIP) / ICMP()))
    v6 = parse(V6_TCP)
    assert isinstance(icmp, Parsed) and isinstance(v6, Parsed)
    assert build_icmp_port_unreachable(b"", icmp) is None
    assert build_icmp_port_unreachable(V6_TCP, v6) is None
