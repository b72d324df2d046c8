"""TUN devices: the kernel one (`LinuxTun`) and an in-memory fake (`SocketPairTun`).

Both satisfy `TunDevice`: a non-blocking file descriptor for ``loop.add_reader``,
``read_batch(max_packets)`` that drains up to N packets per loop turn, ``read_into(buffer)``
for a reused buffer, ``write(packet)``, ``fileno()`` and ``close()``. Only one task may read
and write a device (concurrent access reorders packets, design.md §2).

`LinuxTun` opens ``/dev/net/tun`` with ``TUNSETIFF`` (``IFF_TUN | IFF_NO_PI``) and never
``TUNSETPERSIST``: when the process dies the kernel deletes the device and every route through
it (reliability.md §3.4). With ``offload=True`` it also sets ``IFF_VNET_HDR`` and
``TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)``: every frame read or written then
starts with a 10-byte `VnetHeader`, and the kernel may hand over up-to-64 KiB TSO
super-packets. Frames are returned as read (header included); `split_vnet` separates them and
``write`` prepends a header when offload is on.

`SocketPairTun` wraps one end of ``socketpair(AF_UNIX, SOCK_SEQPACKET)`` (packet boundaries
are preserved); tests play the kernel on ``peer``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from dataclasses import dataclass
from typing import Protocol

from tunneler.errors import TunnelerError
from tunneler.log import get_logger

log = get_logger("tun")

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
IFNAMSIZ = 16

VNET_HDR_LEN = 10
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4

MAX_FRAME = VNET_HDR_LEN + 65535  # largest IP packet plus the offload header
_IFREQ = struct.Struct("16sH22x")
_VNET = struct.Struct("<BBHHHH")


class TunError(TunnelerError):
    """A TUN device could not be created or used; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class VnetHeader:
    """The ``virtio_net_hdr`` that precedes each frame when offload is on (little-endian)."""

    flags: int = 0
    gso_type: int = VIRTIO_NET_HDR_GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        """The 10 wire bytes."""
        return _VNET.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                          self.csum_start, self.csum_offset)

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> VnetHeader:
        """Parse the first 10 bytes of a frame; ValueError when it is shorter."""
        if len(data) < VNET_HDR_LEN:
            raise ValueError(f"frame of {len(data)} bytes is shorter than a virtio_net_hdr")
        return cls(*_VNET.unpack_from(data))


NO_OFFLOAD_HEADER = VnetHeader().pack()


def split_vnet(frame: bytes | bytearray | memoryview) -> tuple[VnetHeader, memoryview]:
    """Split an offload frame into its header and the IP packet (no copy)."""
    return VnetHeader.unpack(frame), memoryview(frame)[VNET_HDR_LEN:]


class TunDevice(Protocol):
    """What the engine needs from a TUN device."""

    @property
    def name(self) -> str: ...

    @property
    def offload(self) -> bool: ...  # frames carry a VnetHeader

    def fileno(self) -> int: ...

    def read_batch(self, max_packets: int) -> list[bytes]: ...

    def read_into(self, buffer: bytearray | memoryview) -> int: ...

    def write(self, packet: bytes | bytearray | memoryview) -> bool: ...

    def close(self) -> None: ...


def _read_batch(fd: int, max_packets: int, frame_size: int) -> list[bytes]:
    """Read until the fd would block or ``max_packets`` are in hand."""
    packets: list[bytes] = []
    while len(packets) < max_packets:
        try:
            data = os.read(fd, frame_size)
        except BlockingIOError:
            break
        if not data:
            break
        packets.append(data)
    return packets


def _read_into(fd: int, buffer: bytearray | memoryview) -> int:
    """One packet into ``buffer``; 0 when nothing is waiting."""
    try:
        return os.readv(fd, [buffer])
    except BlockingIOError:
        return 0


def _write(fd: int, parts: list[bytes | bytearray | memoryview]) -> bool:
    """Write one packet; False when the kernel queue is full (the packet is dropped)."""
    try:
        os.writev(fd, parts)
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

    def __init__(self, name: str = "tunneler0", *, offload: bool = False) -> None:
        raw = _check_name(name)
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise _open_error(exc, name) from exc
        try:
            result = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(raw, flags))
            if offload:
                fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
            os.set_blocking(fd, False)
        except OSError as exc:
            os.close(fd)
            raise _open_error(exc, name) from exc
        self._fd = fd
        self._name = bytes(result[:IFNAMSIZ]).rstrip(b"\0").decode()
        self._offload = offload
        log.info("tun.device_opened", name=self._name, offload=offload)

    @property
    def name(self) -> str:
        return self._name

    @property
    def offload(self) -> bool:
        return self._offload

    def fileno(self) -> int:
        return self._fd

    def read_batch(self, max_packets: int) -> list[bytes]:
        """Up to ``max_packets`` frames (with their `VnetHeader` when offload is on)."""
        return _read_batch(self._fd, max_packets, MAX_FRAME)

    def read_into(self, buffer: bytearray | memoryview) -> int:
        """Read one frame into ``buffer`` (size it `MAX_FRAME`); 0 when none is waiting."""
        return _read_into(self._fd, buffer)

    def write(self, packet: bytes | bytearray | memoryview,
              header: VnetHeader | None = None) -> bool:
        """Write one IP packet; with offload on, ``header`` (default: no offload) goes first."""
        if not self._offload:
            return _write(self._fd, [packet])
        return _write(self._fd, [header.pack() if header else NO_OFFLOAD_HEADER, packet])

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

    @property
    def offload(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._sock.fileno()

    def read_batch(self, max_packets: int) -> list[bytes]:
        return _read_batch(self._sock.fileno(), max_packets, MAX_FRAME)

    def read_into(self, buffer: bytearray | memoryview) -> int:
        return _read_into(self._sock.fileno(), buffer)

    def write(self, packet: bytes | bytearray | memoryview) -> bool:
        return _write(self._sock.fileno(), [packet])

    def close(self) -> None:
        """Close both ends."""
        self._sock.close()
        self.peer.close()

    def __enter__(self) -> SocketPairTun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
