"""The real OpenZiti C SDK (openziti==0.6.0, libziti 0.29.3) driven in child processes.

A protocol mistake can hang or crash libziti, so each script runs in its own Python process
with a timeout. The scripts are small programs a libziti user would write.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TIMEOUT = 90
ENV = {"ZITI_LOG": "2", "PATH": "/usr/bin:/bin"}

ENROLL = """
import sys, openziti
open(sys.argv[2], "w").write(openziti.enroll(sys.argv[1]))
"""

LOAD = """
import sys, openziti
context = openziti.load(sys.argv[1])
print("loaded", context is not None)
"""

# Bind each named service, accept one connection per service and echo it upper-cased up to
# END. Connections stay open until every service was served: with an immediate close the last
# chunk was sometimes missing under load, and libziti 0.29.3's socket bridge does not turn the
# dialer's socket close into a StateClosed (seen at the router), so neither end can wait for
# the other's EOF. The dialers read up to END instead.
HOST_UPPER = """
import sys, time, openziti
ctx = openziti.load(sys.argv[1])
servers = [ctx.bind(name) for name in sys.argv[2:]]
for server in servers:
    server.listen(5)
print("bound", flush=True)
served = []
for server in servers:
    conn, _peer = server.accept()
    data = b""
    while not data.endswith(b"END\\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    conn.sendall(data.upper())
    served.append(conn)
print("served", flush=True)
time.sleep(1)
for conn in served:
    conn.close()
"""

# Prepended to dialing scripts: openziti 0.6.0's ctx.connect(name) passes terminator=None to
# bytes() and fails, so call the binding underneath with an empty terminator, retrying while
# the service has no terminator yet.
DIAL_PRELUDE = """
import hashlib, socket, sys, time, openziti
from openziti import zitilib

def dial(ctx, name, wait=30):
    deadline = time.time() + wait
    while True:
        try:
            fd = zitilib.ziti_socket(socket.SOCK_STREAM)
            zitilib.connect(fd, ctx._ctx, name, "")
            return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fd)
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.5)

def read_until_eof(sock):
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data
"""


def argv(script: str, *args: str) -> list[str]:
    """The command line running `script` with `args` in a fresh interpreter."""
    return [sys.executable, "-c", script, *args]


def run(script: str, *args: str, cwd: Path,
        timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run a libziti script to completion (output captured as text)."""
    return subprocess.run(argv(script, *args), capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=cwd, env=ENV)


def popen(script: str, *args: str, cwd: Path) -> subprocess.Popen[str]:
    """Start a long-running libziti script (stdout/stderr piped as text)."""
    return subprocess.Popen(argv(script, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=cwd, env=ENV)


def stop(process: subprocess.Popen[str]) -> None:
    """Kill a libziti process that is still running."""
    if process.poll() is None:
        process.kill()
        process.communicate(timeout=10)
