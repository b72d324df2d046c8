"""Scenario benchmark: the demo's topology, the tunnel against its baselines in the same run (root).

The private-LLM scenario of `tunneler.demo.scenario` (app with `tunneler run`, edge with the
embedded network, llm behind nftables with run-host), plus, for the baselines only, a direct
veth pair app ↔ llm that the llm filter lets in, and OpenVPN (Debian package, TLS
point-to-point over that pair, installed with apt-get when missing)::

    app ── edge ── llm          the tunnel: TUN → tunneler run → edge router → run-host
    app ──────────── llm        direct (baseline for the LLM figures)
    app ═══ OpenVPN ═══ llm     the VPN a user would otherwise pick (baseline for bulk)

LLM figures (llm-stub with no token delay, light aiohttp client): completions/s over 16
kept-alive connections, and time to first token on a kept-alive connection and on a new one.
Bulk figures (bench/intercept.py's load generator against its server in llm): download MB/s
over 1 and 16 streams, new connections/s and 1-byte RTT. Ratios are tunnel / baseline.

Usage: ``sudo .venv/bin/python bench/scenario.py [--seconds 5] [--size-mib 256] [--json F]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import openvpn  # noqa: E402

from tunneler.demo import netns  # noqa: E402
from tunneler.demo.scenario import (  # noqa: E402
    LLM_PORT,
    LLM_SERVICE,
    LLM_URL,
    PYTHON,
    Scenario,
    Service,
    signals_raise,
)

BULK_PORT = 5201
BULK = Service("bulk", "bulk.private.test", BULK_PORT)
DIRECT_APP, DIRECT_LLM = "198.18.12.1", "198.18.12.2"
VPN = openvpn.Link(server_underlay=DIRECT_LLM, server_tunnel="198.18.13.2",
                   client_tunnel="198.18.13.1")
INTERCEPT_BENCH = str(ROOT / "bench" / "intercept.py")


def llm_figures(scenario: Scenario, base_url: str, seconds: float) -> dict[str, float]:
    out = scenario.client("--base-url", base_url, "load", "--seconds", str(seconds),
                          "--concurrency", "16", "--samples", "100", timeout=300)
    return dict(json.loads(out))


def bulk_figures(scenario: Scenario, host: str, size: int, seconds: float) -> dict[str, float]:
    out = scenario.app.run([PYTHON, INTERCEPT_BENCH, "load", host, str(BULK_PORT), str(size),
                            str(seconds)], timeout=600).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def baselines(scenario: Scenario) -> None:
    """The direct veth pair (let through llm's filter) and OpenVPN over it."""
    _app_end, llm_end = netns.veth(scenario.app, scenario.llm, f"{DIRECT_APP}/24",
                                   f"{DIRECT_LLM}/24")
    scenario.llm.allow_inbound(llm_end)
    openvpn.start(scenario, scenario.llm, scenario.app, VPN)
    scenario.llm.allow_inbound(VPN.device)


def ratios(tunnel: dict[str, float], baseline: dict[str, float]) -> dict[str, float]:
    return {key: round(tunnel[key] / baseline[key], 3) for key in tunnel if baseline.get(key)}


def measure(size: int, seconds: float) -> dict[str, Any]:
    netns.remove_stale(Path(tempfile.gettempdir()))
    version = openvpn.ensure_installed()
    workdir = Path(tempfile.mkdtemp(prefix=f"{netns.WORKDIR_PREFIX}{os.getpid()}-"))
    scenario = Scenario(workdir, token_delay=0.0, services=(LLM_SERVICE, BULK),
                        echo=lambda line: print(line, file=sys.stderr))
    with signals_raise():
        try:
            scenario.up()
            scenario.start(scenario.llm, "netload", [PYTHON, INTERCEPT_BENCH, "serve",
                                                     str(BULK_PORT)])
            scenario.wait_log("netload", "ready")
            baselines(scenario)
            cipher = openvpn.data_channel(scenario.log("openvpn-client"))
            direct_url = f"http://{DIRECT_LLM}:{LLM_PORT}/v1"
            llm = {"tunnel": llm_figures(scenario, LLM_URL, seconds),
                   "direct": llm_figures(scenario, direct_url, seconds)}
            bulk = {"tunnel": bulk_figures(scenario, BULK.address, size, seconds),
                    "direct": bulk_figures(scenario, DIRECT_LLM, size, seconds),
                    "openvpn": bulk_figures(scenario, VPN.server_tunnel, size, seconds)}
        finally:
            scenario.close()
    return {
        "llm": llm, "bulk": bulk, "openvpn": version, "openvpn_data_channel": cipher,
        "openvpn_dco_module_loaded": Path("/sys/module/ovpn_dco_v2").exists(),
        "ratio_llm_tunnel_to_direct": ratios(llm["tunnel"], llm["direct"]),
        "ratio_bulk_tunnel_to_openvpn": ratios(bulk["tunnel"], bulk["openvpn"]),
        "ratio_bulk_tunnel_to_direct": ratios(bulk["tunnel"], bulk["direct"]),
        "ratio_bulk_openvpn_to_direct": ratios(bulk["openvpn"], bulk["direct"]),
    }


LLM_ROWS = [("completions_per_s", "completions/s (16 connections)"),
            ("ttft_keepalive_p50_ms", "TTFT p50, kept-alive connection (ms)"),
            ("ttft_keepalive_p90_ms", "TTFT p90, kept-alive connection (ms)"),
            ("ttft_new_conn_p50_ms", "TTFT p50, new connection (ms)"),
            ("ttft_new_conn_p90_ms", "TTFT p90, new connection (ms)")]
BULK_ROWS = [("bulk_1_MBps", "download, 1 stream (MB/s)"),
             ("bulk_16_MBps", "download, 16 streams (MB/s)"),
             ("conn_per_s", "new connections/s"),
             ("rtt_p50_us", "1-byte RTT p50 (µs)"),
             ("rtt_p99_us", "1-byte RTT p99 (µs)")]


def report(result: dict[str, Any]) -> str:
    """Markdown tables of a run: figures per path and tunnel / baseline ratios."""
    llm, bulk = result["llm"], result["bulk"]
    lines = ["| LLM endpoint | tunnel | direct | tunnel / direct |", "|---|---|---|---|"]
    lines += [f"| {label} | {llm['tunnel'][key]:.1f} | {llm['direct'][key]:.1f} | "
              f"{llm['tunnel'][key] / llm['direct'][key]:.2f} |" for key, label in LLM_ROWS]
    lines += ["", "| bulk TCP | tunnel | OpenVPN | direct | tunnel / OpenVPN | tunnel / direct |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {label} | {bulk['tunnel'][key]:.1f} | {bulk['openvpn'][key]:.1f} | "
              f"{bulk['direct'][key]:.1f} | {bulk['tunnel'][key] / bulk['openvpn'][key]:.2f} | "
              f"{bulk['tunnel'][key] / bulk['direct'][key]:.2f} |" for key, label in BULK_ROWS]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--render", type=Path, help="only print the tables of a saved --json")
    args = parser.parse_args()
    if args.render:
        print(report(json.loads(args.render.read_text())))
        return 0
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark creates network namespaces")
    started = time.monotonic()
    result = measure(args.size_mib << 20, args.seconds)
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
