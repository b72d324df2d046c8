"""Sans-IO DNS responder for intercepted names, and validation of forwarded upstream replies.

``DnsResponder.handle(query, now)`` returns ``Reply(data)`` (send it back), ``Forward(query,
qname, qtype)`` (send the query to the upstream resolver, then pass the answer through
``check_upstream_reply``) or ``Drop(reason)`` (send nothing). It never raises for any input.
The question is decoded by a bounded parser (reliability.md TM-03: ≤ 126 compression hops,
pointers must point backwards, labels ≤ 63, names ≤ 255 octets, queries ≤ 4096 bytes).

Policy (reliability.md §4.3, openziti-protocol.md §7.2):

======================================================  ==================================
query                                                    answer
======================================================  ==================================
header < 12 bytes, QR=1, > 4096 bytes, bad question      Drop (counted by reason)
opcode ≠ QUERY                                           NOTIMP
QDCOUNT ≠ 1                                              FORMERR
AXFR / IXFR                                              REFUSED
ANY                                                      NOTIMP
class ≠ IN                                               REFUSED
A, intercepted name (exact or ``*.domain``)              NOERROR, VIP from the pool, TTL 60
other types, intercepted name                            NOERROR, no data, SOA (neg. TTL 10)
A for an intercepted name, pool exhausted                SERVFAIL
name under a local/wildcard domain, or a retired name    NXDOMAIN (never forwarded, TM-07)
PTR for an address in the VIP range                      the hostname, or NXDOMAIN
anything else, upstream configured and RD set            Forward
anything else                                            REFUSED
======================================================  ==================================

``set_intercepts(hostnames, wildcard_domains, now, local_domains=())`` replaces the intercepted
names (normalized lowercase, wildcards without ``*.``) and retires pool entries no longer
covered. ``check_upstream_reply(query, reply, forbidden)`` returns ``Reply(reply)`` when the
reply matches the query (ID, QR, question compared case-insensitively) and carries no A/AAAA
address inside ``forbidden`` networks, ``Reply(SERVFAIL)`` on such an address (rebinding,
TM-06), and ``Drop`` when it does not belong to the query or is malformed.
"""

from __future__ import annotations

import re
import struct
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from tunneler.dns.pool import VipPool
from tunneler.errors import MalformedMessage, PoolExhausted

MAX_QUERY = 4096
MAX_POINTER_HOPS = 126
MAX_NAME = 255
VIP_TTL = 60
NEGATIVE_TTL = 10
RETIRED_MEMORY = 4096

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
TYPE_A, TYPE_SOA, TYPE_PTR, TYPE_AAAA = 1, 6, 12, 28
TYPE_IXFR, TYPE_AXFR, TYPE_ANY = 251, 252, 255
CLASS_IN = 1
_QR, _AA, _RD, _RA = 0x8000, 0x0400, 0x0100, 0x0080

_HEADER = struct.Struct("!HHHHHH")
_TYPE_CLASS = struct.Struct("!HH")
_RR_FIXED = struct.Struct("!HHIH")
_SOA_RDATA = b"\x00\x00" + struct.pack("!IIIII", 1, 3600, 600, 86400, NEGATIVE_TTL)
_SAFE_LABEL = re.compile(rb"[A-Za-z0-9_-]{1,63}")
_PTR_SUFFIX = (b"in-addr", b"arpa")


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``data`` back to the client."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Forward:
    """Send ``query`` to the upstream resolver (then validate with ``check_upstream_reply``)."""

    query: bytes
    qname: str
    qtype: int


@dataclass(frozen=True, slots=True)
class Drop:
    """Send nothing; ``reason`` is a stable counter name."""

    reason: str


Outcome = Reply | Forward | Drop


