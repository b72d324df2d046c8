"""What both daemons' `DaemonView`s share: `ContextsView` (identities, routers, refresh, log
level). The views themselves live beside what they read
(`tunneler.daemon_view.InterceptView`, `tunneler.host.HostView`), so ops imports neither.

They read the running objects on request and build `snapshot` values; nothing here changes
the data path except `refresh()` (a service refresh now) and `set_log_level()`.
Router links and controller reachability come from `ZitiContext`'s read-only `links()` and
`controller_contact`; counters from the `tunneler.counters.Metrics` the daemon's data path
counts into (through `Engine.snapshot()` in intercept mode, with the DNS outcomes).
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Sequence

from tunneler import log
from tunneler.client.context import ZitiContext
from tunneler.counters import Metrics
from tunneler.errors import ControllerError, DialError
from tunneler.ops.snapshot import IdentityStatus, RouterStatus

logger = log.get_logger("ops")

LINK_CHECK_INTERVAL = 2.0


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.datetime.fromtimestamp(
        epoch, datetime.UTC).isoformat()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def router_statuses(ctx: ZitiContext) -> list[RouterStatus]:
    """Every router the controller listed for `ctx`, plus any other live link."""
    return [RouterStatus(link.router, ctx.name, link.connected, _ms(link.latency), link.url)
            for link in ctx.links()]


def best_router(ctx: ZitiContext) -> RouterStatus | None:
    """The link new flows of `ctx` use now (the lowest latency connected one)."""
    up = [r for r in router_statuses(ctx) if r.connected]
    return min(up, key=lambda r: float("inf") if r.latency_ms is None else r.latency_ms,
               default=None)


class ContextsView:
    """What both daemons share: identities, routers, refresh and log level."""

    def __init__(self, contexts: Sequence[ZitiContext], stats: Metrics | None = None) -> None:
        self.contexts = list(contexts)
        self.stats = stats or Metrics()
        self.started = time.monotonic()

    def identities(self) -> tuple[IdentityStatus, ...]:
        result = []
        for ctx in self.contexts:
            session = ctx.ctrl.api_session
            expires = session.expires_at.isoformat() if session and session.expires_at else None
            contact = ctx.controller_contact
            error = None if contact.error is None else f"controller: {contact.error}"
            checked = _iso(contact.at)
            cert = ctx.renewal.state(ctx.identity, time.time()) if ctx.renewal else None
            result.append(IdentityStatus(
                ctx.name, session is not None, session is not None and error is None, expires,
                len(ctx.services), error, checked,
                _iso(cert.expires_at if cert else ctx.identity.certificate.not_valid_after_utc
                     .timestamp()),
                _iso(cert.renewed_at) if cert else None, cert.error if cert else None,
                cert.expiring if cert else False, _iso(ctx.cached_at)))
        return tuple(result)

    def routers(self) -> tuple[RouterStatus, ...]:
        return tuple(r for ctx in self.contexts for r in router_statuses(ctx))

    def uptime(self) -> float:
        return round(time.monotonic() - self.started, 3)

    async def refresh(self) -> dict[str, int]:
        """Ask every controller for its service list now (listeners see the changes; each
        context records the outcome for `identities()`)."""
        totals = {"added": 0, "changed": 0, "removed": 0, "failed": 0}
        results = await asyncio.gather(*(ctx.refresh_services() for ctx in self.contexts),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, ControllerError | OSError | TimeoutError):
                totals["failed"] += 1
            elif isinstance(result, BaseException):
                raise result
            else:
                for key in ("added", "changed", "removed"):
                    totals[key] += len(getattr(result, key)) if result is not None else 0
        logger.info("ops.services_refreshed", **totals)
        return totals

    def set_log_level(self, level: str) -> None:
        log.set_level(level)

    async def keep_links(self, interval: float = LINK_CHECK_INTERVAL) -> None:
        """Keep one router channel per identity up (links are otherwise opened by dials),
        so readiness means "a flow can start now"; reconnects follow each context's backoff."""
        while True:
            for ctx in self.contexts:
                if ctx.ctrl.api_session is None or best_router(ctx) is not None:
                    continue
                try:
                    await ctx.link_for([])
                except (DialError, ControllerError, OSError) as exc:
                    logger.debug("ops.router_link_pending", identity=ctx.name, error=str(exc))
            await asyncio.sleep(interval)
