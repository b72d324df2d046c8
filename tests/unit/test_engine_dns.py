"""Engine DNS over the fake TUN: intercepted names from the pool, forwarding, caps, malformed."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address
from typing import cast

from engine_support import DNS_IP, TUN_IP, StaticContext, running_engine, service
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, UDP

from tunneler.counters import Count
from tunneler.engine.dnsserver import DnsTcpProtocol, parse_upstream
from tunneler.engine.limits import Limits


def query(name: str, qtype: str = "A", *, ident: int = 7, sport: int = 40000) -> bytes:
    return bytes(IP(src=TUN_IP, dst=DNS_IP) / UDP(sport=sport, dport=53)
                 / DNS(id=ident, rd=1, qd=DNSQR(qname=name, qtype=qtype)))


def answer_of(packet: bytes) -> DNS:
    ip = IP(packet)
    assert ip.src == DNS_IP and ip.dst == TUN_IP and ip[UDP].sport == 53
    assert ip[UDP].dport == 40000
    return ip[DNS]


def contexts() -> list[StaticContext]:
    return [StaticContext([service("llm", ["llm.private.test"], 8000),
                           service("wild", ["*.apps.test"], 80)])]


def test_intercepted_names_get_stable_vips_and_aaaa_gets_no_data() -> None:
    async def main() -> None:
        async with running_engine(contexts()) as (engine, kernel):
            await kernel.send(query("llm.private.test"))
            first = answer_of(await kernel.recv())
            vip = IPv4Address(first.an[0].rdata)
            assert first.rcode == 0 and first.an[0].ttl == 60
            assert vip in engine.pool.network and vip != engine.pool.dns_ip
            await kernel.send(query("LLM.Private.Test", ident=8))
            again = answer_of(await kernel.recv())
            assert again.id == 8 and IPv4Address(again.an[0].rdata) == vip
            await kernel.send(query("a.apps.test"))
            await kernel.send(query("b.apps.test"))
            wild = {IPv4Address(answer_of(await kernel.recv()).an[0].rdata) for _ in range(2)}
            assert len(wild) == 2 and vip not in wild
            await kernel.send(query("llm.private.test", "AAAA"))
            aaaa = answer_of(await kernel.recv())
            assert aaaa.rcode == 0 and aaaa.ancount == 0

    asyncio.run(main())


def test_without_upstream_other_names_are_refused() -> None:
    async def main() -> None:
        async with running_engine(contexts()) as (_engine, kernel):
            await kernel.send(query("example.org"))
            assert answer_of(await kernel.recv()).rcode == 5  # REFUSED

    asyncio.run(main())


class StubResolver(asyncio.DatagramProtocol):
    """A real UDP resolver on loopback answering every A query with 192.0.2.10."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.sources: list[int] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        request = DNS(data)
        self.sources.append(int(str(addr[1])))
        reply = DNS(id=request.id, qr=1, rd=1, ra=1, qd=request.qd,
                    an=DNSRR(rrname=request.qd[0].qname, type="A", ttl=33, rdata="192.0.2.10"))
        assert self.transport is not None
        self.transport.sendto(bytes(reply), addr)


