"""The overlay survives a network restart and follows service changes without restarts."""

from __future__ import annotations

import signal
import socket
import socketserver
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.support.overlay import (
    Overlay,
    ThreadingServer,
    build_overlay,
    host_service,
    start_blob_server,
    tunneler,
)


class _Tag(socketserver.BaseRequestHandler):
    """Answers its server's tag, then closes."""

    def handle(self) -> None:
        self.request.sendall(self.server.tag)  # type: ignore[attr-defined]


def _tag_server(tag: bytes) -> ThreadingServer:
    server = ThreadingServer(("127.0.0.1", 0), _Tag)
    server.tag = tag  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _fetch(overlay: Overlay, service: str, timeout: float = 30.0) -> bytes:
    """What the service answers, retrying resets while the overlay recovers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", overlay.proxy_ports[service]), 10) as s:
                answer = s.recv(100)
                if answer:
                    return answer
        except ConnectionResetError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{service} did not answer within {timeout}s")
        time.sleep(0.2)


def test_rebinds_after_network_restart_and_follows_config_changes(tmp_path: Path) -> None:
    first, second = _tag_server(b"first"), _tag_server(b"second")
    overlay = build_overlay(tmp_path, [host_service("tagged", first.server_address[1])],
                            client_args=("--refresh-interval", "1"))
    try:
        assert _fetch(overlay, "tagged") == b"first"
        overlay.restart("network")
        overlay.wait_for_log("host", "host.service_bound", count=2)
        assert _fetch(overlay, "tagged") == b"first"

        policy = yaml.safe_load((tmp_path / "policy.yaml").read_text())
        policy["services"][0]["configs"]["host.v1"]["port"] = second.server_address[1]
        (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
        tunneler(tmp_path, "network", "apply", str(tmp_path / "net"), "policy.yaml")
        overlay.wait_for_log("host", "host.service_bound", count=3)
        assert _fetch(overlay, "tagged") == b"second"
    finally:
        overlay.stop_all()
        for server in (first, second):
            server.shutdown()
            server.server_close()
    assert overlay.exit_codes["host"] == 0 and overlay.exit_codes["proxy"] == 0


def test_router_loss_mid_flow_resets_the_local_connection(tmp_path: Path) -> None:
    """A truncated stream must never look complete: router loss → RST, not FIN."""
    blobs, port = start_blob_server()
    overlay = build_overlay(tmp_path, [host_service("blob", port)])
    try:
        with socket.create_connection(("127.0.0.1", overlay.proxy_ports["blob"]), 30) as sock:
            sock.sendall(f"DOWN {1 << 30}\n".encode())
            assert sock.recv(65536)
            overlay.stop("network", signal.SIGKILL)
            with pytest.raises(ConnectionResetError):
                while sock.recv(1 << 20):
                    pass
        assert "link.disconnected" in overlay.log("proxy")
    finally:
        overlay.stop_all()
        blobs.shutdown()
        blobs.server_close()
