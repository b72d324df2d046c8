"""Side by side: tunneler, OpenVPN and stunnel on one topology, in interleaved rounds (root).

The three namespaces of bench/intercept.py (its `_deploy`: forwarding on in edge)::

    client 198.18.0.1 ── 198.18.0.2 edge 198.18.1.1 ── 198.18.1.2 server
    (load client)         (router)                      (load server 0.0.0.0:5201)

Paths from the client to the load server, all in the same run:

- direct: routed by edge;
- tunneler: `tunneler run` (client) → `network serve` (edge) → `run-host` (server), end-to-end
  encryption on, as bench/intercept.py measures it;
  with `--tcp-redirect`, `tunneler run --tcp-redirect`: nftables DNATs the client's TCP to
  the engine's listener, no TUN hairpin (tunneler.tun.redirect);
- tunneler-proxy: `tunneler proxy` on 127.0.0.1 in client (the same identity and service) →
  the same router and run-host: the overlay path without the TUN hairpin (the kernel accepts
  the socket), i.e. what a kernel-side redirect of intercepted flows would leave;
- openvpn: OpenVPN 2.6 point to point (UDP, TLS, client ↔ server through edge's routing), as
  bench/scenario.py measures it;
- openvpn-hub: the relay shape of ours: an OpenVPN server on edge with `--client-to-client`,
  the client and server namespaces both its clients (client → edge → server, two UDP legs);
- stunnel: one mutual-TLS leg (stunnel client in client → stunnel server in server);
- stunnel-relay: two mutual-TLS legs (stunnel client → stunnel on edge, which terminates TLS and
  originates it again → stunnel server).

OpenVPN and stunnel are Debian packages (apt-get installed when missing) with PKIs made by
tunneler's own CA helpers; every peer presents a certificate and verifies the other's. Figures
per path (bench/intercept.py's load generator, one `figure` process each in the client
namespace): download MB/s over 1 and 16 streams, round-trip time of 1 KiB messages on one
connection (p50, p99), new connections/s (connect + 1-byte echo, 16 workers). Round r runs every
path once (starting at path r, so no path is always first); reported are the median and the
min-max over rounds, each figure's ratio to direct in the same round, the CPU time (user +
system, psutil) of each tunnel process per unit of work, and the RSS of `tunneler run`,
`network serve` and `run-host` after the warm-up, after the rounds, and with 1,000 flows open
through them (bench/memory.py's holder).

Usage: ``sudo .venv/bin/python bench/peers.py [--rounds 3] [--quick] [--paths a,b]
[--json FILE] [--write-docs]``; ``--render FILE [--write-docs]`` reprints a saved run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import intercept  # noqa: E402  (topology, load server and load generator)
import memory  # noqa: E402  (RSS and the holder of open flows)
import openvpn  # noqa: E402
import stunnel  # noqa: E402
import thirdparty  # noqa: E402

from tests.support.netns import NetnsPool  # noqa: E402
from tunneler.demo.netns import Netns  # noqa: E402
from tunneler.demo.processes import Processes  # noqa: E402
from tunneler.demo.scenario import TUNNELER, signals_raise  # noqa: E402

PORT = intercept.PORT
EDGE_IP, SERVER_IP = "198.18.0.2", "198.18.1.2"
VPN = openvpn.Link(server_underlay=SERVER_IP, server_tunnel="198.18.13.2",
                   client_tunnel="198.18.13.1")
HUB = openvpn.Hub("198.18.14.0", (openvpn.Member("hub-client", "198.18.14.10", EDGE_IP),
                                  openvpn.Member("hub-server", "198.18.14.20", "198.18.1.1")))
STUNNEL_SERVER = f"{SERVER_IP}:6443"
STUNNEL_EDGE, STUNNEL_EDGE_INNER = f"{EDGE_IP}:6444", "127.0.0.1:6445"
STUNNEL_ONE_LEG, STUNNEL_TWO_LEGS = 6001, 6002
PROXY_PORT = 6003
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"
RESULTS = ROOT / "bench" / "results"
DASH = "\u2013"  # en dash, between the min and max of a figure
KEYS = ("bulk_1_MBps", "bulk_16_MBps", "rtt_p50_us", "rtt_p99_us", "conn_per_s")
PROCESS_NAMES = {**memory.PROCESSES, "total": "**total**"}


@dataclass(frozen=True)
class Route:
    """One path: where the client connects, and the tunnel processes whose CPU is counted."""

    name: str
    label: str
    host: str
    port: int
    processes: tuple[str, ...] = ()


ROUTES = (
    Route("direct", "direct", SERVER_IP, PORT),
    Route("tunneler", "tunneler (run → serve → run-host)", "bench.private.test", PORT,
          ("client", "network", "host")),
    Route("tunneler-proxy", "tunneler proxy (no TUN) → serve → run-host", "127.0.0.1",
          PROXY_PORT, ("proxy", "network", "host")),
    Route("openvpn", "OpenVPN point to point", VPN.server_tunnel, PORT,
          ("openvpn-client", "openvpn-server")),
    Route("openvpn-hub", "OpenVPN hub on edge", HUB.members[1].tunnel, PORT,
          ("openvpn-hub-client", "openvpn-hub", "openvpn-hub-server")),
    Route("stunnel", "stunnel, 1 mTLS leg", "127.0.0.1", STUNNEL_ONE_LEG,
          ("stunnel-client", "stunnel-server")),
    Route("stunnel-relay", "stunnel, 2 mTLS legs via edge", "127.0.0.1", STUNNEL_TWO_LEGS,
          ("stunnel-client", "stunnel-edge", "stunnel-server")),
)


@dataclass(frozen=True)
class Settings:
    """What one run measures."""

    rounds: int = 3
    size: int = 256 << 20        # bytes per download figure
    seconds: float = 3.0         # new connections/s is measured this long
    count: int = 2000            # round trips
    message: int = 1024          # bytes per round trip
    flows: int = 1000            # open flows for the RSS figure (0: skip it)
    paths: tuple[str, ...] = tuple(route.name for route in ROUTES)
    tcp_redirect: bool = False   # `tunneler run --tcp-redirect` for the tunneler path


QUICK = Settings(rounds=1, size=32 << 20, seconds=1.0, count=500)


@dataclass(frozen=True)
class Topology:
    """The namespaces of bench/intercept.py's `_deploy`."""

    client: Netns
    edge: Netns
    server: Netns