def test_other_names_are_forwarded_from_fresh_sockets_and_relayed_unchanged() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, stub = await loop.create_datagram_endpoint(
            StubResolver, local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        try:
            async with running_engine(contexts(), upstreams=[("127.0.0.1", port)]) as (
                    engine, kernel):
                for ident in (1, 2):
                    await kernel.send(query("www.example.org", ident=ident))
                    reply = answer_of(await kernel.recv())
                    assert reply.id == ident and reply.an[0].rdata == "192.0.2.10"
                    assert reply.an[0].ttl == 33
                assert len(set(stub.sources)) == 2  # a new source port per query
                assert engine.metrics.counts[Count.DNS_FORWARDED] == 2
        finally:
            transport.close()

    asyncio.run(main())


def test_dead_upstream_gives_servfail_and_in_flight_cap_refuses_at_once() -> None:
    async def main() -> None:
        limits = Limits(max_dns_in_flight=1, dns_upstream_timeout=0.5, drain_timeout=0.1)
        async with running_engine(contexts(), limits=limits,
                                  upstreams=[("127.0.0.1", 9)]) as (engine, kernel):
            await kernel.send(query("slow.example.org", ident=1))
            await kernel.send(query("other.example.org", ident=2))
            capped = answer_of(await kernel.recv())
            assert capped.id == 2 and capped.rcode == 2  # SERVFAIL at once
            late = answer_of(await kernel.recv(3))
            assert late.id == 1 and late.rcode == 2
            assert engine.metrics.counts[Count.DNS_REFUSED_IN_FLIGHT_CAP] == 1
            assert engine.metrics.counts[Count.DNS_UPSTREAM_FAILED] == 1

    asyncio.run(main())


def test_malformed_queries_are_dropped_and_counted() -> None:
    async def main() -> None:
        async with running_engine(contexts()) as (engine, kernel):
            bad = bytes(IP(src=TUN_IP, dst=DNS_IP) / UDP(sport=40000, dport=53)
                        / b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01")
            await kernel.send(bad)
            await kernel.send(bytes(IP(src=TUN_IP, dst=DNS_IP) / UDP(sport=40000, dport=53)
                                    / b"\x01"))
            assert await kernel.nothing()
            assert engine.responder.counters["malformed"] == 1
            assert engine.responder.counters["short_header"] == 1
            await kernel.send(query("llm.private.test"))
            assert answer_of(await kernel.recv()).ancount == 1
            # what `status` and /metrics show, through the engine's snapshot
            assert engine.snapshot().counters.dns == {"answered": 1, "forwarded": 0,
                                                      "refused": 0, "dropped": 2}

    asyncio.run(main())


def test_dns_over_tcp_framing_answers_each_message() -> None:
    async def main() -> None:
        async with running_engine(contexts()) as (engine, _kernel):
            sent: list[bytes] = []
            lost: list[bool] = []
            protocol = DnsTcpProtocol(engine.dns, lambda: lost.append(True))

            class Transport(asyncio.Transport):
                def write(self, data: bytes | bytearray | memoryview) -> None:
                    sent.append(bytes(data))

                def is_closing(self) -> bool:
                    return False

                def close(self) -> None:
                    protocol.connection_lost(None)

            protocol.connection_made(Transport())
            message = bytes(IP(query("llm.private.test"))[DNS])
            framed = len(message).to_bytes(2, "big") + message
            protocol.data_received(framed + framed[:5])
            protocol.data_received(framed[5:])
            assert len(sent) == 2
            assert all(DNS(s[2:]).an[0].type == 1 for s in sent)
            protocol.data_received(b"\xff\xff" + b"x" * 9000)  # over the buffer cap
            assert lost == [True]
            assert engine.metrics.counts[Count.DNS_TCP_OVERFLOW] == 1

    asyncio.run(main())


class TruncatingResolver:
    """A loopback resolver whose big answer (40 A records) only fits over TCP: UDP gets TC."""

    def __init__(self) -> None:
        self.udp_queries = 0
        self.tcp_queries = 0

    def answer(self, data: bytes, *, truncated: bool) -> bytes:
        request = DNS(data)
        records = [] if truncated else [
            DNSRR(rrname=request.qd[0].qname, ttl=5, rdata=f"192.0.2.{i}") for i in range(40)]
        return bytes(DNS(id=request.id, qr=1, rd=1, ra=1, tc=int(truncated), qd=request.qd,
                         an=records))

    def datagram_received(self, transport: asyncio.DatagramTransport, data: bytes,
                          addr: tuple[str, int]) -> None:
        self.udp_queries += 1
        transport.sendto(self.answer(data, truncated=True), addr)

    async def serve_tcp(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        size = int.from_bytes(await reader.readexactly(2), "big")
        self.tcp_queries += 1
        reply = self.answer(await reader.readexactly(size), truncated=False)
        writer.write(len(reply).to_bytes(2, "big") + reply)
        await writer.drain()
        writer.close()


def test_truncated_answers_are_fetched_over_tcp_and_tcp_queries_go_over_tcp() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        stub = TruncatingResolver()
        server = await asyncio.start_server(stub.serve_tcp, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = cast(asyncio.DatagramTransport, transport)

            def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
                stub.datagram_received(self.transport, data, (str(addr[0]), int(str(addr[1]))))

        udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", port))
        try:
            async with running_engine(contexts(), upstreams=[("127.0.0.1", port)]) as (
                    engine, kernel):
                await kernel.send(query("big.example.org", ident=3))
                reply = IP(await kernel.recv(3))
                assert reply[DNS].id == 3 and reply[DNS].ancount == 40
                assert (stub.udp_queries, stub.tcp_queries) == (1, 1)
                assert engine.metrics.counts[Count.DNS_TRUNCATED_RETRIED_OVER_TCP] == 1
                sent: list[bytes] = []
                message = bytes(IP(query("big.example.org", ident=4))[DNS])
                engine.dns.answer(message, loop.time(), sent.append, tcp=True)
                for _ in range(100):
                    if sent:
                        break
                    await asyncio.sleep(0.02)
                assert DNS(sent[0]).ancount == 40
                assert (stub.udp_queries, stub.tcp_queries) == (1, 2)  # straight to TCP
        finally:
            udp.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_parse_upstream_forms() -> None:
    assert parse_upstream("198.18.0.53") == ("198.18.0.53", 53)
    assert parse_upstream("198.18.0.53:5353") == ("198.18.0.53", 5353)
    assert parse_upstream("[2001:db8::1]:54") == ("2001:db8::1", 54)
    assert parse_upstream("2001:db8::1") == ("2001:db8::1", 53)
    for bad in ("dns.example", "1.2.3.4:0", "1.2.3.4:x"):
        try:
            parse_upstream(bad)
        except Exception as exc:  # noqa: BLE001
            assert "dns-upstream" in str(exc)
        else:
            raise AssertionError(bad)
