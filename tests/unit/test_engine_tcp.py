"""Engine TCP/UDP refusals over the fake TUN: RSTs, held SYNs, caps, malformed packets."""

from __future__ import annotations

import asyncio
import weakref
from ipaddress import IPv4Address

from engine_support import DNS_IP, TUN_IP, StaticContext, running_engine, service
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from structlog.testing import capture_logs

from tunneler.counters import Count, Drop, Refusal
from tunneler.engine.engine import Engine
from tunneler.engine.limits import Limits
from tunneler.engine.tcp import FlowEnd
from tunneler.packet.parse import parse


def syn(dst: str, dport: int, sport: int = 45000, seq: int = 1000) -> bytes:
    return bytes(IP(src=TUN_IP, dst=dst) / TCP(sport=sport, dport=dport, flags="S", seq=seq))


async def vip_for(engine: Engine, name: str) -> str:
    """Resolve `name` the way an app does, through the engine's DNS."""
    loop = asyncio.get_running_loop()
    engine.responder.handle(bytes(DNS(id=1, rd=1, qd=DNSQR(qname=name))), loop.time())
    vip = engine.pool.lookup(name)
    assert vip is not None
    return str(vip)


def assert_rst_for(packet: bytes, dst: str, dport: int, sport: int = 45000,
                   seq: int = 1000) -> None:
    ip = IP(packet)
    assert ip.src == dst and ip.dst == TUN_IP
    assert ip[TCP].sport == dport and ip[TCP].dport == sport
    assert ip[TCP].flags == "RA" and ip[TCP].ack == seq + 1


def llm_context() -> StaticContext:
    return StaticContext([service("llm", ["llm.private.test"], 8000),
                          service("net", ["198.51.100.0/24"], 9000, 9010,
                                  protocols=("tcp", "udp"), sourceIp="$tunneler_id.name",
                                  dialOptions={"connectTimeoutSeconds": 2,
                                               "identity": "host-$dst_ip"}),
                          service("precise", ["198.51.100.7"], 9005)])


def test_syn_without_intercept_gets_an_immediate_rst() -> None:
    async def main() -> None:
        async with running_engine([llm_context()]) as (engine, kernel):
            vip = await vip_for(engine, "llm.private.test")
            for dst, port in ((vip, 22), ("100.64.9.9", 8000), ("198.51.100.1", 80)):
                await kernel.send(syn(dst, port))
                assert_rst_for(await kernel.recv(), dst, port)
            assert engine.metrics.refusals[Refusal.NO_INTERCEPT] == 3

    asyncio.run(main())


def test_failed_dial_gets_rst_and_retransmitted_syns_are_held_once() -> None:
    async def main() -> None:
        ctx = llm_context()
        ctx.gate = asyncio.Event()
        async with running_engine([ctx]) as (engine, kernel):
            vip = await vip_for(engine, "llm.private.test")
            await kernel.send(syn(vip, 8000))
            await kernel.send(syn(vip, 8000))  # the app's retransmission while dialing
            assert await kernel.nothing()
            assert engine.metrics.drops[Drop.TCP_SYN_RETRANSMIT] == 1
            ctx.gate.set()
            assert_rst_for(await kernel.recv(), vip, 8000)
            assert await kernel.nothing()
            service_name, app_data, timeout = ctx.dials[0]
            assert len(ctx.dials) == 1 and service_name == "llm" and timeout == 5.0
            assert app_data == {"dst_protocol": "tcp", "dst_ip": vip, "dst_port": "8000",
                                "src_protocol": "tcp", "src_ip": TUN_IP, "src_port": "45000",
                                "dst_hostname": "llm.private.test"}
            assert engine.metrics.counts[Count.TCP_DIALS_FAILED] == 1
            assert engine.tcp is not None and engine.tcp.pending == 0
            counters = engine.metrics.snapshot()     # per service, for the ops layer
            assert counters.dial_failures == {"refused": 1}
            assert engine.metrics.last_error("llm") == "service 'llm' has no terminators"
            assert counters.dial_latency.count == 0 and counters.flows.flows_opened == 0

    asyncio.run(main())


def test_most_precise_address_intercept_wins_and_source_ip_template_expands() -> None:
    async def main() -> None:
        ctx = llm_context()
        async with running_engine([ctx]) as (_engine, kernel):
            await kernel.send(syn("198.51.100.7", 9005))
            await kernel.send(syn("198.51.100.8", 9005, sport=45001))
            await kernel.recv()
            await kernel.recv()
            assert sorted(d[0] for d in ctx.dials) == ["net", "precise"]
            net = next(d for d in ctx.dials if d[0] == "net")
            assert net[1] is not None and net[1]["source_addr"] == "client1"
            assert net[2] == 2.0  # dialOptions.connectTimeoutSeconds
            by_service = dict(zip((d[0] for d in ctx.dials), ctx.terminators, strict=True))
            assert by_service == {"net": "host-198.51.100.8", "precise": None}  # 1006 header

    asyncio.run(main())


