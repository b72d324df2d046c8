"""Unit tests for the fake TUN (real fd, no root) and the virtio_net_hdr codec."""

from __future__ import annotations

import select

import pytest

from tunneler.tun.device import (
    MAX_FRAME,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VNET_HDR_LEN,
    LinuxTun,
    SocketPairTun,
    TunDevice,
    TunError,
    VnetHeader,
    split_vnet,
)


def test_socketpair_tun_keeps_packet_boundaries_and_batches() -> None:
    with SocketPairTun() as tun:
        device: TunDevice = tun
        assert device.read_batch(8) == []
        for packet in (b"\x45" * 1500, b"\x45\x00", b"\x60" * 60000):
            tun.peer.send(packet)
        assert select.select([device], [], [], 1)[0]
        batch = device.read_batch(2)
        assert [len(p) for p in batch] == [1500, 2]
        buffer = bytearray(MAX_FRAME)
        assert device.read_into(buffer) == 60000
        assert device.read_into(buffer) == 0
        assert device.write(b"\x45reply") is True
        assert tun.peer.recv(100) == b"\x45reply"
        assert device.offload is False


def test_vnet_header_round_trip_and_split() -> None:
    header = VnetHeader(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 34, 16)
    wire = header.pack()
    assert len(wire) == VNET_HDR_LEN
    assert wire == bytes([1, 1, 54, 0, 0xA8, 0x05, 34, 0, 16, 0])  # little-endian
    parsed, packet = split_vnet(wire + b"\x45payload")
    assert parsed == header and bytes(packet) == b"\x45payload"
    with pytest.raises(ValueError, match="shorter"):
        VnetHeader.unpack(b"\x00" * 9)


@pytest.mark.parametrize("name", ["", "x" * 16, "a/b", "a b", ".."])
def test_bad_interface_names_are_refused_before_any_syscall(name: str) -> None:
    with pytest.raises(TunError, match="invalid interface name"):
        LinuxTun(name)