@dataclass(frozen=True, slots=True)
class Question:
    """The header fields and the single question of a message."""

    ident: int
    flags: int
    labels: tuple[bytes, ...]
    qtype: int
    qclass: int

    def wire(self) -> bytes:
        """The question section, uncompressed, with the client's letter case."""
        name = b"".join(bytes([len(label)]) + label for label in self.labels) + b"\x00"
        return name + _TYPE_CLASS.pack(self.qtype, self.qclass)

    def text(self) -> str:
        """The name in presentation form for logs and ``Forward`` (non-printables escaped)."""
        return ".".join(label.decode("ascii", "backslashreplace") for label in self.labels)


def read_name(data: bytes, offset: int) -> tuple[tuple[bytes, ...], int]:
    """Decode a (possibly compressed) name at ``offset``; return labels and the end offset.

    Raises:
        MalformedMessage: truncation, a forward or looping pointer, > 126 hops, a reserved
            label type, or a name over 255 octets.
    """
    labels: list[bytes] = []
    end = -1
    hops = 0
    octets = 1
    while True:
        if offset >= len(data):
            raise MalformedMessage("name runs past the end")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise MalformedMessage("truncated pointer")
            target = ((length & 0x3F) << 8) | data[offset + 1]
            hops += 1
            if target >= offset or hops > MAX_POINTER_HOPS:
                raise MalformedMessage("pointer loop or forward pointer")
            if end < 0:
                end = offset + 2
            offset = target
            continue
        if length & 0xC0:
            raise MalformedMessage("reserved label type")
        if length == 0:
            return tuple(labels), (end if end >= 0 else offset + 1)
        octets += length + 1
        if octets > MAX_NAME or offset + 1 + length > len(data):
            raise MalformedMessage("name too long or truncated")
        labels.append(data[offset + 1 : offset + 1 + length])
        offset += 1 + length


def read_question(data: bytes) -> tuple[Question, int, int]:
    """Decode the header and the first question; return it, QDCOUNT and the end offset."""
    if len(data) < _HEADER.size:
        raise MalformedMessage("short header")
    ident, flags, qdcount, _an, _ns, _ar = _HEADER.unpack_from(data)
    labels, offset = read_name(data, _HEADER.size)
    if offset + 4 > len(data):
        raise MalformedMessage("truncated question")
    qtype, qclass = _TYPE_CLASS.unpack_from(data, offset)
    return Question(ident, flags, labels, qtype, qclass), qdcount, offset + 4


def _header(ident: int, flags: int, rcode: int, counts: tuple[int, int, int, int]) -> bytes:
    return _HEADER.pack(ident, flags | _QR | rcode, *counts)


def _rr(rtype: int, ttl: int, rdata: bytes) -> bytes:
    return b"\xc0\x0c" + _RR_FIXED.pack(rtype, CLASS_IN, ttl, len(rdata)) + rdata


def _encode_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"


@dataclass(frozen=True)
class DnsTally:
    """What the responder decided so far, by outcome."""

    replies: int
    drops: int