def test_pending_dial_and_flow_caps_refuse_the_newest() -> None:
    async def main() -> None:
        ctx = llm_context()
        ctx.gate = asyncio.Event()
        limits = Limits(max_pending_dials=2, max_tcp_flows=3, drain_timeout=0.1)
        async with running_engine([ctx], limits=limits) as (engine, kernel):
            vip = await vip_for(engine, "llm.private.test")
            for sport in (40001, 40002, 40003):
                await kernel.send(syn(vip, 8000, sport=sport))
            assert_rst_for(await kernel.recv(), vip, 8000, sport=40003)
            assert engine.metrics.refusals[Refusal.PENDING_CAP] == 1
            assert len(ctx.dials) == 2
            ctx.gate.set()
            await kernel.recv()
            await kernel.recv()

    asyncio.run(main())


def test_a_syn_flood_to_one_service_leaves_pending_slots_for_others() -> None:
    async def main() -> None:
        ctx = llm_context()
        ctx.gate = asyncio.Event()
        limits = Limits(max_pending_dials=3, drain_timeout=0.1)  # one service: at most 2
        async with running_engine([ctx], limits=limits) as (engine, kernel):
            vip = await vip_for(engine, "llm.private.test")
            for sport in (40001, 40002, 40003):
                await kernel.send(syn(vip, 8000, sport=sport))
            assert_rst_for(await kernel.recv(), vip, 8000, sport=40003)
            assert engine.metrics.refusals[Refusal.SERVICE_PENDING_CAP] == 1
            await kernel.send(syn("198.51.100.7", 9005, sport=40004))  # another service
            assert await kernel.nothing()  # held while it dials: not refused
            assert [d[0] for d in ctx.dials] == ["llm", "llm", "precise"]
            ctx.gate.set()
            for _ in range(3):
                await kernel.recv()

    asyncio.run(main())


def test_non_syn_without_flow_gets_rst_and_draining_refuses_new_flows() -> None:
    async def main() -> None:
        async with running_engine([llm_context()]) as (engine, kernel):
            vip = await vip_for(engine, "llm.private.test")
            stray = IP(src=TUN_IP, dst=vip) / TCP(sport=45000, dport=8000, flags="A", ack=77)
            await kernel.send(bytes(stray))
            rst = IP(await kernel.recv())
            assert rst[TCP].flags == "R" and rst[TCP].seq == 77
            engine.drain()
            await kernel.send(syn(vip, 8000))
            assert_rst_for(await kernel.recv(), vip, 8000)
            assert engine.metrics.refusals[Refusal.DRAINING] == 1

    asyncio.run(main())


def test_malformed_packets_are_counted_and_the_loop_goes_on() -> None:
    async def main() -> None:
        async with running_engine([llm_context()]) as (engine, kernel):
            good = syn("198.51.100.1", 80)
            bad_checksum = bytearray(good)
            bad_checksum[10] ^= 0xFF
            fragment = bytearray(bytes(IP(src=TUN_IP, dst=DNS_IP, flags="MF") / UDP(
                sport=1, dport=53) / b"x"))
            for packet in (b"\x45", good[:30], bytes(bad_checksum), b"\x75" * 40,
                           bytes(fragment)):
                await kernel.send(packet)
            assert await kernel.nothing()
            dropped = engine.snapshot().counters.packets_dropped
            assert dropped["truncated"] == 1 and dropped["bad_total_length"] == 1
            assert dropped["bad_ip_checksum"] == 1
            assert dropped["bad_version"] == 1 and dropped["fragment"] == 1
            await kernel.send(good)
            assert_rst_for(await kernel.recv(), "198.51.100.1", 80)

    asyncio.run(main())


