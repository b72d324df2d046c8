"""Shared pieces of the engine unit tests: an engine on a fake TUN, and a context without overlay.

The engine runs for real (uvloop-free asyncio, real sockets, a real listener bound with
IP_FREEBIND); only the TUN is a socket pair (the test plays the kernel on its peer end) and
the identity context is `StaticContext`: a fixed service list whose dials fail, or wait on a
gate first, as a controller-less stand-in (a real overlay runs in the privileged tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any

from tunneler.client.ctrl import ServiceInfo
from tunneler.dns.pool import VipPool
from tunneler.engine.dnsserver import Upstream
from tunneler.engine.engine import Engine
from tunneler.engine.limits import Limits
from tunneler.engine.tcp import OriginalDestinationLookup
from tunneler.errors import DialError
from tunneler.overlay import DialContext, OverlayConnection, OverlaySink
from tunneler.tun.device import SocketPairTun
from tunneler.tun.redirect import original_destination

TUN_IP = "100.64.0.1"
DNS_IP = "100.64.0.2"


def service(name: str, addresses: Sequence[str], low: int, high: int | None = None, *,
            protocols: Sequence[str] = ("tcp",), **extra: Any) -> ServiceInfo:
    """A dialable service with an intercept.v1 config."""
    config = {"protocols": list(protocols), "addresses": list(addresses),
              "portRanges": [{"low": low, "high": high or low}], **extra}
    return ServiceInfo(id=f"id-{name}", name=name, permissions=frozenset({"Dial"}),
                       encryption_required=False, configs={"intercept.v1": config})


class StaticContext:
    """A context with a fixed service list; `dial` records the call, waits on `gate`, fails."""

    def __init__(self, services: Sequence[ServiceInfo], name: str = "client1") -> None:
        self.services = {s.name: s for s in services}
        self._name = name
        self.dials: list[tuple[str, dict[str, str | int | None] | None, float]] = []
        self.terminators: list[str | None] = []
        self.gate: asyncio.Event | None = None

    @property
    def name(self) -> str:
        return self._name

    async def dial(self, service_name: str, sink: OverlaySink, *,
                   app_data: dict[str, str | int | None] | None = None,
                   terminator_identity: str | None = None,
                   timeout: float = 5.0) -> OverlayConnection:
        self.dials.append((service_name, app_data, timeout))
        self.terminators.append(terminator_identity)
        if self.gate is not None:
            await self.gate.wait()
        raise DialError(f"service {service_name!r} has no terminators")


class Kernel:
    """The test's side of the fake TUN: send packets in, receive what the engine writes."""

    def __init__(self, peer: socket.socket) -> None:
        self.peer = peer
        peer.setblocking(False)

    async def send(self, packet: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.peer, packet)

    async def recv(self, timeout: float = 2.0) -> bytes:
        async with asyncio.timeout(timeout):
            return await asyncio.get_running_loop().sock_recv(self.peer, 70000)

    async def nothing(self, wait: float = 0.2) -> bool:
        """True when the engine writes nothing for `wait` seconds."""
        try:
            await self.recv(wait)
        except TimeoutError:
            return True
        return False


@contextlib.asynccontextmanager
async def running_engine(contexts: Sequence[DialContext], *, limits: Limits | None = None,
                         upstreams: Sequence[Upstream] = (),
                         lookup: OriginalDestinationLookup = original_destination,
                         ) -> AsyncIterator[tuple[Engine, Kernel]]:
    """A started engine on a fake TUN; closed (and the TUN too) afterwards."""
    tun = SocketPairTun()
    engine = Engine(tun, contexts, VipPool(f"{TUN_IP}/10"),
                    limits=limits or Limits(drain_timeout=0.5), upstreams=upstreams,
                    lookup=lookup)
    try:
        await engine.start()
        yield engine, Kernel(tun.peer)
    finally:
        await engine.close()
        tun.close()
