"""Bounds-checked IPv4/IPv6 + TCP/UDP/ICMP header parser for packets read from the TUN.

API:

- ``parse(buf, out=None, *, check_ip_checksum=True) -> Parsed | DropReason`` — never raises
  for any input; returns a ``DropReason`` member for packets the data path must drop (and count).
  Pass a ``Parsed`` as ``out`` to reuse one object per read loop (no per-packet allocation).
- ``Parsed`` — ``version`` (4/6), ``header_length`` (IP header bytes; IHL * 4 for IPv4),
  ``total_length`` (whole packet), ``proto`` (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6), ``src`` /
  ``dst`` (addresses as ints, 32 or 128 bits), ``src_port`` / ``dst_port`` (0 for ICMP),
  ``tcp_flags`` (0 unless TCP), ``icmp_type`` / ``icmp_code``, ``l4_offset`` (start of the
  TCP/UDP/ICMP header), ``payload_offset`` (start of the L4 payload).

Policy (reliability.md TM-01): the IP total length must equal the bytes read; fragments are
dropped; IPv4 options must be well-formed (lengths only; they are not interpreted); IPv6
extension headers are dropped; TCP/UDP port 0 is dropped; UDP over IPv6 with a
zero checksum is dropped (RFC 8200 §8.1). L4 checksums are not verified here: the kernel wrote
them, and the NAT updates them incrementally, so a bad one stays bad and the receiver drops it.
TCP options are likewise left to the receiving kernel.
"""

from __future__ import annotations

import enum
import struct

from tunneler.packet.checksum import ones_sum

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

IPV4_HEADER_LEN = 20
IPV6_HEADER_LEN = 40
TCP_HEADER_LEN = 20
UDP_HEADER_LEN = 8
ICMP_HEADER_LEN = 8

_IPV6_EXTENSIONS = frozenset({0, 43, 50, 51, 60, 135, 139, 140, 253, 254})
_IPV6_FRAGMENT = 44
_V4_HEADER = struct.Struct("!BBHHHBBHII")
_V6_HEADER = struct.Struct("!IHBB16s16s")
_PORTS = struct.Struct("!HH")
_UDP_LEN_SUM = struct.Struct("!HH")


class DropReason(enum.Enum):
    """Why a packet was dropped; the engine counts drops by ``reason.name``."""

    TRUNCATED = "truncated"
    BAD_VERSION = "bad_version"
    BAD_IHL = "bad_ihl"
    BAD_TOTAL_LENGTH = "bad_total_length"
    BAD_IP_CHECKSUM = "bad_ip_checksum"
    BAD_IP_OPTIONS = "bad_ip_options"
    FRAGMENT = "fragment"
    IPV6_EXTENSION = "ipv6_extension"
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"
    BAD_TCP_OFFSET = "bad_tcp_offset"
    BAD_UDP_LENGTH = "bad_udp_length"
    BAD_UDP_CHECKSUM = "bad_udp_checksum"
    BAD_PORT = "bad_port"


class Parsed:
    """The decoded header fields of one packet (mutable so one instance can be reused)."""

    __slots__ = (
        "dst",
        "dst_port",
        "header_length",
        "icmp_code",
        "icmp_type",
        "l4_offset",
        "payload_offset",
        "proto",
        "src",
        "src_port",
        "tcp_flags",
        "total_length",
        "version",
    )

    def __init__(self) -> None:
        self.version = 0
        self.header_length = 0
        self.total_length = 0
        self.proto = 0
        self.src = 0
        self.dst = 0
        self.src_port = 0
        self.dst_port = 0
        self.tcp_flags = 0
        self.icmp_type = 0
        self.icmp_code = 0
        self.l4_offset = 0
        self.payload_offset = 0

    def copy(self) -> Parsed:
        """An independent copy (to keep beside a held packet, so it is never parsed again)."""
        twin = Parsed()
        for name in self.__slots__:
            setattr(twin, name, getattr(self, name))
        return twin

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Parsed({fields})"


def parse(
    buf: bytes | bytearray | memoryview,
    out: Parsed | None = None,
    *,
    check_ip_checksum: bool = True,
) -> Parsed | DropReason:
    """Parse one IP packet; return the fields or the reason to drop it.

    Args:
        buf: exactly the bytes of one packet as read from the TUN.
        out: an object to fill in place (reused across calls), or None for a new one.
        check_ip_checksum: verify the IPv4 header checksum.

    Returns:
        ``out`` (or a new ``Parsed``) filled in, or a ``DropReason``.
    """
    size = len(buf)
    if size < 1:
        return DropReason.TRUNCATED
    version = buf[0] >> 4
    parsed = out if out is not None else Parsed()
    if version == 4:
        result = _parse_ipv4(buf, size, parsed, check_ip_checksum)
    elif version == 6:
        result = _parse_ipv6(buf, size, parsed)
    else:
        return DropReason.BAD_VERSION
    if result is not None:
        return result
    reason = _parse_l4(buf, parsed)
    return parsed if reason is None else reason