def log(line: str) -> None:
    print(f"peers: {line}", file=sys.stderr, flush=True)


# -- the baselines --------------------------------------------------------------------------

def tune(topology: Topology) -> None:
    """Many short connections per second on every path: reuse TIME_WAIT ports, use them all."""
    for ns in (topology.client, topology.edge, topology.server):
        ns.sysctl("net.ipv4.tcp_tw_reuse", "1")
        ns.sysctl("net.ipv4.ip_local_port_range", "10000 65535")


def start_stunnels(deploy: Processes, topology: Topology, paths: Sequence[str]) -> None:
    """The stunnel server (in server), the relay on edge if asked for, and the client."""
    directory = deploy.dir / "stunnel"
    stunnel.make_pki(directory, ("client", "edge", "server"))
    stunnel.start(deploy, topology.server, directory, "server",
                  [stunnel.Service("in", STUNNEL_SERVER, f"127.0.0.1:{PORT}")])
    services = []
    if "stunnel" in paths:
        services.append(stunnel.Service("one-leg", f"127.0.0.1:{STUNNEL_ONE_LEG}",
                                        STUNNEL_SERVER, stunnel.common_name("server")))
    if "stunnel-relay" in paths:
        stunnel.start(deploy, topology.edge, directory, "edge", [
            stunnel.Service("in", STUNNEL_EDGE, STUNNEL_EDGE_INNER),
            stunnel.Service("out", STUNNEL_EDGE_INNER, STUNNEL_SERVER,
                            stunnel.common_name("server"))])
        services.append(stunnel.Service("two-legs", f"127.0.0.1:{STUNNEL_TWO_LEGS}",
                                        STUNNEL_EDGE, stunnel.common_name("edge")))
    stunnel.start(deploy, topology.client, directory, "client", services)


def start_proxy(deploy: Processes, client: Netns) -> None:
    """`tunneler proxy` in the client namespace (client1's identity) for the same service: the
    engine's overlay path with the socket accepted by the kernel, no TUN hairpin."""
    deploy.start(client, "proxy", [*TUNNELER, "proxy", "--identity",
                                   str(deploy.dir / "client1.json"),
                                   f"bench=127.0.0.1:{PROXY_PORT}"])
    thirdparty.wait_listening(deploy, "proxy", client, [f"127.0.0.1:{PROXY_PORT}"])


