"""An identity's client context: controller session, services, router links, dials and binds.

`ZitiContext` authenticates, keeps the service list fresh (polling `lastChangeAt`), shares one
`RouterLink` per edge router among all connections (lazily connected, the lowest-latency
connected one preferred, else the first to finish its hello), caches Dial sessions per service
(dropped when a router says "Invalid Session") and keeps each bound service bound across
router and controller restarts, with backoff and jitter per router and per binding.

Read-only views for the ops layer: `links()` (every known router and its channel) and
`controller_contact` (the time and outcome of the last service or API-session refresh, so a
controller that went away shows within one refresh interval).

After each answered refresh the API session, routers, services and sessions are saved in the
identity's cache (`tunneler.client.cache`, 0600). A start that finds the controller
unreachable serves from that cache (`cached_at` says since when it was saved) and keeps
trying the controller in the background, taking up the same API session when it still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunneler.client.backoff import Backoff
from tunneler.client.cache import CachedState, ServiceCache, cache_path
from tunneler.client.conn import DIAL_TIMEOUT, EdgeConnection, dial
from tunneler.client.ctrl import (
    UNAVAILABLE,
    ControllerClient,
    EdgeRouterRef,
    ServiceInfo,
    SessionRef,
)
from tunneler.client.link import RouterLink
from tunneler.client.listener import BindOptions, DialHandler, EdgeListener
from tunneler.client.renewal import RETRY_CAP, Renewal, expiring, renewal_due
from tunneler.client.services import ServiceChanges, diff_services
from tunneler.edge.appdata import encode_app_data
from tunneler.errors import (
    CacheError,
    ControllerError,
    DialError,
    DialFailure,
    HelloRejected,
    IdentityError,
    InvalidSessionError,
    NotAuthorized,
)
from tunneler.identity import Identity, load_identity
from tunneler.log import get_logger
from tunneler.overlay import OverlaySink

log = get_logger("context")

REFRESH_INTERVAL = 60.0
# Longest wait between attempts to reach a controller or router, or to bind again: after an
# outage of any length, service is back within this much (plus one attempt) of its return.
RECONNECT_CAP = 5.0
RENEWAL_CHECK_INTERVAL = 600.0
MAX_DIAL_ATTEMPTS = 3
#: routers a dialer keeps a connected link to when its sessions list that many
STANDBY_LINKS = 2
#: Dial sessions fetched ahead of the first flow (the rest are made at their first dial)
PREFETCH_SESSIONS = 256
ServiceListener = Callable[[ServiceChanges], None]


@dataclass(frozen=True)
class LinkInfo:
    """One edge router of an identity and the state of our channel to it."""

    router: str                  # the router's name (its URL when the controller gave none)
    url: str                     # tls://host:port
    connected: bool
    latency: float | None        # seconds, the last latency probe's round trip


@dataclass(frozen=True)
class ControllerContact:
    """The last refresh that asked the controller something."""

    at: float | None = None      # wall-clock time (time.time()); None: not yet
    error: str | None = None     # None: it answered


class ZitiContext:
    """Everything one identity needs to dial and host services."""

    def __init__(self, identity: Identity | str | Path, *,
                 refresh_interval: float = REFRESH_INTERVAL,
                 rng: random.Random | None = None) -> None:
        self.identity = identity if isinstance(identity, Identity) else load_identity(identity)
        self.ctrl = ControllerClient(self.identity)
        self.services: dict[str, ServiceInfo] = {}
        self._refresh_interval = refresh_interval
        self._rng = rng or random.Random()
        self._ssl = self.identity.client_ssl_context()
        self._conn_ids = itertools.count()
        self._link_index = itertools.count()
        self._links: dict[str, RouterLink] = {}
        self._connecting: dict[str, asyncio.Task[RouterLink]] = {}
        self._router_backoff: dict[str, Backoff] = {}
        self._router_retry_at: dict[str, float] = {}
        self._routers: list[EdgeRouterRef] = []
        self._dial_sessions: dict[str, SessionRef] = {}
        self.bind_sessions: dict[str, SessionRef] = {}   # service id -> Bind session
        self._sessions_of: str | None = None   # the API session those sessions belong to
        self._listeners: list[ServiceListener] = []
        self._last_change: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.controller_contact = ControllerContact()
        self.renewal = Renewal(self.identity.path) if self.identity.path is not None else None
        self._bindings: list[Binding] = []
        self._prefetching: asyncio.Task[None] | None = None
        path = self.identity.path
        self._cache = ServiceCache(cache_path(path)) if path is not None else None
        self._cache_lock = asyncio.Lock()
        #: when serving from the cache: the time (epoch seconds) it was saved; else None
        self.cached_at: float | None = None

    @property
    def name(self) -> str:
        """Our identity name (from the API session), else the certificate's CN."""
        session = self.ctrl.api_session
        return session.identity_name if session and session.identity_name else \
            self.identity.name_hint

    def next_conn_id(self) -> int:
        """One ConnId counter per context, unique across all links (§3.3)."""
        return next(self._conn_ids) & 0x7FFFFFFF

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Authenticate, list controllers, routers and services, start the refresh loops.

        Raises:
            ControllerError: the controller is unreachable or refused us.
        """
        await self._resume_renewal()
        if self.ctrl.api_session is None:
            await self.ctrl.authenticate()
        else:
            await self.ctrl.resume()
        await self.ctrl.learn_controllers()
        self._routers = await self.ctrl.edge_routers()
        await self.refresh_services()
        self.spawn(self._run_refresh())
        self.spawn(self._run_token_refresh())
        if self.renewal is not None:
            self.spawn(self._run_renewal())

    async def start_retrying(self, stop: asyncio.Event) -> bool:
        """`start()`, retried with backoff while the controller is unreachable.

        Returns:
            True once started; False if `stop` was set first.
        """
        backoff = self._new_backoff()
        while not stop.is_set():
            try:
                await self.start()
                return True
            except ControllerError as exc:
                delay = backoff.failed()
                log.warning("context.start_failed", identity=self.identity.name_hint,
                            error=str(exc), retry_in=round(delay, 2))
                if exc.code == UNAVAILABLE and self._serve_cached(exc):
                    self.spawn(self._start_later(backoff))
                    return True
            with contextlib.suppress(TimeoutError):  # the retry delay passed
                async with asyncio.timeout(delay):
                    await stop.wait()
        return False

    def _serve_cached(self, error: ControllerError) -> bool:
        """Take up the services an earlier run saved (the controller is unreachable:
        `error`); False when there is no usable cache."""
        try:
            state = self._cache.load() if self._cache is not None else None
        except CacheError as exc:
            log.warning("context.cache_unusable", identity=self.identity.name_hint,
                        error=str(exc))
            return False
        if state is None:
            return False
        self.ctrl.restore(state.auth_method, state.api_session, state.tokens)
        self._routers = list(state.routers)
        self.services = dict(state.services)
        for (service_id, kind), session in state.sessions.items():
            (self._dial_sessions if kind == "Dial" else self.bind_sessions)[service_id] = session
        self._sessions_of = state.api_session.id
        self.cached_at = state.saved_at
        self._contacted(error)
        log.warning("context.serving_cached_services", identity=self.name,
                    services=len(self.services), routers=len(self._routers),
                    saved_at=datetime.datetime.fromtimestamp(state.saved_at,
                                                             datetime.UTC).isoformat())
        return True

    async def _start_later(self, backoff: Backoff) -> None:
        """Serving from the cache: keep trying the controller; then refresh as usual. Links
        and sessions of the cached API session go if the controller gave us a new one."""
        cached = self.ctrl.api_session.id if self.ctrl.api_session else None
        while True:
            await asyncio.sleep(backoff.failed())
            try:
                await self.start()
                break
            except ControllerError as exc:
                log.info("context.start_failed", identity=self.name, error=str(exc))
        assert self.ctrl.api_session is not None
        self.sessions_checked()   # those of the cached API session go if it was replaced
        if self.ctrl.api_session.id != cached:
            for link in list(self._links.values()):
                link.close()
        self.cached_at = None
        await self.persist()
        log.info("context.controller_back", identity=self.name,
                 same_api_session=self.ctrl.api_session.id == cached)

    async def close(self) -> None:
        """Stop tasks, close links and the controller client."""
        for task in list(self._tasks) + list(self._connecting.values()):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._connecting.values(), return_exceptions=True)
        for link in list(self._links.values()):
            link.close()
        self._links.clear()
        await self.ctrl.close()

    def _new_backoff(self) -> Backoff:
        return Backoff(cap=RECONNECT_CAP, rng=self._rng)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a background task owned by this context (cancelled by `close()`)."""
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- services --------------------------------------------------------------------------
    def subscribe(self, listener: ServiceListener) -> None:
        """Call `listener(changes)` after every refresh that changed something."""
        self._listeners.append(listener)

    @property
    def routers(self) -> tuple[EdgeRouterRef, ...]:
        """The edge routers the controller listed (or the cache had)."""
        return tuple(self._routers)

    def links(self) -> list[LinkInfo]:
        """Every router the controller listed, then any other router we hold a link to."""
        names = {r.url: r.name for r in self._routers}
        urls = list(names) + [u for u in self._links if u not in names]
        result = []
        for url in urls:
            link = self._links.get(url)
            result.append(LinkInfo(names.get(url) or url, url,
                                   link is not None and not link.closed,
                                   link.latency if link is not None else None))
        return result

    def _contacted(self, error: BaseException | None) -> None:
        self.controller_contact = ControllerContact(time.time(),
                                                    None if error is None else str(error))

    async def refresh_services(self) -> ServiceChanges | None:
        """Re-read the service list if `lastChangeAt` moved; notify subscribers of changes.

        The outcome is kept in `controller_contact`.
        """
        try:
            changes = await self._refresh_services()
        except (ControllerError, OSError, TimeoutError) as exc:
            self._contacted(exc)
            raise
        self._contacted(None)
        return changes

    async def _refresh_services(self) -> ServiceChanges | None:
        last_change = await self.ctrl.service_updates()
        if last_change is not None and last_change == self._last_change:
            return None
        fresh = {service.name: service for service in await self.ctrl.services()}
        changes = diff_services(self.services, fresh)
        self.services, self._last_change = fresh, last_change
        for service in changes.changed + changes.removed:
            self._dial_sessions.pop(service.id, None)
            self.bind_sessions.pop(service.id, None)
        if changes:
            log.info("context.services_changed", identity=self.name, added=len(changes.added),
                     changed=len(changes.changed), removed=len(changes.removed))
            for listener in list(self._listeners):
                listener(changes)
        self._start_prefetch()
        await self.persist()
        return changes

    def sessions_checked(self) -> None:
        """Forget the Dial and Bind sessions of an API session we no longer hold (a router
        would answer "Invalid Session" to each, costing a round trip and a backoff)."""
        current = self.ctrl.api_session.id if self.ctrl.api_session is not None else None
        if current != self._sessions_of:
            if self._dial_sessions or self.bind_sessions:
                log.info("context.sessions_dropped", identity=self.name,
                         dial=len(self._dial_sessions), bind=len(self.bind_sessions))
            self._dial_sessions.clear()
            self.bind_sessions.clear()
            self._sessions_of = current

    def _start_prefetch(self) -> None:
        """After each answered refresh: fetch the Dial sessions still missing (one task)."""
        missing = any("Dial" in s.permissions and s.id not in self._dial_sessions
                      for s in self.services.values())
        if missing and (self._prefetching is None or self._prefetching.done()):
            self._prefetching = self.spawn(self._prefetch_dial_sessions())

    async def _prefetch_dial_sessions(self) -> None:
        """A Dial session for every service we may dial (up to PREFETCH_SESSIONS), so a new
        flow to a known service needs no controller: it keeps working through an outage.
        A service that fails is tried again after the next answered refresh."""
        dialable = [s for s in self.services.values() if "Dial" in s.permissions]
        for service in dialable[:PREFETCH_SESSIONS]:
            self.sessions_checked()
            if service.id in self._dial_sessions:   # a dial made it meanwhile
                continue
            try:
                session = await self.ctrl.create_session(service.id, "Dial")
            except (ControllerError, OSError, TimeoutError) as exc:
                log.info("context.session_prefetch_failed", service=service.name, error=str(exc))
                continue
            self._dial_sessions.setdefault(service.id, session)
        await self.persist()

    async def persist(self) -> None:
        """Save what a restart without the controller needs (written only when it changed;
        a failed write is logged, never fatal)."""
        session = self.ctrl.api_session
        if self._cache is None or session is None or self.cached_at is not None:
            return
        sessions = {**{(k, "Dial"): v for k, v in self._dial_sessions.items()},
                    **{(k, "Bind"): v for k, v in self.bind_sessions.items()}}
        state = CachedState(time.time(), self.ctrl.auth_method, session, self.ctrl.tokens,
                            tuple(self._routers), dict(self.services), sessions)
        async with self._cache_lock:
            try:
                await asyncio.to_thread(self._cache.save, state)
            except OSError as exc:
                log.warning("context.cache_write_failed", identity=self.name,
                            path=str(self._cache.path), error=exc.strerror or str(exc))

    async def _run_refresh(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval)
            try:
                await self._refresh_api_session()
                await self.refresh_services()
            except (ControllerError, OSError, TimeoutError) as exc:
                self._contacted(exc)
                log.warning("context.refresh_failed", identity=self.name, error=str(exc))

    async def _run_token_refresh(self) -> None:
        """OIDC: refresh the access token when two thirds of its life have passed and hand it
        to every router link (UpdateToken); retry with backoff while the controller is away."""
        backoff = self._new_backoff()
        while True:
            expires_at = self.ctrl.token_expires_at
            if expires_at is None:  # legacy session (for now: a controller may start OIDC)
                await asyncio.sleep(self._refresh_interval)
                continue
            await asyncio.sleep(max(0.0, (expires_at - time.time()) * 2 / 3))
            before = self.ctrl.api_session.id if self.ctrl.api_session else None
            try:
                session = await self.ctrl.refresh_api_session()
            except (ControllerError, OSError, TimeoutError) as exc:
                self._contacted(exc)
                delay = backoff.failed()
                log.warning("context.token_refresh_failed", identity=self.name, error=str(exc),
                            retry_in=round(delay, 2))
                await asyncio.sleep(delay)
                continue
            backoff.failures = 0
            self._contacted(None)
            if session.id == before:
                await asyncio.gather(*(link.update_token(session.token)
                                       for link in list(self._links.values())))
            else:  # a new API session: links of the old one cannot be updated
                for link in list(self._links.values()):
                    link.close()
            await self.persist()
            log.debug("context.token_refreshed", identity=self.name)

    # -- certificate renewal ---------------------------------------------------------------
    async def _resume_renewal(self) -> None:
        """A renewal an earlier run left between extend and verify: finish it."""
        if self.renewal is None or (pending := self.renewal.pending()) is None:
            return
        try:
            await self.ctrl.authenticate()
        except NotAuthorized:  # verified already: the old certificate is refused now
            log.info("context.renewal_adopted", identity=self.identity.name_hint)
            self.renewal.promote(pending)
            await self._adopt(pending)
            await self.ctrl.authenticate()
            return
        try:
            await self.ctrl.extend_verify(await self.ctrl.authenticator_id(), pending.cert_pem)
        except ControllerError as exc:
            log.warning("context.renewal_abandoned", identity=self.name, error=str(exc))
            self.renewal.discard()
            return
        self.renewal.promote(pending)
        await self._adopt(pending)
        log.info("context.certificate_renewed", identity=self.name, resumed=True)

    async def renew_certificate(self) -> None:
        """Renew now: new key, extend, write `<file>.renewing`, verify, move it in place.

        Raises:
            ControllerError: the controller refused or could not be reached (the current
                certificate stays in use).
        """
        assert self.renewal is not None
        csr, key = self.renewal.new_request(self.identity)
        authenticator = await self.ctrl.authenticator_id()
        cert = await self.ctrl.extend(authenticator, csr)
        renewed = self.renewal.prepare(self.identity, cert, key)
        await self.ctrl.extend_verify(authenticator, cert)
        self.renewal.promote(renewed)
        await self._adopt(renewed)
        log.info("context.certificate_renewed", identity=self.name,
                 expires_at=renewed.certificate.not_valid_after_utc.isoformat())

    async def _adopt(self, identity: Identity) -> None:
        """Use a renewed certificate: for the controller and new router links at once; open
        links (and the flows on them) stay until they are idle, bindings move over."""
        self.identity = identity
        self._ssl = identity.client_ssl_context()
        await self.ctrl.use_identity(identity)
        if self.ctrl.token_expires_at is not None and self.ctrl.api_session is not None:
            session = await self.ctrl.refresh_api_session()  # z_cfs now lists the new cert
            await asyncio.gather(*(link.update_token(session.token)
                                   for link in list(self._links.values())))
        retired = list(self._links.values())
        self._links.clear()
        for link in retired:
            link.retire()
        for binding in list(self._bindings):
            binding.move()

    async def _run_renewal(self) -> None:
        assert self.renewal is not None
        backoff = Backoff(cap=RETRY_CAP, rng=self._rng)
        while True:
            due = renewal_due(self.identity.certificate)
            if (wait := due - time.time()) > 0:  # in steps: a suspended machine wakes late
                await asyncio.sleep(min(wait, RENEWAL_CHECK_INTERVAL))
                continue
            try:
                await self.renew_certificate()
            except (ControllerError, OSError, TimeoutError, IdentityError) as exc:
                self.renewal.error = str(exc)
                delay = backoff.failed()
                level = log.warning if not expiring(self.identity.certificate, time.time()) \
                    else log.error
                level("context.renewal_failed", identity=self.name, error=str(exc),
                      retry_in=round(delay, 2),
                      expires_at=self.identity.certificate.not_valid_after_utc.isoformat())
                await asyncio.sleep(delay)
            else:
                backoff.failures = 0

    async def _refresh_api_session(self) -> None:
        session = self.ctrl.api_session
        if session is None or session.expires_at is None or \
                self.ctrl.token_expires_at is not None:  # OIDC: `_run_token_refresh`
            return
        left = (session.expires_at - datetime.datetime.now(datetime.UTC)).total_seconds()
        if left < 3 * self._refresh_interval:
            await self.ctrl.refresh_api_session()

    async def service(self, name: str) -> ServiceInfo:
        """A service by name (refreshing the list once if unknown).

        Raises:
            DialError: no such service for this identity.
        """
        if name not in self.services:
            self._last_change = None
            await self.refresh_services()
        try:
            return self.services[name]
        except KeyError:
            raise DialError(f"service {name!r} is not available to {self.name}") from None

    # -- router links ----------------------------------------------------------------------
    async def link_for(self, routers: Sequence[EdgeRouterRef],
                       exclude: frozenset[str] = frozenset()) -> RouterLink:
        """The best link to one of `routers` (not in `exclude`): the lowest-latency connected
        one, else the first to connect. A standby link to a second router is opened in the
        background, so losing one router leaves a connected one for the next flow.

        Raises:
            DialError: none of them can be reached now.
        """
        routers = [r for r in (list(routers) or self._routers) if r.url not in exclude]
        live = [self._links[r.url] for r in routers if r.url in self._links]
        if live:
            self._keep_standby(routers, live)
            return min(live, key=lambda link: float("inf") if link.latency is None
                       else link.latency)
        tasks = [task for r in routers if (task := self._connect(r.url)) is not None]
        errors: list[str] = []
        while tasks:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.cancelled():
                    errors.append("cancelled")
                elif (exc := task.exception()) is not None:
                    errors.append(str(exc))
                else:
                    return task.result()
            tasks = list(pending)
        raise DialError("no edge router reachable: "
                        + ("; ".join(errors) or "all are waiting to retry after failures"),
                        DialFailure.NO_ROUTER)

    def _keep_standby(self, routers: Sequence[EdgeRouterRef], live: Sequence[RouterLink]) -> None:
        """With fewer than STANDBY_LINKS connected, start connecting to one more router."""
        if len(live) >= STANDBY_LINKS or any(r.url in self._connecting for r in routers):
            return
        for router in routers:
            if router.url not in self._links and self._connect(router.url) is not None:
                task = self._connecting[router.url]
                task.add_done_callback(_consume)  # a failure is logged and retried later
                return

    def _connect(self, url: str) -> asyncio.Task[RouterLink] | None:
        task = self._connecting.get(url)
        if task is not None:
            return task
        if asyncio.get_running_loop().time() < self._router_retry_at.get(url, 0.0):
            return None
        task = asyncio.get_running_loop().create_task(self._open_link(url))
        self._connecting[url] = task
        task.add_done_callback(lambda _t: self._connecting.pop(url, None))
        return task

    async def _open_link(self, url: str) -> RouterLink:
        backoff = self._router_backoff.setdefault(url, self._new_backoff())
        loop = asyncio.get_running_loop()
        if self.ctrl.api_session is None:
            await self.ctrl.authenticate()
        assert self.ctrl.api_session is not None
        try:
            link = await RouterLink.open(url, self._ssl, self.ctrl.api_session.token,
                                         index=next(self._link_index),
                                         on_closed=self._link_closed)
        except (OSError, TimeoutError, DialError) as exc:
            self._router_retry_at[url] = loop.time() + backoff.failed()
            log.warning("context.router_unreachable", router=url, error=str(exc) or repr(exc))
            if isinstance(exc, HelloRejected):
                await self._reauthenticate()
            raise DialError(f"{url}: {exc or 'timed out'}") from None
        backoff.connected(loop.time())
        self._links[url] = link
        return link

    async def _reauthenticate(self) -> None:
        """A router refused our token: get a fresh API session for the next attempt."""
        try:
            await self.ctrl.authenticate()
        except ControllerError as exc:
            log.warning("context.reauthentication_failed", identity=self.name, error=str(exc))

    def _link_closed(self, link: RouterLink) -> None:
        if self._links.get(link.url) is link:
            del self._links[link.url]
            backoff = self._router_backoff.setdefault(link.url, self._new_backoff())
            loop = asyncio.get_running_loop()
            self._router_retry_at[link.url] = loop.time() + backoff.lost(loop.time())

    # -- dial ------------------------------------------------------------------------------
    async def dial(self, service_name: str, sink: OverlaySink, *,
                   app_data: dict[str, str | int | None] | None = None,
                   terminator_identity: str | None = None,
                   timeout: float = DIAL_TIMEOUT) -> EdgeConnection:
        """Open a connection to a service; `sink` receives its data.

        Raises:
            DialError: refused, unreachable or timed out (the reason says which).
        """
        try:
            async with asyncio.timeout(timeout):
                return await self._dial(service_name, sink, app_data, terminator_identity,
                                        timeout)
        except TimeoutError:
            raise DialError(f"dial {service_name!r} timed out after {timeout:g}s",
                            DialFailure.TIMEOUT) from None
        except ControllerError as exc:
            raise DialError(f"dial {service_name!r}: controller: {exc}",
                            DialFailure.CONTROLLER) from None

    async def _dial(self, service_name: str, sink: OverlaySink,
                    app_data: dict[str, str | int | None] | None,
                    terminator_identity: str | None, timeout: float) -> EdgeConnection:
        service = await self.service(service_name)
        if "Dial" not in service.permissions:
            raise DialError(f"{self.name} may not dial service {service_name!r}")
        encoded = None if app_data is None else encode_app_data(app_data)
        failed: set[str] = set()   # routers this dial failed through: the next attempt avoids them
        rejected = 0
        while True:
            self.sessions_checked()
            session = self._dial_sessions.get(service.id)
            if session is None:
                session = await self.ctrl.create_session(service.id, "Dial")
                self._dial_sessions[service.id] = session
            link = await self.link_for(session.edge_routers, frozenset(failed))
            try:
                return await dial(link, self.next_conn_id(), session.token, self.name, sink,
                                  encrypted=service.encryption_required, app_data=encoded,
                                  terminator_identity=terminator_identity, timeout=timeout)
            except InvalidSessionError:
                log.info("context.dial_session_rejected", service=service_name)
                self._dial_sessions.pop(service.id, None)
                rejected += 1
                if rejected >= MAX_DIAL_ATTEMPTS:
                    raise DialError(f"service {service_name!r} unavailable: session rejected "
                                    f"{MAX_DIAL_ATTEMPTS} times") from None
            except DialError as exc:
                failed.add(link.url)
                others = {r.url for r in (session.edge_routers or self._routers)} - failed
                if not others:
                    raise
                log.info("context.dial_retried", service=service_name, router=link.url,
                         error=str(exc))

    # -- bind ------------------------------------------------------------------------------
    def bind(self, service: ServiceInfo, on_dial: DialHandler,
             options: BindOptions | None = None) -> Binding:
        """Host `service`: keep it bound (re-binding after losses) until `Binding.stop()`."""
        binding = Binding(self, service, on_dial, options or BindOptions())
        binding.task = self.spawn(binding.run())
        self._bindings.append(binding)
        return binding


