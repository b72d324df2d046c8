"""The ops layer as one piece the daemon starts: control socket, metrics, sd_notify, watchdog.

Wiring in a daemon (`tunneler run`, `tunneler run-host`)::

    parser: ops.options.add_arguments(run_parser)
    async:  async with ops.runtime.serve(view, OpsConfig.from_args(args)) as ops:
                ...            # run until stop
                ops.stopping() # first thing of the graceful shutdown

READY=1 is sent the first time `snapshot.problems(view.status())` is empty; STATUS= follows
every change of the problem list afterwards; WATCHDOG=1 is sent from this event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any

from tunneler.errors import ConfigError
from tunneler.log import get_logger
from tunneler.ops.control import ControlServer
from tunneler.ops.metrics import MetricsServer
from tunneler.ops.options import OpsConfig
from tunneler.ops.sdnotify import Notifier, run_watchdog, watchdog_interval
from tunneler.ops.snapshot import DaemonView, problems

log = get_logger("ops")

READY_POLL = 0.25


class Ops:
    """Running control socket, metrics listener and service-manager notifications."""

    def __init__(self, view: DaemonView, config: OpsConfig,
                 notifier: Notifier | None = None,
                 background: Sequence[Coroutine[Any, Any, None]] = ()) -> None:
        self.view = view
        self._background = list(background)
        self.config = config
        self.notifier = notifier or Notifier()
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None
        self.is_ready = False
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        """Open the listeners and start the notify tasks.

        Raises:
            ControlError: the control socket is taken; ConfigError: bad or busy metrics address.
        """
        if self.config.control_socket is not None:
            self.control = ControlServer(self.view, self.config.control_socket,
                                         group=self.config.control_group)
            await self.control.start()
        if self.config.metrics_listen is not None:
            self.metrics = MetricsServer(self.view, self.config.metrics_listen)
            try:
                await self.metrics.start()
            except OSError as exc:
                raise ConfigError(f"--metrics-listen {self.config.metrics_listen}: "
                                  f"{exc.strerror or exc}") from None
        loop = asyncio.get_running_loop()
        interval = watchdog_interval()
        if self.notifier.enabled and interval is not None:
            self._tasks.append(loop.create_task(run_watchdog(self.notifier, interval)))
        self._tasks.append(loop.create_task(self._watch_readiness()))
        self._tasks.extend(loop.create_task(coro) for coro in self._background)
        self._background = []

    async def _watch_readiness(self) -> None:
        last: list[str] | None = None
        while not self._stopping:
            try:
                found = problems(self.view.status())
            except Exception:  # task boundary: a bug in the view must not stop the notifications
                log.exception("task.crashed", task="ops.readiness")
                found = ["status unavailable"]
            if found != last:
                self._report(found)
                last = found
            await asyncio.sleep(READY_POLL)

    def _report(self, found: list[str]) -> None:
        if not found and not self.is_ready:
            self.is_ready = True
            self.notifier.ready()
            log.info("ops.ready_notified")
        elif found:
            self.notifier.status(("degraded: " if self.is_ready else "starting: ")
                                 + "; ".join(found))
            log.info("ops.not_ready", problems=found)
        else:
            self.notifier.status("ready")

    def stopping(self) -> None:
        """Tell the service manager we are stopping (idempotent)."""
        if not self._stopping:
            self._stopping = True
            self.notifier.stopping()

    async def close(self) -> None:
        self.stopping()
        for coro in self._background:      # never started (start() failed early)
            coro.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.metrics is not None:
            await self.metrics.close()
        if self.control is not None:
            await self.control.close()
        self.notifier.close()


@contextlib.asynccontextmanager
async def serve(view: DaemonView, config: OpsConfig, notifier: Notifier | None = None,
                background: Sequence[Coroutine[Any, Any, None]] = ()) -> AsyncIterator[Ops]:
    """Start `Ops` for `view` (and the `background` coroutines, e.g. `view.keep_links()`);
    stop it all (STOPPING=1, tasks cancelled, listeners closed) on exit."""
    ops = Ops(view, config, notifier, background)
    try:
        await ops.start()
        yield ops
    finally:
        await ops.close()
