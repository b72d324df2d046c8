"""A tiny sd_notify(3): READY=1, STOPPING=1, WATCHDOG=1 and STATUS= over $NOTIFY_SOCKET.

Outside systemd ($NOTIFY_SOCKET unset) every call is a no-op. The watchdog is fed by a task on
the daemon's own event loop every half of $WATCHDOG_USEC, so a wedged loop stops feeding it
and systemd restarts the service (reliability.md §3, `WatchdogSec=`).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

from tunneler.log import get_logger

log = get_logger("sdnotify")

MAX_STATUS = 200
SEND_TIMEOUT = 0.5


def _address(value: str) -> str:
    """A socket path, or an abstract address (leading "@" → NUL)."""
    return "\0" + value[1:] if value.startswith("@") else value


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when not asked for.

    Honours $WATCHDOG_PID: the pings are for that process only.
    """
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


class Notifier:
    """Sends state changes to the service manager."""

    def __init__(self, address: str | None = None) -> None:
        if address is None:
            address = os.environ.get("NOTIFY_SOCKET")
        self.address = _address(address) if address else None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send `KEY=VALUE` lines as one datagram; False (logged) when it could not be sent."""
        if self.address is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.settimeout(SEND_TIMEOUT)   # a full queue: wait briefly, never lose READY
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except (OSError, TimeoutError) as exc:
            log.warning("sdnotify.send_failed", error=str(exc), fields=[f.split("=")[0]
                                                                         for f in fields])
            return False
        return True

    def ready(self, status: str = "ready") -> bool:
        return self.send("READY=1", f"STATUS={status[:MAX_STATUS]}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text.replace(chr(10), ' ')[:MAX_STATUS]}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def run_watchdog(notifier: Notifier, interval: float) -> None:
    """Ping WATCHDOG=1 every `interval` seconds until cancelled."""
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)
