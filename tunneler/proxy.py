"""`tunneler proxy`: listen on local TCP ports and dial a service for every accepted connection.

`SERVICE=[HOST:]PORT` (host defaults to 127.0.0.1). The accepted socket is not read until the
dial succeeded; if the dial fails it is reset (SO_LINGER 0), so the application sees a refusal,
not an empty answer. App data carries `dst_protocol` and, from the service's intercept config,
`dst_hostname`/`dst_ip` and `dst_port`, so a `forward*` host config can pick the target.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import ipaddress
from dataclasses import dataclass

from tunneler import aio
from tunneler.bridges import StreamBridge, reset
from tunneler.client.context import ZitiContext
from tunneler.client.ctrl import ServiceInfo
from tunneler.client.services import config_or_warn
from tunneler.configs import InterceptV1, intercept_of
from tunneler.errors import ConfigError, DialError
from tunneler.log import get_logger

log = get_logger("proxy")

DEFAULT_HOST = "127.0.0.1"
SHUTDOWN_TIMEOUT = 10.0


@dataclass(frozen=True)
class ProxyBinding:
    """One `SERVICE=[HOST:]PORT` argument."""

    service: str
    host: str
    port: int


def parse_binding(text: str) -> ProxyBinding:
    """Parse `SERVICE=[HOST:]PORT` (IPv6 hosts in brackets).

    Raises:
        ConfigError: malformed.
    """
    service, sep, address = text.rpartition("=")
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]") or DEFAULT_HOST
    if not sep or not service or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{text!r}: expected SERVICE=[HOST:]PORT, e.g. echo=127.0.0.1:8080")
    return ProxyBinding(service, host, int(port_text))


def cmd_proxy(args: argparse.Namespace) -> int:
    """Entry point of `tunneler proxy`."""
    bindings = [parse_binding(text) for text in args.bindings]
    if not args.refresh_interval > 0:
        raise ConfigError("--refresh-interval must be a positive number of seconds")
    return aio.run(lambda stop: run_proxy(args.identity, bindings, stop,
                                          refresh_interval=args.refresh_interval))


async def run_proxy(identity: str, bindings: list[ProxyBinding], stop: asyncio.Event, *,
                    refresh_interval: float = 60.0) -> int:
    """Serve every binding until `stop` is set."""
    ctx = ZitiContext(identity, refresh_interval=refresh_interval)
    servers: list[asyncio.Server] = []
    try:
        if not await ctx.start_retrying(stop):
            return 0
        loop = asyncio.get_running_loop()
        for binding in bindings:
            servers.append(await loop.create_server(
                functools.partial(StreamBridge, functools.partial(_accepted, ctx, binding)),
                binding.host, binding.port))
            log.info("proxy.listening", service=binding.service, host=binding.host,
                     port=binding.port)
        await stop.wait()
    finally:
        for server in servers:
            server.close()
        async with asyncio.timeout(SHUTDOWN_TIMEOUT):
            await ctx.close()
    return 0


def _accepted(ctx: ZitiContext, binding: ProxyBinding, bridge: StreamBridge) -> None:
    task = ctx.spawn(_dial(ctx, binding, bridge))
    bridge.on_lost(task.cancel)


async def _dial(ctx: ZitiContext, binding: ProxyBinding, bridge: StreamBridge) -> None:
    try:
        service = await ctx.service(binding.service)
        await ctx.dial(binding.service, bridge, app_data=app_data_for(service))
    except DialError as exc:
        log.info("proxy.dial_failed", service=binding.service, error=str(exc))
        if bridge.transport is not None and not bridge.done:
            bridge.done = True
            reset(bridge.transport)


def app_data_for(service: ServiceInfo) -> dict[str, str | int | None]:
    """`dst_protocol` plus the first intercept address and port of the service, if any."""
    fields: dict[str, str | int | None] = {"dst_protocol": "tcp"}
    intercept = _intercept(service)
    if intercept is None:
        return fields
    address = intercept.addresses[0]
    try:
        ipaddress.ip_address(address)
        fields["dst_ip"] = address
    except ValueError:
        if "/" not in address and not address.startswith("*"):
            fields["dst_hostname"] = address
    fields["dst_port"] = intercept.port_ranges[0].low
    return fields


def _intercept(service: ServiceInfo) -> InterceptV1 | None:
    return config_or_warn(service, intercept_of, "proxy.intercept_invalid")
