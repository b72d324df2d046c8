"""Writes the named corpus: packets.jsonl and dns.jsonl (`python tests/corpus/build.py`).

Each line is {"name", "source", "hex", "expect"}: what the input is, where it comes from
(the RFC section or the real-world producer whose shape it copies; every entry is built with
scapy or dnslib, or by hand from those bytes where a field must lie), its bytes, and what our
decoder must do with it ("accepted", or the DropReason / Drop reason). Where the right outcome
is known from the RFC, the builder states it and refuses to write a corpus that disagrees, so
the files are a reviewed regression suite, not a snapshot (tests/unit/test_fuzz_scale.py
replays them).
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

from dnslib import EDNS0, QTYPE, DNSHeader, DNSQuestion, DNSRecord
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_Router_Alert
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import Raw

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tests.support.fuzz import dns_responder  # noqa: E402
from tunneler.dns.answer import Drop  # noqa: E402
from tunneler.packet import DropReason, parse  # noqa: E402

APP, VIP, DNS = "100.64.0.1", "100.64.0.9", "100.64.0.2"
Entry = tuple[str, str, bytes, str | None]   # name, source, bytes, known outcome (None: record)


def _fix_ip_checksum(raw: bytearray) -> bytes:
    ihl = (raw[0] & 0x0F) * 4
    raw[10:12] = b"\0\0"
    total = sum(struct.unpack(f"!{ihl // 2}H", bytes(raw[:ihl])))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    raw[10:12] = struct.pack("!H", ~total & 0xFFFF)
    return bytes(raw)


def packets() -> Iterator[Entry]:
    tcp = "RFC 9293 §3.1 segment, built with scapy"
    for flags in ("S", "SA", "A", "PA", "FA", "F", "R", "RA", "SE", "SEC", "U", "", "FSRPAUEC"):
        for dport in (443, 8000):
            yield (f"ipv4-tcp-{flags or 'none'}-{dport}", f"{tcp}: flags {flags or 'none'}",
                   bytes(IP(src=APP, dst=VIP) / TCP(sport=40000, dport=dport, flags=flags)), None)
    options = {
        "mss": [("MSS", 1460)], "linux-syn": [("MSS", 65495), ("SAckOK", b""),
                                              ("Timestamp", (1, 0)), ("NOP", None),
                                              ("WScale", 7)],
        "windows-syn": [("MSS", 1460), ("NOP", None), ("WScale", 8), ("NOP", None),
                        ("NOP", None), ("SAckOK", b"")],
        "macos-syn": [("MSS", 1460), ("NOP", None), ("WScale", 6), ("NOP", None), ("NOP", None),
                      ("Timestamp", (7, 0)), ("SAckOK", b""), ("EOL", None)],
        "sack-blocks": [("NOP", None), ("NOP", None), ("SAck", (1000, 2000, 3000, 4000))],
        "unknown-kind": [(253, b"\x01\x02")], "eol-only": [("EOL", None)],
    }
    for name, opts in options.items():
        yield (f"ipv4-tcp-options-{name}", f"RFC 9293 §3.2 / RFC 7323 options as {name} sends "
               "them, built with scapy",
               bytes(IP(src=APP, dst=VIP) / TCP(sport=40001, dport=443, flags="S",
                                               options=opts)), "accepted")
    for size in (0, 1, 536, 1400, 8960, 60000):
        yield (f"ipv4-tcp-payload-{size}", f"{tcp}: {size} payload bytes",
               bytes(IP(src=APP, dst=VIP) / TCP(sport=40002, dport=443, flags="PA")
                     / Raw(b"x" * size)), "accepted")
    for offset in (0, 1, 4):
        yield (f"ipv4-tcp-data-offset-{offset}", "RFC 9293 §3.1: data offset below 5 words",
               bytes(IP(src=APP, dst=VIP) / TCP(sport=40003, dport=443, dataofs=offset)),
               DropReason.BAD_TCP_OFFSET.name)
    yield ("ipv4-tcp-data-offset-15-short", "RFC 9293 §3.1: data offset past the packet's end",
           bytes(IP(src=APP, dst=VIP) / TCP(sport=40003, dport=443, dataofs=15)),
           DropReason.BAD_TCP_OFFSET.name)
    for sport, dport in ((0, 443), (40000, 0)):
        yield (f"ipv4-tcp-port-zero-{sport}-{dport}", "RFC 9293 §3.1: port 0 is reserved",
               bytes(IP(src=APP, dst=VIP) / TCP(sport=sport, dport=dport, flags="S")),
               DropReason.BAD_PORT.name)
    udp = "RFC 768 datagram, built with scapy"
    for dport, payload in ((53, b"\x12\x34\x01\x00"), (443, b"quic" * 300), (5353, b""),
                           (123, b"\x1b" + b"\0" * 47), (500, b"ike" * 10), (4500, b"\xff")):
        yield (f"ipv4-udp-{dport}-{len(payload)}", f"{udp}: to port {dport}",
               bytes(IP(src=APP, dst=VIP) / UDP(sport=50000, dport=dport) / payload), "accepted")
    zero = bytearray(bytes(IP(src=APP, dst=VIP) / UDP(sport=50000, dport=53) / b"q"))
    zero[26:28] = b"\0\0"
    yield ("ipv4-udp-no-checksum", "RFC 768: checksum 0 means none (IPv4 only)", bytes(zero),
           "accepted")
    bad = bytearray(zero)
    bad[26:28] = b"\x12\x34"
    yield ("ipv4-udp-bad-checksum", "RFC 768: a wrong checksum (not verified: the kernel "
           "checksums what it writes to the TUN)", bytes(bad), None)
    six = bytearray(bytes(IPv6(src="fd00::1", dst="fd00::9") / UDP(sport=50000, dport=53)
                          / b"q"))
    six[46:48] = b"\0\0"
    yield ("ipv6-udp-zero-checksum", "RFC 8200 §8.1: IPv6 UDP must carry a checksum",
           bytes(six), DropReason.BAD_UDP_CHECKSUM.name)
    for length in (0, 7, 10, 200):
        lying = bytearray(bytes(IP(src=APP, dst=VIP) / UDP(sport=50000, dport=53) / b"q"))
        lying[24:26] = struct.pack("!H", length)
        yield (f"ipv4-udp-length-{length}", "RFC 768: a length field that lies", bytes(lying),
               DropReason.BAD_UDP_LENGTH.name)
    icmp = "RFC 792 message, built with scapy"
    for kind, code in ((8, 0), (0, 0), (3, 0), (3, 1), (3, 3), (3, 4), (3, 13), (11, 0),
                       (11, 1), (5, 1), (12, 0), (13, 0), (42, 0)):
        yield (f"ipv4-icmp-{kind}-{code}", f"{icmp}: type {kind} code {code}",
               bytes(IP(src=APP, dst=VIP) / ICMP(type=kind, code=code) / b"abcdefgh"), None)
    for flags, frag in (("MF", 0), ("", 100), ("MF", 100), ("DF", 0)):
        frag_packet = bytes(IP(src=APP, dst=VIP, flags=flags, frag=frag)
                            / UDP(sport=50000, dport=53) / b"q")
        yield (f"ipv4-fragment-{flags or 'none'}-{frag}", "RFC 791 §3.2: fragmentation fields",
               frag_packet, "accepted" if frag == 0 and flags != "MF"
               else DropReason.FRAGMENT.name)
    yield ("ipv4-options-router-alert", "RFC 2113 router alert (IGMP, RSVP senders)",
           bytes(IP(src=APP, dst=VIP, options=[IPOption_Router_Alert()])
                 / UDP(sport=50000, dport=53) / b"q"), None)
    yield ("ipv4-options-nop-padding", "RFC 791 §3.1: NOP options",
           bytes(IP(src=APP, dst=VIP, options=[IPOption_NOP()] * 4)
                 / UDP(sport=50000, dport=53) / b"q"), None)
    for version in (0, 5, 7, 15):
        raw = bytearray(bytes(IP(src=APP, dst=VIP) / TCP(sport=40000, dport=443)))
        raw[0] = (version << 4) | 5
        yield (f"ip-version-{version}", "RFC 791 §3.1: a version that is neither 4 nor 6",
               bytes(raw), DropReason.BAD_VERSION.name)
    for ihl in (0, 1, 4):
        raw = bytearray(bytes(IP(src=APP, dst=VIP) / TCP(sport=40000, dport=443)))
        raw[0] = 0x40 | ihl
        yield (f"ipv4-ihl-{ihl}", "RFC 791 §3.1: IHL below the minimum of 5", bytes(raw),
               DropReason.BAD_IHL.name)
    for total in (0, 19, 41, 1500, 65535):
        raw = bytearray(bytes(IP(src=APP, dst=VIP) / TCP(sport=40000, dport=443)))
        raw[2:4] = struct.pack("!H", total)
        yield (f"ipv4-total-length-{total}", "RFC 791 §3.1: a total length that lies",
               _fix_ip_checksum(raw), DropReason.BAD_TOTAL_LENGTH.name)
    raw = bytearray(bytes(IP(src=APP, dst=VIP) / TCP(sport=40000, dport=443)))
    raw[10] ^= 0xFF
    yield ("ipv4-bad-header-checksum", "RFC 791 §3.1: header checksum wrong", bytes(raw),
           DropReason.BAD_IP_CHECKSUM.name)
    for ttl in (0, 1, 255):
        yield (f"ipv4-ttl-{ttl}", "RFC 791 §3.1: TTL values",
               bytes(IP(src=APP, dst=VIP, ttl=ttl) / TCP(sport=40000, dport=443)), "accepted")
    for proto, name in ((2, "igmp"), (47, "gre"), (50, "esp"), (132, "sctp"), (89, "ospf"),
                        (255, "reserved")):
        yield (f"ipv4-proto-{name}", f"IANA protocol {proto} ({name}), built with scapy",
               bytes(IP(src=APP, dst=VIP, proto=proto) / Raw(b"\0" * 24)),
               DropReason.UNSUPPORTED_PROTOCOL.name)
    v6 = "RFC 8200 packet, built with scapy"
    src6, dst6 = "fd00::1", "fd00::9"
    yield ("ipv6-tcp-syn", v6, bytes(IPv6(src=src6, dst=dst6) / TCP(sport=40000, dport=443,
                                                                    flags="S")), None)
    yield ("ipv6-udp", v6, bytes(IPv6(src=src6, dst=dst6) / UDP(sport=50000, dport=53)
                                 / b"q"), None)
    yield ("ipv6-icmpv6-echo", f"{v6}: RFC 4443 echo request",
           bytes(IPv6(src=src6, dst=dst6) / ICMPv6EchoRequest()), None)
    for ext, name in ((IPv6ExtHdrHopByHop(), "hop-by-hop"), (IPv6ExtHdrDestOpt(), "dest-opts"),
                      (IPv6ExtHdrRouting(), "routing"), (IPv6ExtHdrFragment(), "fragment")):
        yield (f"ipv6-ext-{name}", f"RFC 8200 §4: {name} extension header",
               bytes(IPv6(src=src6, dst=dst6) / ext / UDP(sport=50000, dport=53) / b"q"),
               DropReason.FRAGMENT.name if name == "fragment"
               else DropReason.IPV6_EXTENSION.name)
    plen = bytearray(bytes(IPv6(src=src6, dst=dst6) / UDP(sport=50000, dport=53) / b"q"))
    plen[4:6] = struct.pack("!H", 500)
    yield ("ipv6-payload-length-lies", "RFC 8200 §3: payload length past the end",
           bytes(plen), None)
    truncated = {"tcp-syn": bytes(IP(src=APP, dst=VIP) / TCP(sport=40000, dport=443, flags="S")),
                 "udp-dns": bytes(IP(src=APP, dst=DNS) / UDP(sport=50000, dport=53) / b"query"),
                 "ipv6-tcp": bytes(IPv6(src=src6, dst=dst6) / TCP(sport=40000, dport=443))}
    for name, whole in truncated.items():
        for cut in (0, 1, 4, 19, 20, 21, 27, 33, 39):
            if cut < len(whole):
                yield (f"truncated-{name}-{cut}", "a packet cut short (a TUN read of a "
                       f"partial frame), {cut} of {len(whole)} bytes", whole[:cut], None)
    for tos in (0x00, 0x01, 0x02, 0x03, 0xB8, 0x28):
        yield (f"ipv4-tos-{tos:#04x}", "RFC 2474 DSCP / RFC 3168 ECN codepoints in the TOS byte",
               bytes(IP(src=APP, dst=VIP, tos=tos) / TCP(sport=40000, dport=443, flags="S")),
               "accepted")
    for flags in ("S", "SA", "A", "FA", "R", "PA"):
        yield (f"ipv6-tcp-{flags}", f"{v6}: TCP flags {flags}",
               bytes(IPv6(src=src6, dst=dst6) / TCP(sport=40000, dport=443, flags=flags)), None)
    for hlim in (0, 1, 64, 255):
        yield (f"ipv6-hop-limit-{hlim}", f"{v6}: hop limit {hlim}",
               bytes(IPv6(src=src6, dst=dst6, hlim=hlim) / UDP(sport=50000, dport=53) / b"q"),
               None)
    for nh, name in ((58, "icmpv6-raw"), (132, "sctp"), (59, "no-next-header")):
        yield (f"ipv6-nh-{name}", f"RFC 8200 §3: next header {nh} ({name})",
               bytes(IPv6(src=src6, dst=dst6, nh=nh) / Raw(b"\0" * 16)), None)
    icmp_echo = bytes(IP(src=APP, dst=VIP) / ICMP(type=8) / b"ping-data")
    for cut in (20, 21, 24, 27):
        yield (f"truncated-icmp-{cut}", f"an ICMP message cut short, {cut} bytes",
               icmp_echo[:cut], None)
    for ports in ((1, 1), (65535, 65535), (1024, 53)):
        yield (f"ipv4-udp-ports-{ports[0]}-{ports[1]}", f"{udp}: edge port numbers",
               bytes(IP(src=APP, dst=VIP) / UDP(sport=ports[0], dport=ports[1]) / b"q"),
               "accepted")


def dns() -> Iterator[Entry]:
    names = ["llm.private.test", "LLM.Private.Test", "llm.private.test.", "gpu1.models.test",
             "deep.er.models.test", "models.test", "private.test", "other.private.test",
             "example.com", "localhost", "llm", "xn--bcher-kva.example", "_sip._tcp.example.com",
             "a" * 63 + ".test", ".".join(["b" * 49] * 5), "1.0.64.100.in-addr.arpa"]
    types = ["A", "AAAA", "ANY", "MX", "TXT", "PTR", "SRV", "HTTPS", "CNAME", "NS", "SOA"]
    for name in names:
        for qtype in types:
            yield (f"q-{qtype}-{name[:40]}", f"RFC 1035 §4.1.2 question ({qtype}) as "
                   "getaddrinfo/dig/resolved ask it, built with dnslib",
                   DNSRecord.question(name, qtype).pack(), None)
    base = DNSRecord.question("llm.private.test").pack()
    for vip in range(3, 9):
        yield (f"ptr-vip-{vip}", "RFC 1035 §3.5 reverse lookup of one of our VIPs",
               DNSRecord.question(f"{vip}.0.64.100.in-addr.arpa", "PTR").pack(), None)
    edns = DNSRecord.question("llm.private.test")
    edns.add_ar(EDNS0(udp_len=4096, flags="do"))
    yield ("edns-do-4096", "RFC 6891 OPT record with DO (systemd-resolved, unbound)",
           edns.pack(), None)
    for opcode in (1, 2, 4, 5, 15):
        message = DNSRecord(DNSHeader(id=7, opcode=opcode, rd=1),
                            q=DNSQuestion("llm.private.test"))
        yield (f"opcode-{opcode}", "RFC 1035 §4.1.1 / RFC 2136: an opcode other than QUERY",
               message.pack(), None)
    for qclass in (3, 4, 254, 255):  # CHAOS, Hesiod, NONE, ANY
        message = DNSRecord(DNSHeader(id=8, rd=1),
                            q=DNSQuestion("llm.private.test", QTYPE.A, qclass))
        yield (f"class-{qclass}", "RFC 1035 §3.2.4: a class other than IN (CHAOS probes)",
               message.pack(), None)
    response = DNSRecord.question("llm.private.test").reply().pack()
    yield ("qr-set", "RFC 1035 §4.1.1: a response sent to the server (reflection)", response,
           "not_a_query")
    yield ("header-only", "RFC 1035 §4.1.1: a header with no question", base[:12], None)
    yield ("empty", "a zero-length datagram", b"", None)
    two = bytearray(base)
    two[4:6] = b"\0\x02"
    yield ("qdcount-2", "RFC 1035: two questions in one query (servers refuse)", bytes(two), None)
    zero = bytearray(base)
    zero[4:6] = b"\0\0"
    yield ("qdcount-0", "RFC 1035: QDCOUNT 0", bytes(zero), None)
    loop = base[:12] + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    yield ("pointer-loop", "RFC 1035 §4.1.4: a compression pointer to itself", loop, None)
    forward = base[:12] + b"\xc0\x20" + b"\x00\x01\x00\x01"
    yield ("pointer-forward", "RFC 1035 §4.1.4: a pointer past the message", forward, None)
    yield ("label-64", "RFC 1035 §2.3.4: a 64-byte label (limit 63)",
           base[:12] + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", None)
    yield ("name-over-255", "RFC 1035 §2.3.4: a name over 255 bytes",
           base[:12] + (b"\x3f" + b"c" * 63) * 5 + b"\x00\x00\x01\x00\x01", None)
    for cut in (13, 20, 30, len(base) - 2, len(base) - 1):
        yield (f"truncated-{cut}", "a question cut short", base[:cut], None)
    tc = bytearray(base)
    tc[2] |= 0x02
    yield ("tc-bit", "RFC 1035 §4.1.1: TC set in a query", bytes(tc), None)
    yield ("trailing-garbage", "a query with bytes after the question", base + b"\xde\xad",
           None)
    yield ("non-utf8-label", "a label of bytes that are not UTF-8 (fuzzers, attackers)",
           base[:12] + b"\x03\xff\xfe\xfd\x04test\x00\x00\x01\x00\x01", None)


def _outcome_packet(data: bytes) -> str:
    parsed = parse(data)
    return parsed.name if isinstance(parsed, DropReason) else "accepted"


def _outcome_dns(data: bytes) -> str:
    outcome = dns_responder().handle(data, 1.0)
    return outcome.reason if isinstance(outcome, Drop) else type(outcome).__name__.lower()


def write(name: str, entries: Iterator[Entry], outcome: object) -> int:
    lines, seen = [], set()
    for entry_name, source, data, known in entries:
        assert entry_name not in seen, entry_name
        seen.add(entry_name)
        got = outcome(data)  # type: ignore[operator]
        assert known is None or got == known, f"{entry_name}: {got}, the RFC says {known}"
        lines.append(json.dumps({"name": entry_name, "source": source, "hex": data.hex(),
                                 "expect": got}))
    (HERE / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return len(lines)


if __name__ == "__main__":
    print("packets:", write("packets", packets(), _outcome_packet))
    print("dns:", write("dns", dns(), _outcome_dns))