class DnsResponder:
    """Answers queries for intercepted names from a ``VipPool``; see the module docstring."""

    def __init__(self, pool: VipPool, *, upstream: bool = False, ttl: int = VIP_TTL) -> None:
        self.pool = pool
        self.upstream = upstream
        self.ttl = ttl
        self.counters: Counter[str] = Counter()
        self._hostnames: frozenset[str] = frozenset()
        self._wildcards: frozenset[str] = frozenset()
        self._local_domains: frozenset[str] = frozenset()
        self._retired: OrderedDict[str, None] = OrderedDict()

    def set_intercepts(
        self,
        hostnames: Iterable[str],
        wildcard_domains: Iterable[str],
        now: float,
        local_domains: Iterable[str] = (),
    ) -> None:
        """Replace the intercepted names; names that disappear answer NXDOMAIN from now on."""
        hostnames, wildcards = frozenset(hostnames), frozenset(wildcard_domains)
        for gone in (self._hostnames - hostnames) | (self._wildcards - wildcards):
            self._retired[gone] = None
            self._retired.move_to_end(gone)
        while len(self._retired) > RETIRED_MEMORY:
            self._retired.popitem(last=False)
        self._hostnames, self._wildcards = hostnames, wildcards
        self._local_domains = frozenset(local_domains)
        self.pool.retain(lambda name: self._match(name.split("."))[0] is not None, now)

    def tally(self) -> DnsTally:
        """Queries answered here and dropped (every reason together); the rest were handed
        to the upstreams (the engine counts what became of them)."""
        replies, forwards = self.counters["reply"], self.counters["forward"]
        return DnsTally(replies, sum(self.counters.values()) - replies - forwards)

    def handle(self, query: bytes, now: float) -> Outcome:
        """Decide what to do with one query message."""
        outcome = self._decide(query, now)
        key = type(outcome).__name__.lower() if not isinstance(outcome, Drop) else outcome.reason
        self.counters[key] += 1
        return outcome

    def _decide(self, query: bytes, now: float) -> Outcome:
        if len(query) > MAX_QUERY:
            return Drop("too_large")
        if len(query) < _HEADER.size:
            return Drop("short_header")
        ident, flags = struct.unpack_from("!HH", query)
        if flags & _QR:
            return Drop("not_a_query")
        if flags & 0x7800:
            return Reply(_header(ident, flags & 0x7900, NOTIMP, (0, 0, 0, 0)))
        if struct.unpack_from("!H", query, 4)[0] != 1:
            return Reply(_header(ident, flags & _RD, FORMERR, (0, 0, 0, 0)))
        try:
            question, _qdcount, _end = read_question(query)
        except MalformedMessage:
            return Drop("malformed")
        return self._answer(question, query, now)

    def _answer(self, q: Question, query: bytes, now: float) -> Outcome:
        if q.qtype in (TYPE_AXFR, TYPE_IXFR):
            return self._reply(q, REFUSED)
        if q.qtype == TYPE_ANY:
            return self._reply(q, NOTIMP)
        if q.qclass != CLASS_IN:
            return self._reply(q, REFUSED)
        labels = [label.lower() for label in q.labels]
        name, wildcard, local = self._classify(labels)
        if name is not None:
            return self._intercepted(q, name, wildcard, now)
        if local:
            return self._reply(q, NXDOMAIN, authority=_rr(TYPE_SOA, NEGATIVE_TTL, _SOA_RDATA))
        if q.qtype == TYPE_PTR and tuple(labels[-2:]) == _PTR_SUFFIX:
            ptr = self._reverse(q, labels)
            if ptr is not None:
                return ptr
        if self.upstream and q.flags & _RD:
            return Forward(query, q.text(), q.qtype)
        return self._reply(q, REFUSED)

    def _intercepted(self, q: Question, name: str, wildcard: str | None, now: float) -> Outcome:
        if q.qtype != TYPE_A:
            return self._reply(q, NOERROR, authority=_rr(TYPE_SOA, NEGATIVE_TTL, _SOA_RDATA))
        try:
            vip = self.pool.assign(name, now, wildcard)
        except PoolExhausted:
            return self._reply(q, SERVFAIL)
        return self._reply(q, NOERROR, answer=_rr(TYPE_A, self.ttl, vip.packed))

    def _classify(self, labels: Sequence[bytes]) -> tuple[str | None, str | None, bool]:
        """Return (intercepted name, its wildcard domain, is under a local/retired domain)."""
        suffixes: list[str] = []
        for label in reversed(labels):
            if not _SAFE_LABEL.fullmatch(label):
                break
            suffixes.append(label.decode() + ("." + suffixes[-1] if suffixes else ""))
        full = suffixes[-1] if suffixes and len(suffixes) == len(labels) else None
        if full is not None:
            matched, wildcard = self._match(full.split("."))
            if matched is not None:
                return matched, wildcard, True
        local = any(
            s in self._wildcards or s in self._local_domains or s in self._retired for s in suffixes
        )
        return None, None, local

    def _match(self, parts: Sequence[str]) -> tuple[str | None, str | None]:
        """Return (name, wildcard) if ``parts`` form an intercepted name, else (None, None)."""
        name = ".".join(parts)
        if name in self._hostnames:
            return name, None
        for i in range(len(parts)):
            domain = ".".join(parts[i:])
            if domain in self._wildcards:
                return name, domain
        return None, None

    def _reverse(self, q: Question, labels: Sequence[bytes]) -> Reply | None:
        """Answer a PTR query for an address in the VIP range; None for other addresses."""
        octets = labels[:-2]
        if len(octets) != 4 or not all(o.isdigit() and len(o) <= 3 for o in octets):
            return None
        value = [int(o) for o in reversed(octets)]
        if max(value) > 255 or IPv4Address(bytes(value)) not in self.pool.network:
            return None
        hostname = self.pool.hostname_for(IPv4Address(bytes(value)))
        if hostname is None:
            return self._reply(q, NXDOMAIN)
        return self._reply(q, NOERROR, answer=_rr(TYPE_PTR, self.ttl, _encode_name(hostname)))

    def _reply(
        self, q: Question, rcode: int, *, answer: bytes = b"", authority: bytes = b""
    ) -> Reply:
        flags = (q.flags & _RD) | (_RA if self.upstream else 0)
        if rcode in (NOERROR, NXDOMAIN):
            flags |= _AA
        counts = (1, 1 if answer else 0, 1 if authority else 0, 0)
        return Reply(_header(q.ident, flags, rcode, counts) + q.wire() + answer + authority)


