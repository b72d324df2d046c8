"""The control socket: a Unix socket speaking one JSON object per line, and its client.

Request ``{"command": NAME, "data": {...}}`` → response
``{"success": bool, "error": str | null, "data": ...}``. Commands: ``status``,
``intercepts``, ``set_log_level`` (``{"level": "debug"}``) and ``refresh``.

Access (security.md SEC-31): the socket file is mode 0660 (group: the daemon's
group or `group`), and every connection's peer is checked with SO_PEERCRED: root, the
daemon's own user, or a member of the socket's group. Requests are capped at
`MAX_REQUEST` bytes, clients at `MAX_CLIENTS`, idle connections close after
`IDLE_TIMEOUT`. Answers never contain secrets: only the snapshot types of `snapshot`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import json
import os
import pwd
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tunneler.errors import ControlError, TunnelerError
from tunneler.log import get_logger
from tunneler.ops.options import DEFAULT_SOCKET
from tunneler.ops.render import status_json
from tunneler.ops.snapshot import DaemonView, to_json

log = get_logger("control")

MAX_REQUEST = 64 * 1024
MAX_RESPONSE = 16 * 1024 * 1024
MAX_CLIENTS = 16
IDLE_TIMEOUT = 30.0
REFUSE_TIMEOUT = 2.0
REFRESH_TIMEOUT = 30.0
_PEERCRED = struct.Struct("3i")
_GID = struct.Struct("I")
#: <linux/socket.h> (Python does not export it)
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
MAX_PEERGROUPS_BYTES = 1024   # CPython's getsockopt buffer limit

Handler = Callable[[DaemonView, dict[str, Any]], Awaitable[Any]]


# ---- commands --------------------------------------------------------------------------------


async def _status(view: DaemonView, _data: dict[str, Any]) -> Any:
    return status_json(view.status())


async def _intercepts(view: DaemonView, _data: dict[str, Any]) -> Any:
    return {"intercepts": to_json(view.intercepts())}


async def _set_log_level(view: DaemonView, data: dict[str, Any]) -> Any:
    level = data.get("level")
    if not isinstance(level, str):
        raise ValueError('set_log_level needs {"level": NAME}')
    view.set_log_level(level)
    log.info("control.log_level_changed", level=level)
    return {"level": level}


async def _refresh(view: DaemonView, _data: dict[str, Any]) -> Any:
    async with asyncio.timeout(REFRESH_TIMEOUT):
        return await view.refresh()


COMMANDS: dict[str, Handler] = {
    "status": _status,
    "intercepts": _intercepts,
    "set_log_level": _set_log_level,
    "refresh": _refresh,
}


async def dispatch(view: DaemonView, line: bytes) -> dict[str, Any]:
    """Answer one request line; never raises for bad input."""
    try:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise ValueError("request must be a JSON object")
        command, data = request.get("command"), request.get("data") or {}
        handler = COMMANDS.get(command) if isinstance(command, str) else None
        if handler is None:
            raise ValueError(f"unknown command {command!r}; known: {', '.join(COMMANDS)}")
        if not isinstance(data, dict):
            raise ValueError("data must be a JSON object")
        return {"success": True, "error": None, "data": await handler(view, data)}
    except (ValueError, TunnelerError, TimeoutError) as exc:
        return {"success": False, "error": str(exc) or type(exc).__name__, "data": None}


# ---- access ----------------------------------------------------------------------------------


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix stream socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


def peer_groups(sock: socket.socket, uid: int, gid: int) -> set[int]:
    """The peer's supplementary groups, from the kernel (SO_PEERGROUPS, Linux 4.13).

    Not from /proc/PID/status: the unit's ProtectProc=invisible hides other users'
    processes, so a member of the socket's group would be refused (and a PID can be reused).
    CPython's getsockopt takes at most 1024 bytes (256 groups); a peer in more groups than
    that is looked up in the group database instead.
    """
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, MAX_PEERGROUPS_BYTES)
    except OSError as exc:
        if exc.errno != errno.ERANGE:
            return set()
        try:
            return set(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
        except KeyError:
            return set()
    return {group for (group,) in _GID.iter_unpack(raw[:len(raw) - len(raw) % _GID.size])}


def is_allowed(uid: int, gid: int, socket_gid: int, groups: Callable[[], set[int]]) -> bool:
    """Root, our own user, or a member (primary or supplementary) of the socket's group."""
    if uid in (0, os.geteuid()) or gid == socket_gid:
        return True
    return socket_gid in groups()


# ---- server ----------------------------------------------------------------------------------


