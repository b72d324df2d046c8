"""Hairpin NAT and UDP flow table: rewrites checked by scapy, expiry driven by ``now``."""

from __future__ import annotations

import random
from ipaddress import IPv4Address
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP

from tunneler.nat import FlowState, NatDrop, NatFlow, TcpNat, UdpFlowTable
from tunneler.packet import Parsed, parse

T, N, VIP, L = "100.64.0.1", "100.127.255.254", "100.64.0.9", 1080
T_INT, N_INT, VIP_INT = (int(IPv4Address(a)) for a in (T, N, VIP))


def make_nat(**kwargs: Any) -> TcpNat:
    return TcpNat(T_INT, N_INT, L, **kwargs)


def segment(
    src: str, sport: int, dst: str, dport: int, flags: str, payload: bytes = b""
) -> bytearray:
    wire = IP(src=src, dst=dst, id=5) / TCP(sport=sport, dport=dport, flags=flags, seq=99)
    return bytearray(bytes(wire / payload) if payload else bytes(wire))


def parsed_of(packet: bytearray) -> Parsed:
    parsed = parse(packet)
    assert isinstance(parsed, Parsed), parsed
    return parsed


def checked(packet: bytearray) -> IP:
    """Decode with scapy and assert both checksums equal scapy's own recomputation."""
    decoded = IP(bytes(packet))
    fresh = decoded.copy()
    del fresh.chksum
    del fresh[TCP].chksum
    recomputed = IP(bytes(fresh))
    assert recomputed.chksum == decoded.chksum
    assert recomputed[TCP].chksum == decoded[TCP].chksum
    return decoded


def state(nat: TcpNat[str], nat_port: int) -> FlowState | None:
    flow = nat.flow(nat_port)
    return flow.state if flow is not None else None


def ports(flows: list[NatFlow[str]]) -> list[int]:
    return [flow.nat_port for flow in flows]


def send_out(nat: TcpNat, sport: int, flags: str, now: float, payload: bytes = b"") -> IP | NatDrop:
    packet = segment(T, sport, VIP, 443, flags, payload)
    result = nat.outbound(packet, parsed_of(packet), now)
    return result if isinstance(result, NatDrop) else checked(packet)


def send_in(nat: TcpNat, nat_port: int, flags: str, now: float) -> IP | NatDrop:
    packet = segment(T, L, N, nat_port, flags, b"reply")
    assert nat.is_inbound(parsed_of(packet))
    result = nat.inbound(packet, parsed_of(packet), now)
    return result if isinstance(result, NatDrop) else checked(packet)


def test_round_trip_rewrites_both_directions() -> None:
    nat = make_nat()
    out = send_out(nat, 40000, "S", 0.0)
    assert isinstance(out, IP)
    assert (out.src, out.dst, out[TCP].dport) == (N, T, L)
    nat_port = out[TCP].sport
    assert state(nat, nat_port) is FlowState.SYN
    back = send_in(nat, nat_port, "SA", 0.1)
    assert isinstance(back, IP)
    assert (back.src, back[TCP].sport, back.dst, back[TCP].dport) == (VIP, 443, T, 40000)
    assert back[TCP].load == b"reply"
    assert state(nat, nat_port) is FlowState.OPEN
    data = send_out(nat, 40000, "PA", 0.2, b"x" * 3000)
    assert isinstance(data, IP) and data[TCP].sport == nat_port


def test_many_random_flows_keep_valid_checksums() -> None:
    rng = random.Random(7)
    nat = make_nat(rng=rng)
    for _ in range(100):
        src = str(IPv4Address(rng.getrandbits(32)))
        dst = str(IPv4Address(rng.getrandbits(32)))
        packet = segment(src, rng.randrange(1, 65536), dst, rng.randrange(1, 65536), "S")
        assert isinstance(nat.outbound(packet, parsed_of(packet), 0.0), NatFlow)
        decoded = checked(packet)
        reply = segment(T, L, N, decoded[TCP].sport, "SA", rng.randbytes(rng.randrange(50)))
        assert isinstance(nat.inbound(reply, parsed_of(reply), 0.0), NatFlow)
        assert (checked(reply).src, checked(reply).dst) == (dst, src)