def servfail_for(query: bytes) -> bytes | None:
    """Return a SERVFAIL reply to ``query``, or None if the query cannot be decoded."""
    try:
        question, _qd, _end = read_question(query)
    except MalformedMessage:
        return None
    flags = question.flags & _RD
    return _header(question.ident, flags | _RA, SERVFAIL, (1, 0, 0, 0)) + question.wire()


def _skip_name(data: bytes, offset: int) -> int:
    """Return the offset after a name without following pointers."""
    while True:
        if offset >= len(data):
            raise MalformedMessage("name runs past the end")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            return offset + 2
        if length & 0xC0:
            raise MalformedMessage("reserved label type")
        if length == 0:
            return offset + 1
        offset += 1 + length


def _addresses(data: bytes, offset: int, count: int) -> Iterable[IPv4Address | IPv6Address]:
    """Yield the A/AAAA addresses of ``count`` resource records starting at ``offset``."""
    for _ in range(count):
        offset = _skip_name(data, offset)
        if offset + _RR_FIXED.size > len(data):
            raise MalformedMessage("truncated record")
        rtype, _cls, _ttl, rdlen = _RR_FIXED.unpack_from(data, offset)
        offset += _RR_FIXED.size
        if offset + rdlen > len(data):
            raise MalformedMessage("truncated rdata")
        if rtype == TYPE_A and rdlen == 4:
            yield IPv4Address(data[offset : offset + 4])
        elif rtype == TYPE_AAAA and rdlen == 16:
            yield IPv6Address(data[offset : offset + 16])
        offset += rdlen


def check_upstream_reply(
    query: bytes, reply: bytes, forbidden: Sequence[IPv4Network | IPv6Network]
) -> Reply | Drop:
    """Validate an upstream ``reply`` to the forwarded ``query``; see the module docstring."""
    try:
        sent, _qd, _end = read_question(query)
        got, qdcount, end = read_question(reply)
        rrs = sum(_HEADER.unpack_from(reply)[3:])
        if not got.flags & _QR or got.ident != sent.ident or qdcount != 1:
            return Drop("upstream_mismatch")
        same = [a.lower() for a in got.labels] == [a.lower() for a in sent.labels]
        if not same or (got.qtype, got.qclass) != (sent.qtype, sent.qclass):
            return Drop("upstream_mismatch")
        rebinding = any(
            address in network for address in _addresses(reply, end, rrs) for network in forbidden
        )
    except MalformedMessage:
        return Drop("upstream_malformed")
    if rebinding:
        failure = servfail_for(query)
        return Reply(failure) if failure is not None else Drop("upstream_malformed")
    return Reply(reply)
