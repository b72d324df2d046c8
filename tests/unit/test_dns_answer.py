"""DNS responder: policy table, malformed corpus, upstream validation (dnslib as the oracle)."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, ip_network

import pytest
from dnslib import AAAA, CLASS, QTYPE, RCODE, RR, A, DNSHeader, DNSQuestion, DNSRecord

from tunneler.dns.answer import (
    DnsResponder,
    Drop,
    Forward,
    Reply,
    check_upstream_reply,
    read_name,
    servfail_for,
)
from tunneler.dns.pool import VipPool
from tunneler.errors import MalformedMessage

VIP_NET = ip_network("100.64.0.0/10")


def responder(*, upstream: bool = True, cidr: str = "100.64.0.1/10") -> DnsResponder:
    dns = DnsResponder(VipPool(cidr, wildcard_quota=4), upstream=upstream)
    dns.set_intercepts(
        {"llm.private.test", "api.ziti"},
        {"ziti", "corp.internal"},
        0.0,
        local_domains={"private.test"},
    )
    return dns


def query(name: str, qtype: str = "A", *, rd: bool = True, qclass: str = "IN") -> bytes:
    record = DNSRecord(
        DNSHeader(id=0x1234, rd=int(rd)),
        q=DNSQuestion(name, getattr(QTYPE, qtype), getattr(CLASS, qclass)),
    )
    return bytes(record.pack())


def reply_of(outcome: object) -> DNSRecord:
    assert isinstance(outcome, Reply), outcome
    decoded = DNSRecord.parse(outcome.data)
    assert decoded.header.id == 0x1234 and decoded.header.qr == 1
    return decoded


POLICY = [
    # (name, qtype, rcode, number of answers)
    ("llm.private.test", "A", "NOERROR", 1),
    ("LLM.Private.TEST", "A", "NOERROR", 1),
    ("llm.private.test", "AAAA", "NOERROR", 0),
    ("llm.private.test", "MX", "NOERROR", 0),
    ("x.y.ziti", "A", "NOERROR", 1),
    ("ziti", "A", "NOERROR", 1),
    ("host.corp.internal", "TXT", "NOERROR", 0),
    ("gone.private.test", "A", "NXDOMAIN", 0),
    ("gone.private.test", "AAAA", "NXDOMAIN", 0),
    ("private.test", "A", "NXDOMAIN", 0),
    ("llm.private.test", "AXFR", "REFUSED", 0),
    ("example.com", "IXFR", "REFUSED", 0),
    ("llm.private.test", "ANY", "NOTIMP", 0),
    ("example.com", "ANY", "NOTIMP", 0),
]


@pytest.mark.parametrize(("name", "qtype", "rcode", "answers"), POLICY)
def test_policy_table(name: str, qtype: str, rcode: str, answers: int) -> None:
    decoded = reply_of(responder().handle(query(name, qtype), 1.0))
    assert RCODE[decoded.header.rcode] == rcode
    assert len(decoded.rr) == answers
    assert str(decoded.q.qname).rstrip(".") == name  # question echoed with the client's case
    if (rcode == "NOERROR" and answers == 0) or rcode == "NXDOMAIN":
        assert decoded.auth[0].rtype == QTYPE.SOA and decoded.auth[0].ttl == 10


def test_a_answers_come_from_the_pool_and_are_stable() -> None:
    dns = responder()
    first = reply_of(dns.handle(query("llm.private.test"), 1.0))
    again = reply_of(dns.handle(query("LLM.private.test."), 2.0))
    assert first.rr[0].rdata == again.rr[0].rdata
    vip = IPv4Address(str(first.rr[0].rdata))
    assert vip == IPv4Address("100.64.0.3") and first.rr[0].ttl == 60
    assert dns.pool.hostname_for(vip) == "llm.private.test"
    assert first.header.aa == 1 and first.header.ra == 1 and first.header.rd == 1


def test_not_intercepted_is_forwarded_or_refused() -> None:
    outcome = responder().handle(query("example.com", "MX"), 1.0)
    assert outcome == Forward(query("example.com", "MX"), "example.com", QTYPE.MX)
    no_rd = reply_of(responder().handle(query("example.com", rd=False), 1.0))
    assert RCODE[no_rd.header.rcode] == "REFUSED"
    refused = reply_of(responder(upstream=False).handle(query("example.com"), 1.0))
    assert RCODE[refused.header.rcode] == "REFUSED" and refused.header.ra == 0


def test_class_not_in_is_refused() -> None:
    decoded = reply_of(responder().handle(query("llm.private.test", qclass="CH"), 1.0))
    assert RCODE[decoded.header.rcode] == "REFUSED"


@pytest.mark.parametrize("opcode", range(1, 16))
def test_opcodes_other_than_query_are_notimp(opcode: int) -> None:
    message = bytearray(query("llm.private.test"))
    message[2] = (message[2] & 0x87) | (opcode << 3)
    decoded = reply_of(responder().handle(bytes(message), 1.0))
    assert RCODE[decoded.header.rcode] == "NOTIMP" and decoded.header.opcode == opcode


def test_pool_exhaustion_answers_servfail() -> None:
    dns = responder(cidr="10.0.0.1/29")  # four VIPs, wildcard quota 4
    for n in range(4):
        assert RCODE[reply_of(dns.handle(query(f"h{n}.ziti"), 1.0)).header.rcode] == "NOERROR"
    dns.pool.acquire(IPv4Address("10.0.0.3"), 1.0)
    for n in range(1, 4):
        dns.pool.acquire(IPv4Address(f"10.0.0.{3 + n}"), 1.0)
    decoded = reply_of(dns.handle(query("h9.ziti"), 1.0))
    assert RCODE[decoded.header.rcode] == "SERVFAIL"


def test_removed_service_answers_nxdomain_and_frees_vip() -> None:
    dns = responder()
    vip = IPv4Address(str(reply_of(dns.handle(query("api.ziti"), 1.0)).rr[0].rdata))
    wild = reply_of(dns.handle(query("a.corp.internal"), 1.0))
    dns.set_intercepts({"llm.private.test"}, set(), 5.0)
    for name in ("api.ziti", "a.corp.internal", "b.corp.internal"):
        decoded = reply_of(dns.handle(query(name), 6.0))
        assert RCODE[decoded.header.rcode] == "NXDOMAIN", name
    assert dns.pool.lookup("api.ziti") is None and dns.pool.hostname_for(vip) is None
    assert wild.rr


def test_ptr_for_vips() -> None:
    dns = responder()
    dns.handle(query("llm.private.test"), 1.0)
    decoded = reply_of(dns.handle(query("3.0.64.100.in-addr.arpa", "PTR"), 1.0))
    assert str(decoded.rr[0].rdata) == "llm.private.test."
    missing = reply_of(dns.handle(query("99.0.64.100.in-addr.arpa", "PTR"), 1.0))
    assert RCODE[missing.header.rcode] == "NXDOMAIN"
    outside = dns.handle(query("1.1.168.192.in-addr.arpa", "PTR"), 1.0)
    assert isinstance(outside, Forward)
    bogus = dns.handle(query("999.0.64.100.in-addr.arpa", "PTR"), 1.0)
    assert isinstance(bogus, Forward)


def header(qd: int = 1, flags: int = 0x0100) -> bytes:
    return struct.pack("!HHHHHH", 0x1234, flags, qd, 0, 0, 0)


QUESTION = b"\x03llm\x07private\x04test\x00\x00\x01\x00\x01"

# name -> (message, expected: "drop:<reason>" or "rcode:<NAME>")
MALFORMED = {
    **{f"header_{n}": (header()[:n], "drop:short_header") for n in range(12)},
    "qr_set": (header(flags=0x8100) + QUESTION, "drop:not_a_query"),
    "qdcount_0": (header(qd=0), "rcode:FORMERR"),
    "qdcount_2": (header(qd=2) + QUESTION + QUESTION, "rcode:FORMERR"),
    "qdcount_65535": (header(qd=65535) + QUESTION, "rcode:FORMERR"),
    "self_pointer": (header() + b"\xc0\x0c\x00\x01\x00\x01", "drop:malformed"),
    "pointer_to_offset_0": (header() + b"\xc0\x00\x00\x01\x00\x01", "drop:malformed"),
    "two_cycle": (header() + b"\x01a\xc0\x0e\x00\x01\x00\x01", "drop:malformed"),
    "forward_pointer": (header() + b"\xc0\x20" + bytes(40), "drop:malformed"),
    "pointer_past_end": (header() + b"\xc3\xff\x00\x01\x00\x01", "drop:malformed"),
    "truncated_pointer": (header() + b"\xc0", "drop:malformed"),
    "reserved_label_40": (header() + b"\x41a\x00\x00\x01\x00\x01", "drop:malformed"),
    "reserved_label_80": (header() + b"\x81a\x00\x00\x01\x00\x01", "drop:malformed"),
    "label_64": (header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", "drop:malformed"),
    "missing_terminator": (header() + b"\x03llm", "drop:malformed"),
    "truncated_qtype": (header() + b"\x03llm\x00\x00", "drop:malformed"),
    "name_256": (header() + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01", "drop:malformed"),
    "too_large_4097": (header() + QUESTION + bytes(4097 - 12 - len(QUESTION)), "drop:too_large"),
    "root_name": (header() + b"\x00\x00\x01\x00\x01", "rcode:NONE"),
    "name_255_ok": (
        header() + (b"\x3f" + b"a" * 63) * 3 + b"\x3d" + b"a" * 61 + b"\x00" + b"\x00\x01\x00\x01",
        "rcode:NONE",
    ),
    "trailing_garbage": (header() + QUESTION + b"garbage", "rcode:NOERROR"),
    "nul_in_label_under_domain": (
        header() + b"\x03a\x00b\x04ziti\x00\x00\x01\x00\x01",
        "rcode:NXDOMAIN",
    ),
    "dot_in_label_under_domain": (
        header() + b"\x03a.b\x07private\x04test\x00\x00\x01\x00\x01",
        "rcode:NXDOMAIN",
    ),
    "pointer_in_question_loop": (
        header() + b"\x01a\x01b\xc0\x0e\x00\x01\x00\x01",
        "drop:malformed",
    ),
    "pointer_into_header": (header() + b"\xc0\x02\x00\x01\x00\x01", "rcode:NONE"),
    "wildcard_apex": (
        header() + b"\x04ziti\x00\x00\x01\x00\x01",
        "rcode:NOERROR",
    ),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_corpus(name: str) -> None:
    message, expected = MALFORMED[name]
    dns = responder(upstream=False)
    outcome = dns.handle(message, 1.0)
    kind, _, detail = expected.partition(":")
    if kind == "drop":
        assert outcome == Drop(detail)
        assert dns.counters[detail] == 1
        return
    assert isinstance(outcome, Reply)
    decoded = DNSRecord.parse(outcome.data)
    assert decoded.header.id == 0x1234
    if detail != "NONE":
        assert RCODE[decoded.header.rcode] == detail
    else:
        assert RCODE[decoded.header.rcode] == "REFUSED"


def test_read_name_accepts_backward_pointers_and_limits_hops() -> None:
    message = header() + b"\x04ziti\x00" + b"\x03api\xc0\x0c"
    assert read_name(message, 18) == ((b"api", b"ziti"), 24)
    chain = bytearray(header() + b"\x00")
    for _ in range(127):
        chain += struct.pack("!H", 0xC000 | (len(chain) - 2 if len(chain) > 13 else 12))
    with pytest.raises(MalformedMessage):
        read_name(bytes(chain), len(chain) - 2)
    short_chain = bytes(chain[: 13 + 2 * 126])
    assert read_name(short_chain, len(short_chain) - 2)[0] == ()


def upstream_reply(q: bytes, *answers: RR, ident: int | None = None) -> bytes:
    record = DNSRecord.parse(q).reply()
    if ident is not None:
        record.header.id = ident
    for answer in answers:
        record.add_answer(answer)
    return bytes(record.pack())


def test_upstream_reply_validation() -> None:
    q = query("Example.COM")
    good = upstream_reply(q, RR("example.com", rdata=A("93.184.216.34")))
    assert check_upstream_reply(q, good, [VIP_NET]) == Reply(good)
    assert check_upstream_reply(q, upstream_reply(q, ident=1), [VIP_NET]) == Drop(
        "upstream_mismatch"
    )
    other = upstream_reply(query("example.org"))
    assert check_upstream_reply(q, other, [VIP_NET]) == Drop("upstream_mismatch")
    assert check_upstream_reply(q, q, [VIP_NET]) == Drop("upstream_mismatch")  # QR=0
    assert check_upstream_reply(q, good[:-3], [VIP_NET]) == Drop("upstream_malformed")
    assert check_upstream_reply(q, b"\x12", [VIP_NET]) == Drop("upstream_malformed")


@pytest.mark.parametrize("rdata", [A("100.64.0.3"), A("100.127.255.255"), AAAA("fd00::1")])
def test_upstream_rebinding_is_refused(rdata: object) -> None:
    q = query("evil.example")
    bad = upstream_reply(
        q,
        RR("evil.example", rdata=A("1.2.3.4")),
        RR("evil.example", rtype=QTYPE.A if isinstance(rdata, A) else QTYPE.AAAA, rdata=rdata),
    )
    outcome = check_upstream_reply(q, bad, [VIP_NET, ip_network("fd00::/8")])
    decoded = reply_of(outcome)
    assert RCODE[decoded.header.rcode] == "SERVFAIL" and not decoded.rr


def test_servfail_for_undecodable_query_is_none() -> None:
    assert servfail_for(b"\x00") is None
