"""Property tests (hypothesis) for the sans-IO cores: no untyped failure on any input, and
every packet the cores emit re-parses with valid checksums."""

from __future__ import annotations

from ipaddress import IPv4Address, ip_network

from dnslib import DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP

from tunneler.dns.answer import (
    DnsResponder,
    Drop,
    Forward,
    Reply,
    check_upstream_reply,
    read_question,
)
from tunneler.dns.pool import VipPool
from tunneler.nat import NatDrop, NatFlow, TcpNat
from tunneler.packet import DropReason, Parsed, parse
from tunneler.packet.build import build_icmp_port_unreachable, build_tcp_rst
from tunneler.packet.checksum import internet_checksum, ones_sum, pseudo_header_sum

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T, N, VIP, L = "100.64.0.1", "100.127.255.254", "100.64.0.9", 1080
T_INT, N_INT = int(IPv4Address(T)), int(IPv4Address(N))

SEEDS = [
    bytes(IP(src=T, dst=VIP) / TCP(sport=40000, dport=443, flags="S", seq=7)),
    bytes(IP(src=T, dst=VIP) / TCP(sport=40000, dport=443, flags="A") / b"payload"),
    bytes(IP(src=T, dst=VIP) / TCP(sport=40000, dport=443, flags="FA")),
    bytes(IP(src=T, dst=VIP) / TCP(sport=40000, dport=443, flags="R")),
    bytes(IP(src=T, dst=N) / TCP(sport=L, dport=20000, flags="SA")),
    bytes(IP(src=T, dst="100.64.0.2") / UDP(sport=5353, dport=53) / b"\x12\x34\x01\x00"),
]


def l4_valid(packet: bytes, parsed: Parsed) -> bool:
    segment = packet[parsed.l4_offset :]
    if parsed.proto not in (6, 17):
        return ones_sum(segment) == 0xFFFF
    pseudo = pseudo_header_sum(parsed.src, parsed.dst, parsed.proto, len(segment))
    return internet_checksum(segment, pseudo) == 0


def assert_emitted_ok(packet: bytes) -> None:
    parsed = parse(packet)
    assert isinstance(parsed, Parsed), parsed
    assert l4_valid(packet, parsed)


@SETTINGS
@given(st.binary(max_size=120))
def test_parse_random_bytes(data: bytes) -> None:
    result = parse(data)
    assert isinstance(result, (Parsed, DropReason))


mutations = st.lists(
    st.tuples(st.integers(min_value=0, max_value=80), st.integers(0, 255)), max_size=4
)


@SETTINGS
@given(st.sampled_from(SEEDS), mutations, st.integers(min_value=-10, max_value=10))
def test_mutated_packets_through_parse_nat_and_builders(
    seed: bytes, edits: list[tuple[int, int]], resize: int
) -> None:
    buf = bytearray(seed)
    for offset, value in edits:
        if offset < len(buf):
            buf[offset] = value
    buf = buf[: len(buf) + resize] if resize < 0 else buf + bytes(resize)
    parsed = parse(buf)
    if isinstance(parsed, DropReason):
        return
    was_valid = l4_valid(bytes(buf), parsed)
    for reply in (build_tcp_rst(buf, parsed), build_icmp_port_unreachable(buf, parsed)):
        if reply is not None:
            assert_emitted_ok(reply)
    nat = TcpNat(T_INT, N_INT, L)
    before = len(buf)
    translate = nat.inbound if nat.is_inbound(parsed) else nat.outbound  # as the engine does
    result = translate(buf, parsed, 0.0)
    assert isinstance(result, NatFlow | NatDrop)
    if isinstance(result, NatFlow):
        assert len(buf) == before
        again = parse(buf)
        assert isinstance(again, Parsed)
        assert l4_valid(bytes(buf), again) == was_valid


DNS_SEEDS = [
    bytes(DNSRecord.question("llm.private.test").pack()),
    bytes(DNSRecord.question("x.y.ziti", "AAAA").pack()),
    bytes(DNSRecord.question("example.com", "MX").pack()),
    bytes(DNSRecord.question("3.0.64.100.in-addr.arpa", "PTR").pack()),
]


def make_responder() -> DnsResponder:
    dns = DnsResponder(VipPool("10.0.0.1/28", wildcard_quota=3), upstream=True)
    dns.set_intercepts({"llm.private.test"}, {"ziti"}, 0.0, local_domains={"private.test"})
    return dns


def check_outcome(dns: DnsResponder, message: bytes) -> None:
    outcome = dns.handle(message, 1.0)
    assert isinstance(outcome, (Reply, Forward, Drop))
    if isinstance(outcome, Reply) and outcome.data[5] == 0:
        assert len(outcome.data) == 12  # header-only NOTIMP / FORMERR
    elif isinstance(outcome, Reply):
        # our own bounded decoder: dnslib refuses replies echoing non-UTF-8 labels
        question, qdcount, end = read_question(outcome.data)
        assert question.ident == int.from_bytes(message[:2], "big")
        assert question.flags & 0x8000
        assert qdcount == 1 and end <= len(outcome.data) <= 512
    names = [dns.pool.hostname_for(IPv4Address(f"10.0.0.{n}")) for n in range(3, 15)]
    assert all(n is None or n == "llm.private.test" or n.endswith("ziti") for n in names)


@SETTINGS
@given(st.binary(max_size=64))
def test_dns_random_bytes(data: bytes) -> None:
    check_outcome(make_responder(), data)


@SETTINGS
@given(st.sampled_from(DNS_SEEDS), mutations, st.integers(min_value=-6, max_value=6))
def test_dns_mutated_queries(seed: bytes, edits: list[tuple[int, int]], resize: int) -> None:
    buf = bytearray(seed)
    for offset, value in edits:
        if offset < len(buf):
            buf[offset] = value
    buf = buf[: len(buf) + resize] if resize < 0 else buf + bytes(resize)
    check_outcome(make_responder(), bytes(buf))


@SETTINGS
@given(st.sampled_from(DNS_SEEDS), st.binary(max_size=80), mutations)
def test_upstream_check_never_raises(
    query: bytes, tail: bytes, edits: list[tuple[int, int]]
) -> None:
    reply = bytearray(DNSRecord.parse(query).reply().pack()) + tail
    for offset, value in edits:
        if offset < len(reply):
            reply[offset] = value
    outcome = check_upstream_reply(query, bytes(reply), [ip_network("100.64.0.0/10")])
    assert isinstance(outcome, (Reply, Drop))

