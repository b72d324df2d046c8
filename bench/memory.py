"""Memory benchmark: resident memory of every tunneler process, idle and with 1,000 open flows.

Same topology as `bench/intercept.py` (client namespace with `tunneler run`, edge with
`network serve`, server with `run-host` and the load server). Measures RSS of `tunneler run`,
`network serve` and `run-host` when idle, while 1,000 intercepted TCP flows are open (each has
exchanged 16 KiB), and after they closed; the targets of design.md §5 are RSS ≤ 80 MiB idle
and ≤ 200 MiB at 1,000 flows for the intercepting daemon.

Usage (root): `.venv/bin/python bench/memory.py [--flows 1000] [--json out.json]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import intercept  # noqa: E402  (the intercept benchmark's topology)

from tests.support.netns import NetnsPool  # noqa: E402
from tunneler.demo.netns import Netns  # noqa: E402

PROCESSES = {"client": "tunneler run", "network": "network serve", "host": "run-host"}

# Runs in the client namespace: open N echo flows through the tunnel, exchange 16 KiB on each,
# print "open", wait until the file argv[4] exists, close them all.
HOLDER = r"""
import asyncio, os, struct, sys
async def main(n):
    flows = []
    for i in range(n):
        r, w = await asyncio.open_connection(sys.argv[1], int(sys.argv[2]))
        w.write(struct.pack("!cQ", b"E", 0) + b"x" * 16384)
        await r.readexactly(16384)
        flows.append(w)
    print("open", flush=True)
    while not os.path.exists(sys.argv[4]):
        await asyncio.sleep(0.1)
    for w in flows:
        w.close()
asyncio.run(main(int(sys.argv[3])))
"""


def rss(pids: dict[str, int]) -> dict[str, float]:
    """Resident memory in MiB per process."""
    return {name: psutil.Process(pid).memory_info().rss / 2**20 for name, pid in pids.items()}


@contextlib.contextmanager
def flows_open(client: Netns, flows: int, directory: Path, host: str = "bench.private.test",
               port: int = intercept.PORT) -> Iterator[None]:
    """`flows` echo flows from `client` to host:port, each having echoed 16 KiB, held open
    for the body of the `with` (the release file goes in `directory`) and closed after it."""
    release = directory / "release"
    holder = client.popen([sys.executable, "-c", HOLDER, host, str(port), str(flows),
                           str(release)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != "open":
            raise RuntimeError("the flows did not open")
        yield
    finally:
        release.touch()
        try:
            holder.wait(60)
        finally:
            release.unlink(missing_ok=True)


def measure(flows: int) -> dict[str, dict[str, float]]:
    """RSS idle, with `flows` open flows, and after they closed."""
    pool = NetnsPool()
    with tempfile.TemporaryDirectory(prefix="tunneler-bench-") as tmp:
        deploy = None
        try:
            deploy, client, _edge, _server = intercept._deploy(Path(tmp), pool)
            pids = {name: deploy.procs[name].pid for name in PROCESSES}
            time.sleep(2)
            result = {"idle": rss(pids)}
            with flows_open(client, flows, Path(tmp)):
                result[f"{flows} flows open"] = rss(pids)
            time.sleep(3)
            result["after close"] = rss(pids)
            return result
        finally:
            if deploy is not None:
                deploy.close()
            pool.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=1000)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    result = measure(args.flows)
    print("| RSS (MiB) | " + " | ".join(PROCESSES.values()) + " |")
    print("|---|" + "---|" * len(PROCESSES))
    for phase, values in result.items():
        print(f"| {phase} | " + " | ".join(f"{values[n]:.1f}" for n in PROCESSES) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
