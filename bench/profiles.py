"""Profiles of the three tunnel processes during one figure of bench/intercept.py (root).

Deploys bench/intercept.py's topology (`tunneler run` → `network serve` → `run-host`), then,
for each figure asked for, runs the load generator in the client namespace while py-spy samples
`run`, `network serve` and `run-host` (native frames off, idle frames off). Writes one
collapsed-stack file per process and figure under OUT and prints, per process, the CPU seconds
spent and the functions with the largest share of samples (self and total).

py-spy is a profiler, not a project dependency: `pip install py-spy` into the venv first.

Usage: ``sudo .venv/bin/python bench/profiles.py [--figures bulk_1_MBps,rtt] [--out DIR]
[--size-mib 512] [--seconds 3] [--top 25] [--by-total] [--repeat N] [--cpu-only]
[--tcp-redirect]``;
``--cpu-only --repeat 5`` compares trees by CPU seconds per process without sampling.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import intercept  # noqa: E402

from tests.support.netns import NetnsPool  # noqa: E402
from tunneler.demo.netns import Netns  # noqa: E402
from tunneler.demo.processes import Processes  # noqa: E402

PROCESSES = {"client": "run", "network": "network serve", "host": "run-host"}


def py_spy() -> str:
    """The py-spy next to this interpreter or on PATH."""
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        sys.exit("py-spy not found: pip install py-spy into this venv")
    return found


def tunneler_pid(pid: int) -> int:
    """The Python process itself: `ip netns exec` may sit between us and it."""
    process = psutil.Process(pid)
    for candidate in [process, *process.children(recursive=True)]:
        if "python" in Path(candidate.exe()).name:
            return candidate.pid
    return pid


def _frame_name(frame: str) -> str:
    """`function (path/file.py:line)` → `function file.py`."""
    function, _, where = frame.partition(" (")
    return f"{function} {where.split(':')[0].rsplit('/', 1)[-1]}"


def summarise(folded: Path, top: int, by_total: bool = False) -> list[str]:
    """Self and total sample shares of the `top` hottest functions in a collapsed-stack file."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in folded.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";")]
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    lines = [f"{samples} samples, ranked by {'total' if by_total else 'self'}"]
    for frame, _count in (total if by_total else own).most_common(top):
        lines.append(f"  self {100 * own[frame] / samples:5.1f}%  total "
                     f"{100 * total[frame] / samples:5.1f}%  {frame}")
    return lines


def _idle_share(before: Any, after: Any) -> float:
    """The share of all cores' time left idle between two psutil.cpu_times() readings."""
    spent = sum(after) - sum(before)
    return (after.idle - before.idle) / spent if spent else 0.0


def profile(figure: str, deploy: Processes, client: Netns, out: Path, size: int,
            seconds: float, top: int, by_total: bool, sample: bool) -> None:
    """Run `figure` once; with `sample`, py-spy each tunnel process meanwhile."""
    pids = {name: tunneler_pid(deploy.procs[name].pid) for name in PROCESSES}
    before = {name: psutil.Process(pid).cpu_times() for name, pid in pids.items()}
    machine = psutil.cpu_times()
    spies = {name: subprocess.Popen(
        [py_spy(), "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
         "--output", str(out / f"{figure}-{name}.folded"), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name, pid in pids.items() if sample}
    if sample:
        time.sleep(1.0)
    started = time.monotonic()
    result = intercept._run_in(client, "figure", figure, "bench.private.test",
                               str(intercept.PORT), str(size), str(seconds))
    wall = time.monotonic() - started
    idle = _idle_share(machine, psutil.cpu_times())
    for spy in spies.values():
        spy.send_signal(2)
    for spy in spies.values():
        spy.wait(timeout=60)
    print(f"== {figure}: {result} in {wall:.1f} s, machine {100 * idle:.0f} % idle")
    for name, pid in pids.items():
        after = psutil.Process(pid).cpu_times()
        cpu = (after.user - before[name].user) + (after.system - before[name].system)
        print(f"-- {PROCESSES[name]}: {cpu:.2f} CPU s "
              f"(user {after.user - before[name].user:.2f})")
        folded = out / f"{figure}-{name}.folded"
        if sample and folded.exists():
            print("\n".join(summarise(folded, top, by_total)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", default=",".join(intercept.FIGURES))
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "profiles")
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=1, help="run the figures this often")
    parser.add_argument("--cpu-only", action="store_true",
                        help="no sampling: only the figure and the CPU seconds per process")
    parser.add_argument("--tcp-redirect", action="store_true",
                        help="`tunneler run --tcp-redirect` (nftables instead of the TUN hairpin)")
    parser.add_argument("--by-total", action="store_true",
                        help="rank functions by samples with them on the stack, not on top")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pool = NetnsPool()
    with tempfile.TemporaryDirectory(prefix="tunneler-profile-") as tmp:
        deploy = None
        try:
            deploy, client, _edge, _server = intercept._deploy(
                Path(tmp), pool, ("--tcp-redirect",) if args.tcp_redirect else ())
            intercept._run_in(client, "figure", "bulk_1_MBps", "bench.private.test",
                              str(intercept.PORT), str(1 << 20), "1")
            for _ in range(args.repeat):
                for figure in args.figures.split(","):
                    profile(figure, deploy, client, args.out, args.size_mib << 20, args.seconds,
                            args.top, args.by_total, not args.cpu_only)
        finally:
            if deploy is not None:
                deploy.close()
            pool.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
