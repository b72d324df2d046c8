"""Read and change the TUN link through netlink (pyroute2): MTU, txqueuelen, addresses, routes.

- ``read_state(ipr, name)`` -> `RouteConfig` | None: what the kernel has now. Only our routes
  count (main table, ``proto static``, through the link); kernel-made subnet and IPv6
  link-local entries are ignored.
- ``apply(ipr, plan, journal)``: run a `RoutePlan`; every added route is journaled (with its undo)
  before the first is added. Idempotent: an address or route that already exists, or one that is
  already gone, is not an error.
- ``configure(desired, journal)``: read, plan, apply in one netlink session; returns the plan.
- ``delete_link(name)`` / ``delete_route(dst, name)``: undo steps; ``cleanup(name)`` removes
  what a previous run left (deleting the link takes its routes with it).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

from tunneler.errors import TunError
from tunneler.journal import Journal, Step
from tunneler.log import get_logger
from tunneler.tun.netlink import IPRoute, NetlinkError
from tunneler.tun.route_plan import IPInterface, IPNetwork, RouteConfig, RoutePlan
from tunneler.tun.route_plan import plan as make_plan

log = get_logger("tun")

RTPROT_STATIC = 4
RT_TABLE_MAIN = 254
_ALREADY = {errno.EEXIST}
_GONE = {errno.ESRCH, errno.ENOENT, errno.ENODEV, errno.EADDRNOTAVAIL}


def _netlink_error(exc: NetlinkError, what: str) -> TunError:
    if exc.code == errno.EPERM:
        return TunError(f"{what}: not permitted (run as root or grant CAP_NET_ADMIN)")
    return TunError(f"{what}: {exc}")


def _call(what: str, ignore: set[int], func: Any, *args: Any, **kwargs: Any) -> bool:
    """Run one netlink request; False when it failed with an ignorable code."""
    try:
        func(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code in ignore:
            return False
        raise _netlink_error(exc, what) from exc
    return True


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _interfaces(ipr: IPRoute, index: int) -> tuple[IPInterface, ...]:
    result = []
    for msg in ipr.get_addr(index=index):
        address = ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
        if not address.is_link_local:
            result.append(address)
    return tuple(result)


def _routes(ipr: IPRoute, index: int) -> tuple[IPNetwork, ...]:
    result = []
    for msg in ipr.get_routes(oif=index, table=RT_TABLE_MAIN):
        if msg["proto"] == RTPROT_STATIC and msg.get_attr("RTA_DST") is not None:
            result.append(ipaddress.ip_network(f"{msg.get_attr('RTA_DST')}/{msg['dst_len']}"))
    return tuple(result)


def read_state(ipr: IPRoute, name: str) -> RouteConfig | None:
    """The link as the kernel has it; None when no link has this name."""
    index = _index(ipr, name)
    if index is None:
        return None
    link = ipr.get_links(index)[0]
    return RouteConfig(
        tun_name=name,
        addresses=_interfaces(ipr, index),
        mtu=int(link.get_attr("IFLA_MTU")),
        txqueuelen=int(link.get_attr("IFLA_TXQLEN")),
        routes=_routes(ipr, index),
        up=bool(link["flags"] & 1),  # IFF_UP
    )


def _route_args(route: IPNetwork, index: int) -> dict[str, Any]:
    family = socket.AF_INET if route.version == 4 else socket.AF_INET6
    return {"dst": str(route), "oif": index, "family": family, "table": RT_TABLE_MAIN,
            "proto": RTPROT_STATIC}


def _set_link(ipr: IPRoute, plan: RoutePlan, index: int) -> None:
    changes: dict[str, Any] = {}
    if plan.set_mtu is not None:
        changes["mtu"] = plan.set_mtu
    if plan.set_txqueuelen is not None:
        changes["txqlen"] = plan.set_txqueuelen
    if changes:
        _call(f"set {changes} on {plan.tun_name}", set(), ipr.link, "set", index=index, **changes)


def _set_addresses(ipr: IPRoute, plan: RoutePlan, index: int) -> None:
    for iface in plan.remove_addresses:
        _call(f"remove {iface} from {plan.tun_name}", _GONE, ipr.addr, "del", index=index,
              address=str(iface.ip), prefixlen=iface.network.prefixlen)
    for iface in plan.add_addresses:
        _call(f"add {iface} to {plan.tun_name}", _ALREADY, ipr.addr, "add", index=index,
              address=str(iface.ip), prefixlen=iface.network.prefixlen)


def apply(ipr: IPRoute, plan: RoutePlan, journal: Journal | None = None) -> None:
    """Apply ``plan`` to its link (which must exist)."""
    index = _index(ipr, plan.tun_name)
    if index is None:
        raise TunError(f"link {plan.tun_name!r} does not exist; open the TUN device first")
    _set_link(ipr, plan, index)
    for route in plan.remove_routes:
        _call(f"remove route {route}", _GONE, ipr.route, "del", **_route_args(route, index))
    _set_addresses(ipr, plan, index)
    if plan.set_up is not None:
        state = "up" if plan.set_up else "down"
        _call(f"set {plan.tun_name} {state}", set(), ipr.link, "set", index=index, state=state)
    if journal is not None and plan.add_routes:
        journal.record(*(Step.delete_route(str(route), plan.tun_name) for route in plan.add_routes))
    for route in plan.add_routes:
        _call(f"add route {route}", _ALREADY, ipr.route, "add", **_route_args(route, index))
    log.info("tun.routes_applied", name=plan.tun_name, added=len(plan.add_routes),
             removed=len(plan.remove_routes), mtu=plan.set_mtu)


def configure(desired: RouteConfig, journal: Journal | None = None) -> RoutePlan:
    """Bring the link to ``desired``; returns the plan that was applied."""
    with IPRoute() as ipr:
        current = read_state(ipr, desired.tun_name)
        if current is None:
            raise TunError(f"link {desired.tun_name!r} does not exist; open the TUN device first")
        plan = make_plan(current, desired)
        apply(ipr, plan, journal)
    return plan


def delete_route(dst: str, name: str) -> bool:
    """Remove one route through ``name``; False when it (or the link) is already gone."""
    with IPRoute() as ipr:
        index = _index(ipr, name)
        if index is None:
            return False
        route = ipaddress.ip_network(dst)
        return _call(f"remove route {dst}", _GONE, ipr.route, "del", **_route_args(route, index))


def delete_link(name: str) -> bool:
    """Delete the link ``name``; False when there is none."""
    with IPRoute() as ipr:
        index = _index(ipr, name)
        if index is None:
            return False
        return _call(f"delete link {name}", _GONE, ipr.link, "del", index=index)


def cleanup(name: str) -> bool:
    """Remove a link a previous run left behind (its routes go with it)."""
    removed = delete_link(name)
    if removed:
        log.info("tun.leftover_removed", name=name)
    return removed
