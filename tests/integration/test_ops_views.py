"""`ZitiContext`'s read-only views for the ops layer against a real network on 127.0.0.1:
`links()` names the router and measures a non-zero latency; the periodic refresh records
the controller's answer, so a controller that went away shows within one refresh interval;
run-host's view lists what it hosts, from `ServiceHost.snapshot()`."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.overlay import Overlay, build_overlay, host_service, start_blob_server
from tunneler.client.context import ZitiContext
from tunneler.host import HostView, ServiceHost
from tunneler.ops.views import ContextsView

REFRESH = 0.3


@pytest.fixture(name="overlay")
def _overlay(tmp_path: Path) -> Iterator[Overlay]:
    blobs, port = start_blob_server()
    overlay = build_overlay(tmp_path / "overlay", [host_service("blob", port)])
    try:
        yield overlay
    finally:
        overlay.stop_all()
        blobs.shutdown()
        blobs.server_close()


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_links_and_controller_contact_follow_the_network(overlay: Overlay) -> None:
    async def scenario() -> None:
        ctx = ZitiContext(overlay.directory / "client1.json", refresh_interval=REFRESH)
        view = ContextsView([ctx])
        await ctx.start()
        try:
            assert ctx.controller_contact.error is None and ctx.controller_contact.at
            (before,) = ctx.links()
            assert not before.connected and before.router != before.url
            await ctx.link_for([])
            await _until(lambda: (ctx.links()[0].latency or 0) > 0)
            (link,) = ctx.links()
            assert link.connected and link.url.startswith("tls://") and (link.latency or 0) < 1.0
            (ident,) = view.identities()
            assert ident.controller_reachable and ident.error is None
            assert ident.controller_checked_at is not None
            await asyncio.to_thread(overlay.stop, "network")
            await _until(lambda: ctx.controller_contact.error is not None, 5 * REFRESH + 5)
            (ident,) = view.identities()
            assert ident.loaded and not ident.controller_reachable
            assert ident.error is not None and "CONTROLLER_UNAVAILABLE" in ident.error
        finally:
            await ctx.close()

    asyncio.run(scenario())


def test_host_view_lists_hosted_services_with_the_routers_they_are_bound_on(
        overlay: Overlay) -> None:
    """`tunneler intercepts` in host mode: one row per hosted service (its target as the
    address), from `ServiceHost.snapshot()`; the router shows once the Bind succeeded."""
    async def scenario() -> None:
        ctx = ZitiContext(overlay.directory / "host1.json", refresh_interval=60.0)
        host = ServiceHost(ctx)
        view = HostView([host])
        await ctx.start()
        host.start()
        try:
            await _until(lambda: any(row.router for row in view.intercepts()))
            (row,) = view.intercepts()
            assert (row.service, row.identity, row.protocols) == ("blob", "host1", ("tcp",))
            assert re.fullmatch(r"tcp:127\.0\.0\.1:\d+", row.address), row.address
            assert row.router and not row.router.startswith("tls://")
            assert row.active_flows == 0 and row.last_error is None
        finally:
            await host.close()
        assert view.intercepts() == []

    asyncio.run(scenario())