def _parse_ipv4(
    buf: bytes | bytearray | memoryview, size: int, parsed: Parsed, check: bool
) -> DropReason | None:
    if size < IPV4_HEADER_LEN:
        return DropReason.TRUNCATED
    vihl, _tos, total, _ident, frag, _ttl, proto, _sum, src, dst = _V4_HEADER.unpack_from(buf)
    ihl = (vihl & 0x0F) * 4
    if ihl < IPV4_HEADER_LEN or ihl > size:
        return DropReason.BAD_IHL
    if total != size:
        return DropReason.BAD_TOTAL_LENGTH
    if frag & 0x3FFF:  # MF flag or a non-zero fragment offset
        return DropReason.FRAGMENT
    if check and ones_sum(buf[:ihl]) != 0xFFFF:
        return DropReason.BAD_IP_CHECKSUM
    if ihl > IPV4_HEADER_LEN and not _options_well_formed(buf, IPV4_HEADER_LEN, ihl):
        return DropReason.BAD_IP_OPTIONS
    parsed.version = 4
    parsed.header_length = ihl
    parsed.total_length = total
    parsed.proto = proto
    parsed.src = src
    parsed.dst = dst
    parsed.l4_offset = ihl
    return None


def _options_well_formed(buf: bytes | bytearray | memoryview, offset: int, end: int) -> bool:
    """Walk IPv4 options (RFC 791): EOL ends, NOP is one byte, others carry a length >= 2."""
    while offset < end:
        kind = buf[offset]
        if kind == 0:
            return True
        if kind == 1:
            offset += 1
            continue
        if offset + 1 >= end or buf[offset + 1] < 2 or offset + buf[offset + 1] > end:
            return False
        offset += buf[offset + 1]
    return True


def _parse_ipv6(
    buf: bytes | bytearray | memoryview, size: int, parsed: Parsed
) -> DropReason | None:
    if size < IPV6_HEADER_LEN:
        return DropReason.TRUNCATED
    _vtc, payload_len, next_header, _hops, src, dst = _V6_HEADER.unpack_from(buf)
    if payload_len + IPV6_HEADER_LEN != size:
        return DropReason.BAD_TOTAL_LENGTH
    if next_header == _IPV6_FRAGMENT:
        return DropReason.FRAGMENT
    if next_header in _IPV6_EXTENSIONS:
        return DropReason.IPV6_EXTENSION
    parsed.version = 6
    parsed.header_length = IPV6_HEADER_LEN
    parsed.total_length = size
    parsed.proto = next_header
    parsed.src = int.from_bytes(src, "big")
    parsed.dst = int.from_bytes(dst, "big")
    parsed.l4_offset = IPV6_HEADER_LEN
    return None


def _parse_l4(buf: bytes | bytearray | memoryview, parsed: Parsed) -> DropReason | None:
    proto = parsed.proto
    offset = parsed.l4_offset
    available = parsed.total_length - offset
    parsed.tcp_flags = parsed.icmp_type = parsed.icmp_code = 0
    if proto == PROTO_TCP:
        return _parse_tcp(buf, offset, available, parsed)
    if proto == PROTO_UDP:
        return _parse_udp(buf, offset, available, parsed)
    expected_icmp = PROTO_ICMP if parsed.version == 4 else PROTO_ICMPV6
    if proto != expected_icmp:
        return DropReason.UNSUPPORTED_PROTOCOL
    if available < ICMP_HEADER_LEN:
        return DropReason.TRUNCATED
    parsed.icmp_type = buf[offset]
    parsed.icmp_code = buf[offset + 1]
    parsed.src_port = parsed.dst_port = 0
    parsed.payload_offset = offset + ICMP_HEADER_LEN
    return None


def _parse_tcp(
    buf: bytes | bytearray | memoryview, offset: int, available: int, parsed: Parsed
) -> DropReason | None:
    if available < TCP_HEADER_LEN:
        return DropReason.TRUNCATED
    data_offset = (buf[offset + 12] >> 4) * 4
    if data_offset < TCP_HEADER_LEN or data_offset > available:
        return DropReason.BAD_TCP_OFFSET
    parsed.src_port, parsed.dst_port = _PORTS.unpack_from(buf, offset)
    if parsed.src_port == 0 or parsed.dst_port == 0:
        return DropReason.BAD_PORT
    parsed.tcp_flags = buf[offset + 13]
    parsed.payload_offset = offset + data_offset
    return None


def _parse_udp(
    buf: bytes | bytearray | memoryview, offset: int, available: int, parsed: Parsed
) -> DropReason | None:
    if available < UDP_HEADER_LEN:
        return DropReason.TRUNCATED
    length, checksum = _UDP_LEN_SUM.unpack_from(buf, offset + 4)
    if length != available:
        return DropReason.BAD_UDP_LENGTH
    if checksum == 0 and parsed.version == 6:
        return DropReason.BAD_UDP_CHECKSUM
    parsed.src_port, parsed.dst_port = _PORTS.unpack_from(buf, offset)
    if parsed.src_port == 0 or parsed.dst_port == 0:
        return DropReason.BAD_PORT
    parsed.payload_offset = offset + UDP_HEADER_LEN
    return None