def test_retransmitted_syn_reuses_the_flow() -> None:
    nat = make_nat()
    first, second = send_out(nat, 40000, "S", 0.0), send_out(nat, 40000, "S", 1.0)
    assert isinstance(first, IP) and isinstance(second, IP)
    assert first[TCP].sport == second[TCP].sport
    assert len(nat) == 1 and nat.opened == 1


@pytest.mark.parametrize("flags", ["A", "PA", "F", "FA", "R", "SA"])
def test_non_syn_without_flow_is_dropped(flags: str) -> None:
    nat = make_nat()
    assert send_out(nat, 40000, flags, 0.0) is NatDrop.NO_FLOW
    assert nat.drops[NatDrop.NO_FLOW] == 1 and len(nat) == 0


def test_reply_for_unknown_port_is_dropped() -> None:
    nat = make_nat()
    assert send_in(nat, 20000, "SA", 0.0) is NatDrop.NO_FLOW


def test_non_tcp4_is_refused() -> None:
    nat = make_nat()
    packet = bytearray(bytes(IP(src=T, dst=VIP) / UDP(sport=1, dport=2)))
    assert nat.outbound(packet, parsed_of(packet), 0.0) is NatDrop.NOT_TCP4
    assert nat.inbound(packet, parsed_of(packet), 0.0) is NatDrop.NOT_TCP4


def test_syn_flow_expires_after_syn_timeout() -> None:
    nat = make_nat(syn_timeout=10.0)
    out = send_out(nat, 40000, "S", 100.0)
    assert isinstance(out, IP)
    assert ports(nat.expire(109.9)) == []
    assert ports(nat.expire(110.0)) == [out[TCP].sport]
    assert state(nat, out[TCP].sport) is None
    assert send_out(nat, 40000, "A", 110.1) is NatDrop.NO_FLOW


def test_open_flow_idles_out_and_activity_refreshes_it() -> None:
    nat = make_nat(idle_timeout=60.0)
    nat_port = _open_flow(nat, 0.0)
    send_out(nat, 40000, "A", 50.0)
    assert ports(nat.expire(100.0)) == []
    assert ports(nat.expire(110.0)) == [nat_port]
    assert nat.expired == 1


def _open_flow(nat: TcpNat, now: float, sport: int = 40000) -> int:
    out = send_out(nat, sport, "S", now)
    assert isinstance(out, IP)
    nat_port: int = out[TCP].sport
    assert isinstance(send_in(nat, nat_port, "SA", now), IP)
    return nat_port


def test_app_closing_first_lingers_briefly() -> None:
    nat = make_nat(linger=60.0, short_linger=10.0, half_closed_timeout=300.0)
    nat_port = _open_flow(nat, 0.0)
    send_out(nat, 40000, "FA", 1.0)
    assert state(nat, nat_port) is FlowState.HALF_CLOSED
    send_in(nat, nat_port, "FA", 2.0)
    assert state(nat, nat_port) is FlowState.CLOSED
    assert isinstance(send_out(nat, 40000, "A", 3.0), IP)  # final ACK still translated
    assert ports(nat.expire(12.9)) == []
    assert ports(nat.expire(13.0)) == [nat_port]


def test_listener_closing_first_lingers_through_time_wait() -> None:
    nat = make_nat(linger=60.0, short_linger=10.0, half_closed_timeout=300.0)
    nat_port = _open_flow(nat, 0.0)
    send_in(nat, nat_port, "FA", 1.0)  # the listener side closes first: TIME_WAIT there
    send_out(nat, 40000, "FA", 2.0)
    assert state(nat, nat_port) is FlowState.CLOSED
    assert ports(nat.expire(61.9)) == []
    assert ports(nat.expire(62.0)) == [nat_port]


