"""Unit tests for the fake TUN (real fd, no root) and interface-name checks."""

from __future__ import annotations

import select

import pytest

from tunneler.errors import TunError
from tunneler.tun.device import MAX_FRAME, LinuxTun, SocketPairTun, TunDevice


def test_socketpair_tun_keeps_packet_boundaries() -> None:
    with SocketPairTun() as tun:
        device: TunDevice = tun
        buffer = bytearray(MAX_FRAME)
        assert device.read_into(buffer) == 0
        for packet in (b"\x45" * 1500, b"\x45\x00", b"\x60" * 60000):
            tun.peer.send(packet)
        assert select.select([device], [], [], 1)[0]
        assert [device.read_into(buffer) for _ in range(3)] == [1500, 2, 60000]
        assert buffer[:60000] == b"\x60" * 60000
        assert device.read_into(buffer) == 0
        assert device.write(b"\x45reply") is True
        assert tun.peer.recv(100) == b"\x45reply"


@pytest.mark.parametrize("name", ["", "x" * 16, "a/b", "a b", ".."])
def test_bad_interface_names_are_refused_before_any_syscall(name: str) -> None:
    with pytest.raises(TunError, match="invalid interface name"):
        LinuxTun(name)
