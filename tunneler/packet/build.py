"""Builders for packets the daemon writes into the TUN, with full checksums.

API (addresses are ints; IPv4 unless the name says 6):

- ``build_udp4(src, src_port, dst, dst_port, payload, *, ttl=64, ident=0) -> bytes`` — a UDP
  datagram (DNS replies, UDP flow replies). ``build_udp6`` is the IPv6 twin.
- ``build_tcp_rst(packet, parsed) -> bytes | None`` — the RST answering a TCP segment (RFC 9293
  §3.10.7.1: a segment with ACK gets ``RST seq=SEG.ACK``; otherwise ``RST|ACK seq=0
  ack=SEG.SEQ+SEG.LEN``); None for an RST (never answer an RST) or a non-TCP packet. Used to
  refuse undialable flows fast. IPv4 and IPv6.
- ``build_icmp_port_unreachable(packet, parsed) -> bytes | None`` — ICMPv4 type 3 code 3
  quoting the offending IP header + 8 bytes (RFC 792); None for IPv6 and ICMP input.

``MAX_UDP_PAYLOAD`` caps what a single IPv4 datagram can carry; larger payloads raise
``ValueError`` (a caller bug, not input from the network).
"""

from __future__ import annotations

import struct

from tunneler.packet.checksum import internet_checksum, pseudo_header_sum
from tunneler.packet.parse import (
    IPV4_HEADER_LEN,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_HEADER_LEN,
    TCP_RST,
    TCP_SYN,
    UDP_HEADER_LEN,
    Parsed,
)

MAX_UDP_PAYLOAD = 0xFFFF - IPV4_HEADER_LEN - UDP_HEADER_LEN
DEFAULT_TTL = 64

_V4_HEADER = struct.Struct("!BBHHHBBHII")
_V6_HEADER = struct.Struct("!IHBB16s16s")
_UDP_HEADER = struct.Struct("!HHHH")
_TCP_HEADER = struct.Struct("!HHIIBBHHH")
_SEQ_ACK = struct.Struct("!II")
_ICMP_HEADER = struct.Struct("!BBHI")


def ipv4_header(src: int, dst: int, proto: int, payload_len: int, ttl: int, ident: int) -> bytes:
    """Return a 20-byte IPv4 header (DF set) with its checksum filled in."""
    total = IPV4_HEADER_LEN + payload_len
    header = _V4_HEADER.pack(0x45, 0, total, ident & 0xFFFF, 0x4000, ttl, proto, 0, src, dst)
    checksum = internet_checksum(header)
    return header[:10] + checksum.to_bytes(2, "big") + header[12:]


def ipv6_header(src: int, dst: int, proto: int, payload_len: int, hops: int) -> bytes:
    """Return a 40-byte IPv6 header."""
    return _V6_HEADER.pack(
        6 << 28, payload_len, proto, hops, src.to_bytes(16, "big"), dst.to_bytes(16, "big")
    )


def _l4_checksum(src: int, dst: int, proto: int, segment: bytes) -> int:
    return internet_checksum(segment, pseudo_header_sum(src, dst, proto, len(segment)))


def _udp_segment(src: int, src_port: int, dst: int, dst_port: int, payload: bytes) -> bytes:
    if len(payload) > MAX_UDP_PAYLOAD:
        raise ValueError(f"UDP payload of {len(payload)} bytes exceeds {MAX_UDP_PAYLOAD}")
    length = UDP_HEADER_LEN + len(payload)
    segment = _UDP_HEADER.pack(src_port, dst_port, length, 0) + payload
    checksum = _l4_checksum(src, dst, PROTO_UDP, segment) or 0xFFFF  # RFC 768: 0 means none
    return segment[:6] + checksum.to_bytes(2, "big") + segment[8:]


def build_udp4(
    src: int,
    src_port: int,
    dst: int,
    dst_port: int,
    payload: bytes,
    *,
    ttl: int = DEFAULT_TTL,
    ident: int = 0,
) -> bytes:
    """Build an IPv4 UDP datagram with valid IP and UDP checksums."""
    segment = _udp_segment(src, src_port, dst, dst_port, payload)
    return ipv4_header(src, dst, PROTO_UDP, len(segment), ttl, ident) + segment


def build_udp6(
    src: int, src_port: int, dst: int, dst_port: int, payload: bytes, *, hops: int = DEFAULT_TTL
) -> bytes:
    """Build an IPv6 UDP datagram with a valid UDP checksum."""
    segment = _udp_segment(src, src_port, dst, dst_port, payload)
    return ipv6_header(src, dst, PROTO_UDP, len(segment), hops) + segment


def _rst_numbers(packet: bytes | bytearray | memoryview, parsed: Parsed) -> tuple[int, int, int]:
    """Return (seq, ack, flags) of the RST answering the segment in ``packet``."""
    seq, ack = _SEQ_ACK.unpack_from(packet, parsed.l4_offset + 4)
    if parsed.tcp_flags & TCP_ACK:
        return ack, 0, TCP_RST
    seg_len = parsed.total_length - parsed.payload_offset
    seg_len += bool(parsed.tcp_flags & TCP_SYN) + bool(parsed.tcp_flags & TCP_FIN)
    return 0, (seq + seg_len) & 0xFFFFFFFF, TCP_RST | TCP_ACK


def build_tcp_rst(packet: bytes | bytearray | memoryview, parsed: Parsed) -> bytes | None:
    """Build the RST refusing the TCP segment ``packet`` (parsed as ``parsed``), or None."""
    if parsed.proto != PROTO_TCP or parsed.tcp_flags & TCP_RST:
        return None
    seq, ack, flags = _rst_numbers(packet, parsed)
    src, dst = parsed.dst, parsed.src
    header = _TCP_HEADER.pack(parsed.dst_port, parsed.src_port, seq, ack, 5 << 4, flags, 0, 0, 0)
    checksum = _l4_checksum(src, dst, PROTO_TCP, header)
    segment = header[:16] + checksum.to_bytes(2, "big") + header[18:]
    if parsed.version == 4:
        return ipv4_header(src, dst, PROTO_TCP, TCP_HEADER_LEN, DEFAULT_TTL, 0) + segment
    return ipv6_header(src, dst, PROTO_TCP, TCP_HEADER_LEN, DEFAULT_TTL) + segment


def build_icmp_port_unreachable(
    packet: bytes | bytearray | memoryview, parsed: Parsed
) -> bytes | None:
    """Build an ICMPv4 port unreachable for ``packet``, or None when none may be sent."""
    if parsed.version != 4 or parsed.proto == PROTO_ICMP:
        return None
    quoted = bytes(packet[: parsed.header_length + 8])
    body = _ICMP_HEADER.pack(3, 3, 0, 0) + quoted
    checksum = internet_checksum(body)
    message = body[:2] + checksum.to_bytes(2, "big") + body[4:]
    return ipv4_header(parsed.dst, parsed.src, PROTO_ICMP, len(message), DEFAULT_TTL, 0) + message