@dataclass
class Binding:
    """A service kept bound on every edge router its Bind session lists, one task each.

    Per router at most one listener is live: binding and swapping happen under that router's
    lock, a listener enters `listeners` only once its Bind succeeded, and `move()` replaces
    only the listener it found (a loop that rebound meanwhile wins; the extra one is unbound).
    """

    context: ZitiContext
    service: ServiceInfo
    on_dial: DialHandler
    options: BindOptions
    task: asyncio.Task[None] | None = None
    listeners: dict[str, EdgeListener] = field(default_factory=dict)   # router URL -> listener
    routers: dict[str, EdgeRouterRef] = field(default_factory=dict)    # URL -> router bound on
    _session_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _moving: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Learn the routers from a Bind session (retrying), then keep each one bound."""
        ctx = self.context
        backoff = ctx._new_backoff()
        while True:
            try:
                routers = (await self._bind_session()).edge_routers or tuple(ctx._routers)
                break
            except (DialError, ControllerError, OSError, TimeoutError) as exc:
                delay = backoff.failed()
                log.warning("host.bind_failed", service=self.service.name, error=str(exc),
                            retry_in=round(delay, 2))
                await asyncio.sleep(delay)
        self.routers = {router.url: router for router in routers}
        async with asyncio.TaskGroup() as group:   # one loop ending badly cancels the others
            for router in self.routers.values():
                group.create_task(self._keep_bound(router))

    async def _bind_session(self) -> SessionRef:
        """The service's Bind session, kept by the context (so it is cached with the rest)."""
        ctx = self.context
        async with self._session_lock:   # the per-router loops share one session
            ctx.sessions_checked()
            session = ctx.bind_sessions.get(self.service.id)
            if session is None:
                session = await ctx.ctrl.create_session(self.service.id, "Bind")
                ctx.bind_sessions[self.service.id] = session
                await ctx.persist()
            return session

    async def _keep_bound(self, router: EdgeRouterRef) -> None:
        """Bind on `router`, wait for loss, back off, bind again."""
        backoff = self.context._new_backoff()
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._bind_once(router)
            except (DialError, ControllerError, OSError, TimeoutError) as exc:
                delay = backoff.failed()
                log.warning("host.bind_failed", service=self.service.name, router=router.url,
                            error=str(exc), retry_in=round(delay, 2))
            else:
                backoff.connected(loop.time())
                log.info("host.service_bound", service=self.service.name,
                         identity=self.context.name, router=router.url)
                await self._wait_unbound(router.url)
                delay = backoff.lost(loop.time())
                log.warning("host.service_unbound", service=self.service.name,
                            router=router.url, retry_in=round(delay, 2))
            await asyncio.sleep(delay)

    def bound_on(self) -> tuple[str, ...]:
        """The names of the routers where the service is bound now (a live listener)."""
        return tuple(sorted((self.routers[url].name if url in self.routers else "") or url
                            for url, listener in self.listeners.items() if not listener.closed))

    async def _wait_unbound(self, url: str) -> None:
        """Until the router's current listener is gone (one `move()` replaced does not count)."""
        while (listener := self.listeners.get(url)) is not None and not listener.closed:
            await listener.wait_closed()

    def move(self) -> None:
        """Rebind on links of the current certificate, in the background (one at a time)."""
        if self._moving is None or self._moving.done():
            self._moving = self.context.spawn(self._move())

    async def _move(self) -> None:
        """Bind anew on each router, then unbind the listener found there: no moment without
        a terminator (a failure leaves the old one; the loops carry on)."""
        for url, router in self.routers.items():
            old = self.listeners.get(url)
            if old is None or old.closed:
                continue   # that router's loop is rebinding anyway
            try:
                await self._bind_once(router, replacing=old)
            except (DialError, ControllerError, OSError, TimeoutError) as exc:
                log.warning("host.bind_move_failed", service=self.service.name, router=url,
                            error=str(exc))
                continue
            log.info("host.service_rebound", service=self.service.name, router=url)

    async def _bind_once(self, router: EdgeRouterRef,
                         replacing: EdgeListener | None = None) -> None:
        """Bind on `router`. Without `replacing`, only when no live listener is there; with
        it, only while it is still the one there (then it is unbound after the new Bind)."""
        ctx = self.context
        async with self._locks.setdefault(router.url, asyncio.Lock()):
            current = self.listeners.get(router.url)
            live = current is not None and not current.closed
            if (replacing is None and live) or (replacing is not None and current is not replacing):
                return
            session = await self._bind_session()
            link = await ctx.link_for([router])
            listener = EdgeListener(link, ctx.next_conn_id(), session.token, ctx.name,
                                    self.on_dial, ctx.next_conn_id,
                                    encrypted=self.service.encryption_required,
                                    options=self.options)
            try:
                await listener.bind()
            except InvalidSessionError:   # the next attempt asks the controller for a new one
                if ctx.bind_sessions.get(self.service.id) is session:
                    del ctx.bind_sessions[self.service.id]
                raise
            self.listeners[router.url] = listener
            if replacing is not None:
                replacing.unbind()

    async def stop(self) -> None:
        """Unbind everywhere and stop re-binding."""
        with contextlib.suppress(ValueError):
            self.context._bindings.remove(self)
        for task in (self.task, self._moving):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for listener in self.listeners.values():
            listener.unbind()


def _consume(task: asyncio.Task[RouterLink]) -> None:
    """Retrieve a background connect's outcome (`_open_link` logged a failure)."""
    if not task.cancelled():
        task.exception()
