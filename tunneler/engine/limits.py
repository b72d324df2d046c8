"""Caps of the data path (reliability.md §5): when one is reached the newest work is refused."""

from __future__ import annotations

from dataclasses import dataclass

from tunneler.nat import DEFAULT_MAX_TCP_FLOWS, DEFAULT_MAX_UDP_FLOWS, UDP_IDLE_TIMEOUT


@dataclass(frozen=True)
class Limits:
    """Every cap the engine enforces (counted when hit)."""

    max_tcp_flows: int = DEFAULT_MAX_TCP_FLOWS
    max_pending_dials: int = 512
    max_nat_entries: int = 2 * DEFAULT_MAX_TCP_FLOWS  # open NAT flows; closed ones only hold ports
    max_udp_flows: int = DEFAULT_MAX_UDP_FLOWS
    max_udp_queued: int = 64  # datagrams held per UDP flow while its dial is pending
    max_dns_in_flight: int = 150
    udp_idle_timeout: float = UDP_IDLE_TIMEOUT
    dns_upstream_timeout: float = 5.0
    drain_timeout: float = 5.0