def start_baselines(deploy: Processes, topology: Topology, paths: Sequence[str]) -> None:
    if "tunneler-proxy" in paths:
        start_proxy(deploy, topology.client)
    if "openvpn" in paths:
        openvpn.start(deploy, topology.server, topology.client, VPN)
    if "openvpn-hub" in paths:
        openvpn.start_hub(deploy, topology.edge, HUB, {"hub-client": topology.client,
                                                       "hub-server": topology.server})
    if {"stunnel", "stunnel-relay"} & set(paths):
        start_stunnels(deploy, topology, paths)


def versions(paths: Sequence[str]) -> dict[str, str]:
    """Versions of the third-party tunnels to run (installing their packages if missing)."""
    found = {}
    if {"openvpn", "openvpn-hub"} & set(paths):
        found["openvpn"] = openvpn.ensure_installed()
    if {"stunnel", "stunnel-relay"} & set(paths):
        found["stunnel"] = stunnel.ensure_installed()
    return found


# -- measuring -------------------------------------------------------------------------------

def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds so far of each process (all its threads)."""
    times = {name: psutil.Process(pid).cpu_times() for name, pid in pids.items()}
    return {name: t.user + t.system for name, t in times.items()}


def run_figure(client: Netns, route: Route, name: str, settings: Settings) -> dict[str, float]:
    return dict(intercept._run_in(client, "figure", name, route.host, str(route.port),
                                  str(settings.size), str(settings.seconds),
                                  "--count", str(settings.count),
                                  "--message-bytes", str(settings.message)))


def measure_route(deploy: Processes, client: Netns, route: Route,
                  settings: Settings) -> dict[str, Any]:
    """Every figure of `route`, with the CPU seconds each tunnel process spent on each."""
    pids = {name: deploy.procs[name].pid for name in route.processes}
    figures: dict[str, Any] = {}
    cpu: dict[str, dict[str, float]] = {}
    for name in intercept.FIGURES:
        before = cpu_seconds(pids)
        figures.update(run_figure(client, route, name, settings))
        after = cpu_seconds(pids)
        cpu[name] = {process: round(after[process] - before[process], 3) for process in pids}
    return {**figures, "cpu_s": cpu}


def run_rounds(deploy: Processes, client: Netns, routes: Sequence[Route],
               settings: Settings) -> list[dict[str, Any]]:
    """Round r measures every route once, starting with route r."""
    rounds = []
    for index in range(settings.rounds):
        shift = index % len(routes)
        order = [*routes[shift:], *routes[:shift]]
        log(f"round {index + 1}/{settings.rounds}: {', '.join(r.name for r in order)}")
        rounds.append({route.name: measure_route(deploy, client, route, settings)
                       for route in order})
    return rounds


def warm_up(client: Netns, routes: Sequence[Route], settings: Settings) -> None:
    """A 1 MiB download over every route: each works, and first-flow costs are paid."""
    for route in routes:
        run_figure(client, route, "bulk_1_MBps", dataclasses.replace(settings, size=1 << 20))


def rss_mib(deploy: Processes) -> dict[str, float]:
    """RSS (MiB) of `tunneler run`, `network serve` and `run-host`."""
    pids = {name: deploy.procs[name].pid for name in memory.PROCESSES}
    return {memory.PROCESSES[n]: round(v, 1) for n, v in memory.rss(pids).items()}


def rss_after(deploy: Processes, client: Netns, flows: int,
              directory: Path) -> dict[str, dict[str, float]]:
    """RSS after the rounds, idle and with `flows` flows open through the tunnel."""
    result = {"after the rounds, idle": rss_mib(deploy)}
    with memory.flows_open(client, flows, directory):
        result[f"after the rounds, {flows} flows open"] = rss_mib(deploy)
    return result


def measure(settings: Settings) -> dict[str, Any]:
    """Set everything up, run the rounds and the RSS figure, tear everything down."""
    routes = [route for route in ROUTES if route.name in settings.paths]
    result: dict[str, Any] = {"versions": versions(settings.paths)}
    pool = NetnsPool()
    with tempfile.TemporaryDirectory(prefix="tunneler-bench-") as tmp, signals_raise():
        deploy = None
        try:
            deploy, client, edge, server = intercept._deploy(
                Path(tmp), pool, ("--tcp-redirect",) if settings.tcp_redirect else ())
            result["tcp_redirect"] = settings.tcp_redirect
            topology = Topology(client, edge, server)
            tune(topology)
            start_baselines(deploy, topology, settings.paths)
            result["openvpn_data_channel"] = {
                name: openvpn.data_channel(deploy.log(name))
                for name in ("openvpn-client", "openvpn-hub-client") if name in deploy.procs}
            warm_up(client, routes, settings)
            result["rss_mib"] = {"after the warm-up": rss_mib(deploy)}
            result["rounds"] = run_rounds(deploy, client, routes, settings)
            if settings.flows:
                log(f"RSS with {settings.flows} flows open")
                result["rss_mib"].update(rss_after(deploy, client, settings.flows, Path(tmp)))
        finally:
            if deploy is not None:
                deploy.close()
            pool.close()
    return result


# -- summaries -------------------------------------------------------------------------------

def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def work(figure: str, figures: dict[str, Any], settings: dict[str, Any]) -> tuple[float, float]:
    """(units of work, scale) that turn CPU seconds of `figure` into s/GB or µs/unit."""
    if figure.startswith("bulk"):
        return settings["size"] / 1e9, 1.0
    if figure == "rtt":
        return settings["count"], 1e6
    return figures["conn_per_s"] * settings["seconds"], 1e6


def cpu_per_work(rounds: list[dict[str, Any]], route: str,
                 settings: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """Per process (and "total"), per figure: CPU s per GB downloaded, or µs per round trip
    or per new connection; spread over rounds."""
    result: dict[str, dict[str, dict[str, float]]] = {}
    for figure in intercept.FIGURES:
        samples: dict[str, list[float]] = {}
        for measured in (r[route] for r in rounds):
            units, scale = work(figure, measured, settings)
            cpu = measured["cpu_s"][figure]
            for process, seconds in [*cpu.items(), ("total", sum(cpu.values()))]:
                samples.setdefault(process, []).append(seconds / units * scale)
        for process, values in samples.items():
            result.setdefault(process, {})[figure] = spread(values)
    return result


def summarise(result: dict[str, Any]) -> None:
    """Add figures, ratio_to_direct and cpu_per_work (median, min, max over rounds)."""
    rounds, settings = result["rounds"], result["settings"]
    paths = list(rounds[0])
    result["figures"] = {path: {key: spread([r[path][key] for r in rounds]) for key in KEYS}
                         for path in paths}
    result["ratio_to_direct"] = {
        path: {key: spread([r[path][key] / r["direct"][key] for r in rounds]) for key in KEYS}
        for path in paths if path != "direct"}
    result["cpu_per_work"] = {path: cpu_per_work(rounds, path, settings) for path in paths
                              if rounds[0][path]["cpu_s"]["rtt"]}


# -- report ----------------------------------------------------------------------------------

COLUMNS = (("bulk_1_MBps", "1 stream MB/s"), ("bulk_16_MBps", "16 streams MB/s"),
           ("rtt_p50_us", "RTT p50 µs"), ("rtt_p99_us", "RTT p99 µs"),
           ("conn_per_s", "new conn/s"))
CPU_COLUMNS = (("bulk_1_MBps", "1 stream, s/GB"), ("bulk_16_MBps", "16 streams, s/GB"),
               ("rtt", "µs per round trip"), ("conn_per_s", "µs per new connection"))


def cell(stats: dict[str, float], fmt: str) -> str:
    """The median, and (min-max) when they differ."""
    median, low, high = (format(stats[k], fmt) for k in ("median", "min", "max"))
    return median if low == high else f"{median} ({low}{DASH}{high})"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    return [_row(header), "|" + "---|" * len(header), *(_row(row) for row in rows)]


LABELS = {route.name: route.label for route in ROUTES}


def path_label(result: dict[str, Any], path: str) -> str:
    """A path's row label; the tunneler path says when it ran with --tcp-redirect."""
    if path == "tunneler" and result.get("tcp_redirect"):
        return "tunneler run --tcp-redirect → serve → run-host"
    return LABELS[path]