class ControlServer:
    """Serves a `DaemonView` on a Unix socket until `close()`."""

    def __init__(self, view: DaemonView, path: Path = DEFAULT_SOCKET, *,
                 group: str | None = None) -> None:
        self.view = view
        self.path = path
        self._group = group
        self._gid = os.getegid()
        self._server: asyncio.Server | None = None
        self._clients = 0

    async def start(self) -> None:
        """Bind the socket (replacing a stale one), set its mode and group.

        Raises:
            ControlError: the path is taken by a live daemon, is not a socket, or its
                directory is not ours to write.
        """
        if self._group is not None:
            self._gid = _group_id(self._group)
        try:
            _remove_stale(self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            old_umask = os.umask(0o117)   # the socket only: the directory keeps its x bits
            try:
                self._server = await asyncio.start_unix_server(self._serve, self.path,
                                                               limit=MAX_REQUEST)
            finally:
                os.umask(old_umask)
        except OSError as exc:
            raise ControlError(f"control socket {self.path}: {exc.strerror or exc}: make "
                               f"{self.path.parent} writable by uid {os.geteuid()}, choose "
                               "another --control-socket, or turn it off with "
                               "--control-socket ''") from None
        try:
            if os.stat(self.path).st_gid != self._gid:  # chown is denied to the hardened units
                os.chown(self.path, -1, self._gid)
            os.chmod(self.path, 0o660)
        except OSError as exc:
            await self.close()
            raise ControlError(f"control socket {self.path}: cannot set group "
                               f"{self._gid}: {exc.strerror}") from None
        log.info("control.listening", path=str(self.path), gid=self._gid)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock: socket.socket = writer.get_extra_info("socket")
        try:
            pid, uid, gid = peer_credentials(sock)
            if not is_allowed(uid, gid, self._gid, lambda: peer_groups(sock, uid, gid)):
                log.warning("control.peer_refused", pid=pid, uid=uid, gid=gid)
                await _refuse(reader, writer, "permission denied: not root and not in the "
                                              "tunneler socket's group")
                return
            if self._clients >= MAX_CLIENTS:
                await _refuse(reader, writer, "too many control clients")
                return
            self._clients += 1
            try:
                await self._requests(reader, writer)
            finally:
                self._clients -= 1
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.debug("control.client_dropped", error=repr(exc))
        finally:
            writer.close()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    line = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                await _answer(writer, {"success": False, "data": None,
                                       "error": f"request longer than {MAX_REQUEST} bytes"})
                return
            if not line:
                return
            await _answer(writer, await dispatch(self.view, line))


async def _refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, error: str) -> None:
    """Answer `error` to the first request; reading it first lets the peer see the answer
    (closing a Unix socket with unread data resets the connection)."""
    with contextlib.suppress(ValueError, TimeoutError):
        async with asyncio.timeout(REFUSE_TIMEOUT):
            await reader.readline()
    await _answer(writer, {"success": False, "error": error, "data": None})


async def _answer(writer: asyncio.StreamWriter, response: dict[str, Any]) -> None:
    writer.write(json.dumps(response, ensure_ascii=False).encode() + b"\n")
    await writer.drain()


def _group_id(name: str) -> int:
    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise ControlError(f"control socket group {name!r} does not exist") from None


def _remove_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path} exists and is not a socket; remove it or choose another path")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
            return
    raise ControlError(f"another tunneler is already listening on {path}")


# ---- client ----------------------------------------------------------------------------------


def request(path: Path, command: str, data: dict[str, Any] | None = None, *,
            timeout: float = REFRESH_TIMEOUT + 5) -> Any:
    """Send one command and return its `data`.

    Raises:
        ControlError: no daemon listens there, we may not use it, or the command failed.
    """
    payload = json.dumps({"command": command, "data": data or {}}).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(payload)
            line = _read_line(sock)
    except FileNotFoundError:
        raise ControlError(f"no daemon: {path} does not exist (is tunneler running? "
                           "is --control-socket right?)") from None
    except PermissionError:
        raise ControlError(f"permission denied on {path}: run as root or as a member "
                           "of its group") from None
    except (OSError, TimeoutError) as exc:
        raise ControlError(f"control socket {path}: {exc or 'timed out'}") from None
    return _unwrap(line)


def _read_line(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n"):
            break
        if size > MAX_RESPONSE:
            raise ControlError(f"control answer longer than {MAX_RESPONSE} bytes")
    return b"".join(chunks)


def _unwrap(line: bytes) -> Any:
    if not line:
        raise ControlError("the daemon closed the control connection without answering")
    try:
        response = json.loads(line)
    except ValueError:
        raise ControlError("the daemon's answer is not JSON") from None
    if not isinstance(response, dict) or not isinstance(response.get("success"), bool):
        raise ControlError("the daemon's answer is not a control response")
    if not response["success"]:
        raise ControlError(str(response.get("error") or "command failed"))
    return response.get("data")
