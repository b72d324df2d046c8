"""Interop with the real OpenZiti C SDK (openziti==0.6.0, libziti 0.29.3), both directions.

libziti dials services hosted by `tunneler run-host` (upload with half-close, answer checked by
SHA-256), and `tunneler proxy` reaches services bound by libziti (echo), each with end-to-end
encryption on and off. Every libziti runs in a child process with a timeout: a protocol
mistake can hang or crash it.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator

import pytest

from tests.support import libziti
from tests.support.overlay import Overlay, build_overlay, host_service, start_blob_server

pytest.importorskip("openziti")
pytestmark = pytest.mark.interop

DIAL = libziti.DIAL_PRELUDE + """
ctx = openziti.load(sys.argv[1])
payload = bytes(range(256)) * 40000
for name in sys.argv[2:]:
    sock = dial(ctx, name)
    sock.sendall(b"UP\\n" + payload)
    sock.shutdown(socket.SHUT_WR)
    answer = read_until_eof(sock)
    assert answer.decode() == hashlib.sha256(payload).hexdigest(), answer[:80]
    print(name, "ok", flush=True)
    sock.close()
"""

LIBZITI_SERVICES = [
    {"name": "lz-enc", "encryptionRequired": True, "roleAttributes": ["lzsvc"], "configs": {}},
    {"name": "lz-plain", "encryptionRequired": False, "roleAttributes": ["lzsvc"],
     "configs": {}},
]
EXTRA_POLICY = {
    "identities": [{"name": "zdialer", "roleAttributes": ["clients"]},
                   {"name": "zhost", "roleAttributes": ["lzhosts"]}],
    "servicePolicies": [
        {"name": "lz-bind", "type": "Bind", "semantic": "AnyOf", "identityRoles": ["#lzhosts"],
         "serviceRoles": ["#lzsvc"]},
        {"name": "lz-dial", "type": "Dial", "semantic": "AnyOf", "identityRoles": ["#clients"],
         "serviceRoles": ["#lzsvc"]},
    ],
}


@pytest.fixture(scope="module", name="overlay")
def _overlay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Overlay]:
    blobs, blob_port = start_blob_server()
    services = [host_service("enc", blob_port), host_service("plain", blob_port, encrypted=False),
                *LIBZITI_SERVICES]
    overlay = build_overlay(tmp_path_factory.mktemp("interop"), services,
                            extra_policy=EXTRA_POLICY, token_only=("zdialer", "zhost"))
    try:
        for name in ("zdialer", "zhost"):
            done = libziti.run(libziti.ENROLL, f"{name}.jwt", f"{name}.json",
                               cwd=overlay.directory)
            assert done.returncode == 0, done.stderr[-3000:]
        yield overlay
    finally:
        overlay.stop_all()
        blobs.shutdown()
        blobs.server_close()


def test_libziti_dials_services_hosted_by_run_host(overlay: Overlay) -> None:
    dialer = libziti.run(DIAL, "zdialer.json", "enc", "plain", cwd=overlay.directory)
    assert dialer.returncode == 0, dialer.stderr[-3000:]
    assert "enc ok" in dialer.stdout and "plain ok" in dialer.stdout


def test_proxy_reaches_services_bound_by_libziti(overlay: Overlay) -> None:
    host = libziti.popen(libziti.HOST_UPPER, "zhost.json", "lz-enc", "lz-plain",
                         cwd=overlay.directory)
    try:
        assert host.stdout is not None
        assert host.stdout.readline().strip() == "bound"
        payload = bytes(range(97, 123)) * 50000 + b"END\n"
        for name in ("lz-enc", "lz-plain"):
            echo = _echo_with_retry(overlay.proxy_ports[name], payload)
            assert hashlib.sha256(echo).digest() == hashlib.sha256(payload.upper()).digest()
        _out, err = host.communicate(timeout=libziti.TIMEOUT)
        assert host.returncode == 0, err[-3000:]
    finally:
        libziti.stop(host)


def _echo_with_retry(port: int, payload: bytes, attempts: int = 20) -> bytes:
    """The bind may reach the router a moment after libziti prints "bound": retry resets."""
    for _ in range(attempts):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            try:
                sock.sendall(payload)
                echo = b""
                while not echo.endswith(b"END\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    echo += chunk
            except ConnectionResetError:
                echo = b""
            if echo:
                return echo
        time.sleep(0.5)
    raise AssertionError("libziti-bound service never answered through the proxy")