def figures_table(result: dict[str, Any], key: str, fmt: Callable[[str], str]) -> list[str]:
    return _table(["path", *(label for _k, label in COLUMNS)],
                  [[path_label(result, path), *(cell(stats[k], fmt(k)) for k, _label in COLUMNS)]
                   for path, stats in result[key].items()])


def cpu_table(result: dict[str, Any]) -> list[str]:
    rows = [[path_label(result, path), PROCESS_NAMES.get(process, process),
             *(cell(figures[k], ".2f" if k.startswith("bulk") else ".0f")
               for k, _label in CPU_COLUMNS)]
            for path, processes in result["cpu_per_work"].items()
            for process, figures in processes.items()]
    return _table(["path", "process", *(label for _k, label in CPU_COLUMNS)], rows)


def rss_table(result: dict[str, Any]) -> list[str]:
    rss = result["rss_mib"]
    processes = list(next(iter(rss.values())))
    return _table(["RSS (MiB)", *processes],
                  [[phase, *(f"{values[p]:.1f}" for p in processes)]
                   for phase, values in rss.items()])


def header(result: dict[str, Any]) -> str:
    s, meta = result["settings"], result["meta"]
    tools = ", ".join(" ".join(line.split()[:2]) for line in result["versions"].values())
    return (f"Run of {meta['date']} at commit {meta['commit']} ({meta['cpus']} cores, "
            f"{meta['kernel']}), {s['rounds']} round(s): median (min{DASH}max). Downloads of "
            f"{s['size'] >> 20} MiB, {s['count']} round trips of {s['message']} bytes, new "
            f"connections for {s['seconds']:g} s; {tools}; {result['wall_seconds']:.0f} s "
            "in all.")