def test_closed_flows_do_not_count_against_the_cap() -> None:
    nat = make_nat(max_flows=2)
    first = _open_flow(nat, 0.0, sport=40000)
    _open_flow(nat, 0.0, sport=40001)
    send_in(nat, first, "R", 1.0)
    assert nat.active == 1 and len(nat) == 2
    assert isinstance(send_out(nat, 40002, "S", 2.0), IP)
    assert send_out(nat, 40003, "S", 2.0) is NatDrop.TABLE_FULL
    nat.expire(100.0)
    assert nat.active == len(nat) == 1  # the reset one and the unanswered SYN are gone


def test_rst_closes_and_port_is_not_reused_during_linger() -> None:
    nat = make_nat(port_range=(30000, 30001), short_linger=30.0)
    first = _open_flow(nat, 0.0)
    send_in(nat, first, "R", 1.0)
    assert state(nat, first) is FlowState.CLOSED
    second = _open_flow(nat, 2.0, sport=40001)
    assert second != first
    assert send_out(nat, 40002, "S", 3.0) is NatDrop.PORTS_EXHAUSTED
    nat.expire(31.0)
    assert _open_flow(nat, 31.0, sport=40002) == first


def test_new_syn_on_closed_tuple_opens_a_fresh_flow() -> None:
    nat = make_nat(linger=60.0)
    first = _open_flow(nat, 0.0)
    nat.close(first, 1.0)
    again = _open_flow(nat, 2.0)
    assert again != first
    assert state(nat, first) is FlowState.CLOSED
    nat.expire(61.0)  # the old entry goes; the new one keeps its tuple
    assert state(nat, again) is FlowState.OPEN
    assert isinstance(send_out(nat, 40000, "A", 62.0), IP)


def test_cap_refuses_newest_and_counts() -> None:
    nat = make_nat(max_flows=3)
    ports = [_open_flow(nat, 0.0, sport=40000 + i) for i in range(3)]
    assert len(set(ports)) == 3
    assert send_out(nat, 41000, "S", 0.0) is NatDrop.TABLE_FULL
    assert nat.drops[NatDrop.TABLE_FULL] == 1
    assert all(state(nat, p) is FlowState.OPEN for p in ports)


def test_bad_port_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="port range"):
        make_nat(port_range=(0, 10))


def udp_parsed(sport: int) -> Parsed:
    return parsed_of(bytearray(bytes(IP(src=T, dst=VIP) / UDP(sport=sport, dport=53))))


def test_udp_flows_idle_out_and_cap() -> None:
    table: UdpFlowTable[str] = UdpFlowTable(max_flows=2, idle_timeout=30.0)
    first = table.flow_for(udp_parsed(1000), 0.0)
    assert first == (1, True)
    assert table.flow_for(udp_parsed(1000), 5.0) == (1, False)
    assert table.flow_for(udp_parsed(1001), 10.0) == (2, True)
    assert table.flow_for(udp_parsed(1002), 10.0) is NatDrop.TABLE_FULL
    assert table.drops[NatDrop.TABLE_FULL] == 1
    table.touch(2, 20.0)
    table.attach(2, "second")
    assert table.expire(34.9) == []
    assert table.expire(35.0) == [(1, None)]
    assert table.endpoint(1) is None and len(table) == 1
    assert table.flow_for(udp_parsed(1000), 36.0) == (3, True)
    assert table.endpoint(2) == "second" and table.endpoints() == ["second"]
    assert table.remove(2) == "second"
    assert table.remove(2) is None
    assert len(table) == 1


def test_rewrite_respects_ip_options() -> None:
    nat = make_nat()
    wire = IP(src=T, dst=VIP, options=[b"\x01\x01\x01\x00"]) / TCP(sport=4, dport=443, flags="S")
    packet = bytearray(bytes(wire))
    assert isinstance(nat.outbound(packet, parsed_of(packet), 0.0), NatFlow)
    decoded = checked(packet)
    assert (decoded.src, decoded.dst, decoded[TCP].dport) == (N, T, L)
    assert bytes(packet[20:24]) == b"\x01\x01\x01\x00"
