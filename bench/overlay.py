"""Overlay benchmark: proxy → edge router → run-host versus a direct TCP connection, same run.

Everything runs on 127.0.0.1 as a user runs it (network serve, run-host, proxy as processes).
Reports throughput (1 and 16 streams), connect latency (new connection to first echoed byte)
and request/response RTT, each as a ratio to the direct path measured in the same run, and
checks that a large upload and download (default 256 MiB each) arrive byte-identical (SHA-256).

    .venv/bin/python bench/overlay.py [--size-mib 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import netload  # noqa: E402

from tests.support.overlay import build_overlay, free_port, host_service, wait_for_port  # noqa: E402


async def measure(port: int, size: int) -> dict[str, float]:
    """All figures for one path."""
    one = await netload.throughput(port, size, 1)
    sixteen = await netload.throughput(port, size, 16)
    connects = await netload.connect_latency(port, 200)
    rtts = await netload.rtt(port, 2000)
    return {
        "mb_s_1": one, "mb_s_16": sixteen,
        "connect_p50_ms": netload.median(connects) * 1e3,
        "connect_p99_ms": netload.percentile(connects, 99) * 1e3,
        "connects_per_s": len(connects) / sum(connects),
        "rtt_p50_us": netload.median(rtts) * 1e6, "rtt_p99_us": netload.percentile(rtts, 99) * 1e6,
    }


async def integrity(port: int, size: int) -> dict[str, bool]:
    """Large upload and download with SHA-256 checks (half-close on the upload)."""
    return {"upload_ok": await netload.upload(port, size),
            "download_ok": await netload.download(port, size)}


def report(results: dict[str, dict[str, float]]) -> str:
    """A markdown table with ratios to the direct path."""
    direct = results["direct"]
    rows = ["| path | 1 stream MB/s | x direct | 16 streams MB/s | x direct | connect p50 ms | "
            "connect p99 ms | new conn/s | x direct | RTT p50 µs | RTT p99 µs |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        rows.append(
            f"| {name} | {r['mb_s_1']:.0f} | {r['mb_s_1'] / direct['mb_s_1']:.3f} | "
            f"{r['mb_s_16']:.0f} | {r['mb_s_16'] / direct['mb_s_16']:.3f} | "
            f"{r['connect_p50_ms']:.2f} | {r['connect_p99_ms']:.2f} | {r['connects_per_s']:.0f} | "
            f"{r['connects_per_s'] / direct['connects_per_s']:.3f} | {r['rtt_p50_us']:.0f} | "
            f"{r['rtt_p99_us']:.0f} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "bench" / "netload.py"), "serve",
                               str(port)], stdout=subprocess.PIPE)
    try:
        wait_for_port(port)
        with tempfile.TemporaryDirectory(prefix="tunneler-bench-") as tmp:
            overlay = build_overlay(Path(tmp), [host_service("enc", port),
                                                host_service("plain", port, encrypted=False)])
            try:
                results: dict[str, Any] = {"direct": netload.run(measure(port, size))}
                checks = {}
                for name in ("enc", "plain"):
                    proxy = overlay.proxy_ports[name]
                    results[f"overlay ({name})"] = netload.run(measure(proxy, size))
                    checks[name] = netload.run(integrity(proxy, size))
            finally:
                overlay.stop_all()
    finally:
        server.terminate()
        server.wait()
    print(f"# overlay benchmark, {args.size_mib} MiB per transfer, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    print(report(results))
    print(f"\nintegrity (SHA-256 of {args.size_mib} MiB up and down): {checks}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "integrity": checks},
                                              indent=2))
    return 0 if all(all(c.values()) for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
