"""TUN devices: the kernel one (`LinuxTun`) and an in-memory fake (`SocketPairTun`).

Both satisfy `TunDevice`: a non-blocking file descriptor (``fileno()``) for
``loop.add_reader``, ``read_into(buffer)`` for one packet into a reused buffer,
``write(packet)`` and ``close()``. Only one task may read and write a device (concurrent
access reorders packets, design.md §2); the engine's ``TunPump`` drains up to a batch of
packets per loop turn with ``read_into``.

`LinuxTun` opens ``/dev/net/tun`` with ``TUNSETIFF`` (``IFF_TUN | IFF_NO_PI``) and never
``TUNSETPERSIST``: when the process dies the kernel deletes the device and every route through
it (reliability.md §3.4).

`SocketPairTun` wraps one end of ``socketpair(AF_UNIX, SOCK_SEQPACKET)`` (packet boundaries
are preserved); tests play the kernel on ``peer``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from typing import Protocol

from tunneler.errors import TunError
from tunneler.log import get_logger

log = get_logger("tun")

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFNAMSIZ = 16

MAX_FRAME = 65535  # the largest IP packet
_IFREQ = struct.Struct("16sH22x")


class TunDevice(Protocol):
    """What the engine needs from a TUN device."""

    @property
    def name(self) -> str: ...

    def fileno(self) -> int: ...

    def read_into(self, buffer: bytearray | memoryview) -> int: ...

    def write(self, packet: bytes | bytearray | memoryview) -> bool: ...

    def close(self) -> None: ...


def _read_into(fd: int, buffer: bytearray | memoryview) -> int:
    """One packet into ``buffer``; 0 when nothing is waiting."""
    try:
        return os.readv(fd, [buffer])
    except BlockingIOError:
        return 0


def _write(fd: int, packet: bytes | bytearray | memoryview) -> bool:
    """Write one packet; False when the kernel queue is full (the packet is dropped)."""
    try:
        os.write(fd, packet)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno == errno.ENOBUFS:
            return False
        raise
    return True


def _check_name(name: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or any(c in name for c in "/: \t\n") or name in (".", ".."):
        raise TunError(f"invalid interface name {name!r}: 1-15 characters, no '/', ':' or spaces")
    return raw


def _open_error(exc: OSError, name: str) -> TunError:
    if exc.errno == errno.ENOENT:
        return TunError(f"{TUN_PATH} does not exist: load the module (`modprobe tun`), or in a "
                        "container pass the device (`--device /dev/net/tun`)")
    if exc.errno == errno.EACCES:  # the device node's mode, not a missing capability
        return TunError(f"cannot open {TUN_PATH}: permission denied; most systems make it "
                        f"mode 0666 (`chmod 0666 {TUN_PATH}`, or a udev rule), else run as root")
    if exc.errno == errno.EPERM:
        return TunError(f"not allowed to create TUN device {name!r}: run as root or grant "
                        "CAP_NET_ADMIN (systemd: AmbientCapabilities=CAP_NET_ADMIN)")
    if exc.errno == errno.EBUSY:
        return TunError(f"TUN device {name!r} is in use by another process")
    return TunError(f"cannot create TUN device {name!r}: {exc.strerror}")


class LinuxTun:
    """A kernel TUN device owned by this process (never persistent)."""

    def __init__(self, name: str = "tunneler0") -> None:
        raw = _check_name(name)
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise _open_error(exc, name) from exc
        try:
            result = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(raw, IFF_TUN | IFF_NO_PI))
            os.set_blocking(fd, False)
        except OSError as exc:
            os.close(fd)
            raise _open_error(exc, name) from exc
        self._fd = fd
        self._name = bytes(result[:IFNAMSIZ]).rstrip(b"\0").decode()
        log.info("tun.device_opened", name=self._name)

    @property
    def name(self) -> str:
        return self._name

    def fileno(self) -> int:
        return self._fd

    def read_into(self, buffer: bytearray | memoryview) -> int:
        """Read one packet into ``buffer`` (size it `MAX_FRAME`); 0 when none is waiting."""
        return _read_into(self._fd, buffer)

    def write(self, packet: bytes | bytearray | memoryview) -> bool:
        """Write one IP packet; False when the kernel queue is full (the packet is dropped)."""
        return _write(self._fd, packet)

    def close(self) -> None:
        """Close the fd; the kernel deletes the device and its routes."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            log.info("tun.device_closed", name=self._name)

    def __enter__(self) -> LinuxTun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SocketPairTun:
    """A fake TUN with a real fd: tests write packets into ``peer`` and read replies from it."""

    def __init__(self, name: str = "fake0", *, buffer_bytes: int = 1 << 20) -> None:
        self._sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for sock in (self._sock, self.peer):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_bytes)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
        self._sock.setblocking(False)
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def fileno(self) -> int:
        return self._sock.fileno()

    def read_into(self, buffer: bytearray | memoryview) -> int:
        return _read_into(self._sock.fileno(), buffer)

    def write(self, packet: bytes | bytearray | memoryview) -> bool:
        return _write(self._sock.fileno(), packet)

    def close(self) -> None:
        """Close both ends."""
        self._sock.close()
        self.peer.close()

    def __enter__(self) -> SocketPairTun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
