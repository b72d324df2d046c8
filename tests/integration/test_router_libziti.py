"""Interop: two real OpenZiti C SDKs (libziti 0.29.3) host and dial through our edge router.

Each libziti runs in a child process with a timeout (a protocol mistake can hang or crash it).
The host binds a service and echoes each line upper-cased; the dialer sends a line and a large
payload and checks the echo. Covered for an encrypted service (keys exchanged through the
router, §3.8) and an unencrypted one (the router must not hand out a public key, §3.8 pitfall).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import libziti
from tests.support.controller import init_network, serve_process
from tunneler.cli import main as cli

pytest.importorskip("openziti")
pytestmark = pytest.mark.interop

POLICY = """
identities:
  - {name: dialer, roleAttributes: [clients]}
  - {name: host, roleAttributes: [hosts]}
services:
  - {name: enc, encryptionRequired: true, roleAttributes: [echo], configs: {}}
  - {name: plain, encryptionRequired: false, roleAttributes: [echo], configs: {}}
servicePolicies:
  - {name: dial, type: Dial, identityRoles: ["#clients"], serviceRoles: ["#echo"]}
  - {name: bind, type: Bind, identityRoles: ["#hosts"], serviceRoles: ["#echo"]}
"""

DIAL = libziti.DIAL_PRELUDE + """
ctx = openziti.load(sys.argv[1])
payload = (b"hello router " * 40000) + b"END\\n"
for name in sys.argv[2:]:
    sock = dial(ctx, name, wait=20)
    sock.sendall(payload)
    echo = b""
    while not echo.endswith(b"END\\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        echo += chunk
    assert echo == payload.upper(), (len(echo), echo[:60])
    print(name, "ok", len(echo), flush=True)
    sock.close()
"""


def _enroll(net: Path, name: str, tmp_path: Path) -> Path:
    token, identity = tmp_path / f"{name}.jwt", tmp_path / f"{name}.json"
    assert cli(["network", "enroll-token", str(net), name, "-o", str(token)]) == 0
    done = libziti.run(libziti.ENROLL, str(token), str(identity), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return identity


def test_libziti_host_and_dialer_through_router(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    net = init_network(tmp_path / "net", policy)
    with serve_process(net) as (router_process, _config):
        host_id, dialer_id = _enroll(net, "host", tmp_path), _enroll(net, "dialer", tmp_path)
        host = libziti.popen(libziti.HOST_UPPER, str(host_id), "enc", "plain", cwd=tmp_path)
        try:
            # libziti answers a Dial only while Python waits in accept(): start dialing once
            # the host is there (else the router's 5 s Dial deadline can pass under load).
            assert host.stdout is not None and host.stdout.readline().strip() == "bound"
            dialer = libziti.run(DIAL, str(dialer_id), "enc", "plain", cwd=tmp_path)
            assert dialer.returncode == 0, dialer.stderr[-3000:]
            assert "enc ok" in dialer.stdout and "plain ok" in dialer.stdout
            _host_out, host_err = host.communicate(timeout=30)
            assert host.returncode == 0, host_err[-3000:]
        finally:
            libziti.stop(host)
        assert router_process.poll() is None