def report(result: dict[str, Any]) -> str:
    """Markdown: the run, figures, ratios to direct, CPU per unit of work, RSS."""
    lines = [header(result), "", "Figures:", "",
             *figures_table(result, "figures", lambda k: ".0f"), "",
             "Ratio to direct in the same round (higher is better for MB/s and conn/s, "
             "lower for RTT):", "", *figures_table(result, "ratio_to_direct", lambda k: ".2f"),
             "", "CPU time (user + system) of the tunnel processes per unit of work:", "",
             *cpu_table(result)]
    if "rss_mib" in result:
        lines += ["", "Resident memory of the tunneler processes (psutil RSS, = VmRSS):", "",
                  *rss_table(result)]
    return "\n".join(lines)


def write_docs(markdown: str, docs: Path = DOCS) -> None:
    """Replace what lies between the peers markers of docs/benchmarks.md."""
    text = docs.read_text()
    pattern = re.compile(f"{re.escape(BEGIN)}\n.*?{re.escape(END)}", re.DOTALL)
    if not pattern.search(text):
        sys.exit(f"{docs}: no {BEGIN} ... {END} section")
    docs.write_text(pattern.sub(lambda _m: f"{BEGIN}\n{markdown}\n{END}", text))


# -- command line ----------------------------------------------------------------------------

def meta() -> dict[str, Any]:
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True,
                           check=False).stdout.strip()
    return {"date": datetime.date.today().isoformat(),
            "commit": commit + (" with uncommitted changes" if dirty else ""),
            "cpus": os.cpu_count(), "kernel": f"Linux {platform.release()}",
            "python": platform.python_version()}


def settings_from(args: argparse.Namespace) -> Settings:
    base = QUICK if args.quick else Settings()
    paths = tuple(args.paths.split(",")) if args.paths else base.paths
    unknown = set(paths) - {route.name for route in ROUTES}
    if unknown or "direct" not in paths:
        sys.exit(f"--paths: unknown {sorted(unknown)}" if unknown else "--paths needs direct")
    return dataclasses.replace(base, paths=paths, rounds=args.rounds or base.rounds,
                               flows=base.flows if args.flows is None else args.flows,
                               tcp_redirect=args.tcp_redirect)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 round, 32 MiB downloads, 1 s of connections, 500 round trips")
    parser.add_argument("--rounds", type=int, help="default 3 (1 with --quick)")
    parser.add_argument("--paths", help="comma-separated, from: "
                        + ",".join(route.name for route in ROUTES))
    parser.add_argument("--flows", type=int, help="open flows for the RSS figure (0: skip)")
    parser.add_argument("--tcp-redirect", action="store_true",
                        help="the tunneler path with `tunneler run --tcp-redirect`")
    parser.add_argument("--json", type=Path, help="default bench/results/peers.json "
                        "(peers-quick.json with --quick)")
    parser.add_argument("--write-docs", action="store_true",
                        help=f"replace the {BEGIN} section of docs/benchmarks.md")
    parser.add_argument("--render", type=Path, help="only report a saved --json")
    return parser.parse_args()


def main() -> int:
    args = parse()
    if args.render:
        result = json.loads(args.render.read_text())
    else:
        if os.geteuid() != 0:
            sys.exit("run as root: the benchmark creates network namespaces")
        settings = settings_from(args)
        started = time.monotonic()
        result = {"settings": dataclasses.asdict(settings), "meta": meta(),
                  **measure(settings)}
        result["wall_seconds"] = round(time.monotonic() - started, 1)
        summarise(result)
        target = args.json or RESULTS / ("peers-quick.json" if args.quick else "peers.json")
        target.parent.mkdir(exist_ok=True)
        target.write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {target}")
    markdown = report(result)
    print(markdown)
    if args.write_docs:
        write_docs(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
