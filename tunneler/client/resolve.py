"""Name resolution for host-side targets, behind an interface so tests can substitute a fake.

A `Resolver` turns a host name or IP literal into addresses; run-host checks those addresses
(`targets.permitted_addresses`) and connects to exactly them, so what was checked is what is
reached.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from tunneler.client.targets import IPAddress, ip_literal
from tunneler.errors import DialError, DialFailure

Resolver = Callable[[str], Awaitable[list[IPAddress]]]


async def system_resolve(host: str) -> list[IPAddress]:
    """The addresses of `host` from the OS resolver (getaddrinfo), in its order.

    Raises:
        DialError: the name does not resolve.
    """
    literal = ip_literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None,
                                                             type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise DialError(f"cannot resolve {host!r}: {getattr(exc, 'strerror', None) or exc}"
                        ) from None
    addresses = [ip_literal(str(info[4][0])) for info in infos]
    return [ip for ip in addresses if ip is not None]


async def resolve_within(resolve: Resolver, host: str, timeout: float) -> list[IPAddress]:
    """`resolve(host)` bounded by `timeout` seconds.

    Raises:
        DialError: the name does not resolve in time (or at all).
    """
    try:
        async with asyncio.timeout(timeout):
            return await resolve(host)
    except TimeoutError:
        raise DialError(f"resolving {host!r} timed out after {timeout:g}s",
                        DialFailure.TIMEOUT) from None
