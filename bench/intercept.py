"""Intercept benchmark: `tunneler run` (TUN + overlay) against the direct path, same run (root).

Topology (network namespaces, veth pairs from 198.18.0.0/15)::

    client 198.18.0.1 ── 198.18.0.2 edge 198.18.1.1 ── 198.18.1.2 server
    (tunneler run)        (network serve, DNS stub,      (netload server, run-host)
                           forwards for the direct path)

Direct: the client connects to 198.18.1.2:PORT through the edge. Tunnel: the client connects
to bench.private.test:PORT, which our DNS maps to a VIP; the flow goes TUN → tunneler run →
edge router → run-host → 127.0.0.1:PORT (end-to-end encryption on). Reported, as ratios to
direct: bulk download MB/s over 1 and 16 streams, new connections/s (connect + 1-byte echo),
request/response latency p50/p99 on one connection, and DNS queries/s (our DNS answering an
intercepted name vs the upstream stub answering directly).

Usage: `sudo .venv/bin/python bench/intercept.py [--size-mib 512] [--seconds 3]`.
Subcommands used inside the namespaces: `serve PORT`, `load HOST PORT SIZE SECONDS`,
`figure NAME HOST PORT SIZE SECONDS [--count N] [--message-bytes B]` (one figure, for
bench/peers.py), `dns SERVER NAME SECONDS`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import netload  # noqa: E402  (the lead's load generator: server protocol and statistics)

PORT = 5201
CHUNK = 1 << 20


# -- load client (runs inside the client namespace) ------------------------------------------

async def _download(host: str, port: int, size: int) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(netload.HEADER.pack(b"D", size))
    received = 0
    while received < size + 32:
        chunk = await reader.read(CHUNK)
        if not chunk:
            break
        received += len(chunk)
    writer.close()
    return received - 32


async def _bulk(host: str, port: int, total: int, streams: int) -> float:
    start = time.perf_counter()
    sizes = await asyncio.gather(*(_download(host, port, total // streams)
                                   for _ in range(streams)))
    elapsed = time.perf_counter() - start
    if sum(sizes) != (total // streams) * streams:
        raise RuntimeError(f"short download: {sum(sizes)} bytes")
    return total / elapsed / 1e6


async def _connect_rate(host: str, port: int, seconds: float, workers: int = 16) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(netload.HEADER.pack(b"E", 0) + b"x")
            await reader.readexactly(1)
            writer.close()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return done / (time.perf_counter() - start)


def _address(host: str, port: int) -> str:
    return str(socket.getaddrinfo(host, port, socket.AF_INET)[0][4][0])


async def _rtt(address: str, port: int, count: int = 2000, size: int = 1) -> dict[str, float]:
    samples = await netload.rtt(port, count, host=address, nodelay=True, size=size)
    return {"rtt_p50_us": netload.percentile(samples, 50) * 1e6,
            "rtt_p99_us": netload.percentile(samples, 99) * 1e6}


async def load(host: str, port: int, size: int, seconds: float) -> dict[str, float]:
    """Every TCP figure against one target."""
    address = _address(host, port)
    rtt = await _rtt(address, port)
    return {
        "bulk_1_MBps": await _bulk(address, port, size, 1),
        "bulk_16_MBps": await _bulk(address, port, size, 16),
        "conn_per_s": await _connect_rate(address, port, seconds),
        **rtt,
    }


FIGURES = ("bulk_1_MBps", "bulk_16_MBps", "rtt", "conn_per_s")


async def figure(name: str, host: str, port: int, size: int, seconds: float, *,
                 count: int = 2000, message: int = 1) -> dict[str, float]:
    """One of FIGURES against one target: a download of `size` bytes over 1 or 16 streams,
    `count` round trips of `message` bytes (p50 and p99), or new connections/s for `seconds`."""
    address = _address(host, port)
    if name == "rtt":
        return await _rtt(address, port, count, message)
    if name == "conn_per_s":
        return {name: await _connect_rate(address, port, seconds)}
    return {name: await _bulk(address, port, size, 16 if name == "bulk_16_MBps" else 1)}


def dns_rate(server: str, name: str, seconds: float, window: int = 32) -> float:
    """Answers/s with `window` queries outstanding on one UDP socket."""
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((server, 53))
    sock.settimeout(1.0)
    answered = ident = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    for _ in range(window):
        ident = (ident + 1) & 0xFFFF
        sock.send(struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\x00\x01\x00\x01")
    while time.perf_counter() < deadline:
        try:
            sock.recv(4096)
        except TimeoutError:
            continue  # a lost query: keep the window full
        answered += 1
        ident = (ident + 1) & 0xFFFF
        sock.send(struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\x00\x01\x00\x01")
    return answered / (time.perf_counter() - start)


# -- orchestration (runs as root in the host namespace) --------------------------------------

def _run_in(ns: Any, *args: str, timeout: float = 300) -> Any:
    out = ns.run([sys.executable, __file__, *args], timeout=timeout).stdout
    return json.loads(out.strip().splitlines()[-1])


def _deploy(tmp: Path, pool: Any, client_args: tuple[str, ...] = ()) -> tuple[Any, Any, Any, Any]:
    """The three namespaces and processes; `client_args` go to `tunneler run`."""
    from tests.privileged.run_support import DNS_STUB, Deployment, service, tcp_intercept
    from tunneler.demo.netns import veth

    deploy = Deployment(tmp)
    client = pool.new(hosts="127.0.0.1 localhost\n198.18.0.2 edge.test\n",
                      resolv_conf="nameserver 198.18.0.2\n")
    edge = pool.new(hosts="127.0.0.1 localhost\n198.18.0.2 edge.test\n")
    server = pool.new(hosts="127.0.0.1 localhost\n198.18.1.1 edge.test\n")
    veth(client, edge, "198.18.0.1/24", "198.18.0.2/24")
    veth(edge, server, "198.18.1.1/24", "198.18.1.2/24")
    edge.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    client.ip("route", "add", "198.18.1.0/24", "via", "198.18.0.2")
    server.ip("route", "add", "198.18.0.0/24", "via", "198.18.1.1")
    deploy.start(edge, "dns", [sys.executable, "-c", DNS_STUB, "198.18.0.2", "192.0.2.1"])
    deploy.network(edge, "edge.test", "0.0.0.0", [service(
        "bench", tcp_intercept(["bench.private.test"], PORT),
        {"protocol": "tcp", "address": "127.0.0.1", "port": PORT})])
    deploy.start(server, "netload", [sys.executable, __file__, "serve", str(PORT)])
    deploy.run_host(server, deploy.enroll(server, "host1"), bound=1)
    deploy.run_client(client, deploy.enroll(client, "client1"), *client_args)
    return deploy, client, edge, server


def orchestrate(size: int, seconds: float) -> dict[str, Any]:
    from tests.support.netns import NetnsPool

    pool = NetnsPool()
    with tempfile.TemporaryDirectory(prefix="tunneler-bench-") as tmp:
        deploy = None
        try:
            deploy, client, _edge, _server = _deploy(Path(tmp), pool)
            args = (str(size), str(seconds))
            direct = _run_in(client, "load", "198.18.1.2", str(PORT), *args)
            tunnel = _run_in(client, "load", "bench.private.test", str(PORT), *args)
            dns_direct = _run_in(client, "dns", "198.18.0.2", "bench.private.test", str(seconds))
            dns_ours = _run_in(client, "dns", "100.64.0.2", "bench.private.test", str(seconds))
        finally:
            if deploy is not None:
                deploy.close()
            pool.close()
    ratios = {key: tunnel[key] / direct[key] for key in direct}
    ratios["dns_qps"] = dns_ours / dns_direct
    return {"direct": direct, "tunnel": tunnel, "dns_qps": {"upstream_stub": dns_direct,
                                                            "tunneler": dns_ours},
            "ratio_tunnel_to_direct": ratios}


async def _serve(port: int) -> None:
    server = await asyncio.start_server(netload._handle, "0.0.0.0", port, backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve")
    serve.add_argument("port", type=int)
    run_load = sub.add_parser("load")
    run_load.add_argument("host")
    run_load.add_argument("port", type=int)
    run_load.add_argument("size", type=int)
    run_load.add_argument("seconds", type=float)
    one = sub.add_parser("figure")
    one.add_argument("name", choices=FIGURES)
    one.add_argument("host")
    one.add_argument("port", type=int)
    one.add_argument("size", type=int)
    one.add_argument("seconds", type=float)
    one.add_argument("--count", type=int, default=2000, help="round trips (rtt)")
    one.add_argument("--message-bytes", type=int, default=1, help="round-trip size (rtt)")
    dns = sub.add_parser("dns")
    dns.add_argument("server")
    dns.add_argument("name")
    dns.add_argument("seconds", type=float)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    if args.command == "serve":
        asyncio.run(_serve(args.port))
    elif args.command == "load":
        print(json.dumps(asyncio.run(load(args.host, args.port, args.size, args.seconds))))
    elif args.command == "figure":
        print(json.dumps(asyncio.run(figure(args.name, args.host, args.port, args.size,
                                            args.seconds, count=args.count,
                                            message=args.message_bytes))))
    elif args.command == "dns":
        print(json.dumps(dns_rate(args.server, args.name, args.seconds)))
    else:
        if os.geteuid() != 0:
            sys.exit("run as root: the benchmark creates network namespaces")
        result = orchestrate(args.size_mib << 20, args.seconds)
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