def test_handler_exception_is_counted_and_the_next_packet_is_served() -> None:
    async def main() -> None:
        async with running_engine([llm_context()]) as (engine, kernel):
            original = engine.udp.handle

            def explode(*_args: object) -> None:
                engine.udp.handle = original  # type: ignore[method-assign]
                raise RuntimeError("bug in one handler")

            engine.udp.handle = explode  # type: ignore[method-assign]
            await kernel.send(bytes(IP(src=TUN_IP, dst="198.51.100.9") / UDP(
                sport=5000, dport=9001) / b"ping"))
            with capture_logs() as logs:
                await kernel.send(syn("198.51.100.1", 80))
                assert_rst_for(await kernel.recv(), "198.51.100.1", 80)
            assert engine.metrics.counts[Count.HANDLER_ERRORS] == 1
            failed = [e for e in logs if e["event"] == "engine.packet_handler_failed"]
            assert len(failed) == 1 and isinstance(failed[0]["exc_info"], RuntimeError)

    asyncio.run(main())


def test_udp_without_intercept_gets_port_unreachable_and_failed_dial_ends_the_flow() -> None:
    async def main() -> None:
        ctx = llm_context()
        async with running_engine([ctx], limits=Limits(max_udp_flows=1, drain_timeout=0.1)) as (
                engine, kernel):
            await kernel.send(bytes(IP(src=TUN_IP, dst="198.51.100.9") / UDP(
                sport=5000, dport=53) / b"ping"))
            icmp = IP(await kernel.recv())
            assert icmp[ICMP].type == 3 and icmp[ICMP].code == 3
            await kernel.send(bytes(IP(src=TUN_IP, dst="198.51.100.9") / UDP(
                sport=5000, dport=9001) / b"ping"))
            await kernel.nothing(0.1)
            assert [d[0] for d in ctx.dials] == ["net"]
            assert engine.metrics.counts[Count.UDP_DIALS_FAILED] == 1 and len(engine.udp) == 0
            net = engine.metrics.snapshot().services["net"]
            assert (net.flows_opened, net.flows_active) == (1, 0)
            assert engine.metrics.last_error("net") == "service 'net' has no terminators"
            assert IPv4Address("198.51.100.9") not in engine.pool.network

    asyncio.run(main())


def test_udp_flow_cap_refuses_new_flows_while_one_is_dialing() -> None:
    async def main() -> None:
        ctx = llm_context()
        ctx.gate = asyncio.Event()
        async with running_engine([ctx], limits=Limits(max_udp_flows=1, drain_timeout=0.1)) as (
                engine, kernel):
            for sport in (5000, 5000, 5001):
                await kernel.send(bytes(IP(src=TUN_IP, dst="198.51.100.9") / UDP(
                    sport=sport, dport=9001) / b"ping"))
            assert await kernel.nothing(0.1)
            assert len(ctx.dials) == 1 and len(engine.udp) == 1
            assert engine.metrics.refusals[Refusal.FLOW_CAP] == 1
            ctx.gate.set()

    asyncio.run(main())


def test_several_identities_each_dial_their_own_services() -> None:
    async def main() -> None:
        first = StaticContext([service("a", ["a.test"], 80)], name="id-one")
        second = StaticContext([service("b", ["b.test"], 80), service("a", ["a.test"], 81)],
                               name="id-two")
        async with running_engine([first, second]) as (engine, kernel):
            for name in ("a.test", "b.test"):
                await kernel.send(syn(await vip_for(engine, name), 80))
                await kernel.recv()
            assert [d[0] for d in first.dials] == ["a"]
            assert [d[0] for d in second.dials] == ["b"]  # "a" of id-two is shadowed by id-one

    asyncio.run(main())


def test_a_finished_flow_lingers_in_the_nat_without_its_bridge() -> None:
    # the entry lingers 60 s (TIME_WAIT); holding the bridge there kept ~3 KB per connection
    # (9 MiB of `tunneler run` RSS after 3 s of bench/peers.py new connections)
    class Bridge:
        def abort(self) -> None:
            pass

    async def main() -> None:
        async with running_engine([llm_context()]) as (engine, kernel):
            assert engine.tcp is not None
            vip = await vip_for(engine, "llm.private.test")
            packet = bytearray(syn(vip, 8000))
            bridge = Bridge()
            gone = weakref.ref(bridge)
            loop = asyncio.get_running_loop()
            engine.pool.acquire(IPv4Address(vip), loop.time())
            end = FlowEnd(bridge, "llm")  # type: ignore[arg-type]  # only abort() is called
            flow = engine.tcp._open(packet, parse(packet), loop.time(), end)
            assert flow is not None and engine.tcp.flows == 1
            await kernel.recv()  # the SYN, rewritten to our listener
            del bridge
            assert gone() is not None
            engine.tcp._finish(flow)
            assert engine.tcp.flows == 0 and end.done
            assert engine.tcp.nat is not None and engine.tcp.nat.flow(flow.nat_port) is flow
            assert gone() is None

    asyncio.run(main())
