"""The current OpenZiti C SDK, libziti 1.18.3 with the openziti 1.7.1 binding, as a test peer.

It has the same package name as openziti==0.6.0 (libziti 0.29.3) in the main venv, so it lives
in a venv of its own that `make deps` creates (scripts/peers.sh) from the kit in
../shared/peers/libziti-1.18.3. Without that venv the tests using it skip and say why. Each
script runs in its own process with a timeout (a protocol mistake can hang or crash libziti);
its standard error is libziti's log at `ZITI_LOG` level 3 (INFO), which tests check for ERROR
lines. The scripts use the 1.x API as a libziti user would.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "peers" / "libziti-1.18.3" / "bin" / "python"
SKIP_REASON = ("libziti 1.18.3 is not installed: `make deps` puts it into "
               ".venv/peers/libziti-1.18.3 from ../shared/peers/libziti-1.18.3, which is absent")
TIMEOUT = 120
ENV = {"ZITI_LOG": "3", "PATH": "/usr/bin:/bin"}
OIDC_IN_USE = "using OIDC authentication method"  # libziti's INFO line when it picks OIDC

ENROLL = """
import sys, openziti
open(sys.argv[2], "w").write(openziti.enroll(open(sys.argv[1]).read().strip()))
"""

# Dial each target (a service name, or host:port of its intercept address) and upload `size`
# bytes after "UP\\n" with half-close; the blob server answers the SHA-256 of what arrived.
DIAL = """
import hashlib, socket, sys, time, openziti
ctx, err = openziti.load(sys.argv[1], timeout=30000)
assert err == 0, openziti.strerror(err)
size = int(sys.argv[2])
payload = (bytes(range(256)) * (size // 256 + 1))[:size]
for target in sys.argv[3:]:
    host, _, port = target.partition(":")
    address = (host, int(port)) if port else host
    for attempt in range(60):
        try:
            sock = ctx.connect(address, timeout=60)
            break
        except Exception as exc:  # the service may not have a terminator yet
            if attempt == 59:
                raise
            time.sleep(0.5)
    sock.sendall(b"UP\\n" + payload)
    sock.shutdown(socket.SHUT_WR)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    assert answer.decode() == hashlib.sha256(payload).hexdigest(), (target, answer[:80])
    print(target, "ok", flush=True)
    sock.close()
"""

# Bind each named service and serve every connection: an 8-byte big-endian length, that many
# bytes, answered with their SHA-256 (64 hex digits); then wait for the dialer to close. The
# length prefix keeps the exchange independent of half-close, which the binding's socket
# bridge closes both ways on.
HOST = """
import hashlib, struct, sys, threading, time, openziti
ctx, err = openziti.load(sys.argv[1], timeout=30000)
assert err == 0, openziti.strerror(err)
servers = [ctx.bind(name) for name in sys.argv[2:]]
for server in servers:
    server.listen(64)

def exact(conn, size):
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(min(65536, size - len(data)))
        if not chunk:
            raise EOFError(len(data))
        data += chunk
    return bytes(data)

def serve(conn):
    conn.setblocking(True)
    with conn:
        size, = struct.unpack(">Q", exact(conn, 8))
        digest, left = hashlib.sha256(), size
        while left:
            chunk = conn.recv(min(65536, left))
            if not chunk:
                raise EOFError(size - left)
            digest.update(chunk)
            left -= len(chunk)
        conn.sendall(digest.hexdigest().encode())
        while conn.recv(65536):
            pass

def accept(server):
    while True:
        try:
            conn, _peer = server.accept()
        except BlockingIOError:
            time.sleep(0.005)
            continue
        threading.Thread(target=serve, args=(conn,), daemon=True).start()

for server in servers:
    threading.Thread(target=accept, args=(server,), daemon=True).start()
print("bound", flush=True)
threading.Event().wait()
"""


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a libziti 1.x script to completion (output captured as text)."""
    return subprocess.run([str(PYTHON), "-c", script, *args], capture_output=True, text=True,
                          timeout=TIMEOUT, check=False, cwd=cwd, env=ENV)


def popen(script: str, *args: str, cwd: Path, log: Path, starved_on: int | None = None,
          ) -> subprocess.Popen[str]:
    """Start a long-running libziti 1.x script; its libziti log goes to `log`.

    With `starved_on`, the process is pinned to that CPU at nice 19 (the caller keeps the CPU
    busy), so libziti reads its socket late and in big bursts.
    """
    def starve() -> None:
        if starved_on is not None:
            os.sched_setaffinity(0, {starved_on})
            os.nice(19)

    env = {**ENV, "TLSUV_DEBUG": "6"} if starved_on is not None else ENV
    with log.open("w") as handle:
        return subprocess.Popen([str(PYTHON), "-c", script, *args], stdout=subprocess.PIPE,
                                stderr=handle, text=True, cwd=cwd, env=env,
                                preexec_fn=starve)


def stop(process: subprocess.Popen[str]) -> None:
    """Kill a libziti process this test started, if it is still running."""
    if process.poll() is None:
        process.kill()
        process.communicate(timeout=10)


def error_lines(log: str) -> list[str]:
    """libziti's ERROR lines (level 1) in a log written at ZITI_LOG=3."""
    return [line for line in log.splitlines() if "  ERROR " in line or line.startswith("ERROR")]
