"""`--metrics-listen HOST:PORT`: /healthz, /ready and Prometheus /metrics over HTTP.

- ``/healthz``: 200 while the event loop answers (liveness).
- ``/ready``: 200 when `snapshot.problems(status)` is empty, else 503 with the problems.
- ``/metrics``: the Prometheus text format, built at scrape time from the daemon's view by
  `ViewCollector` on a private registry (no process-global state).

The listener is meant for loopback; binding it elsewhere is the operator's explicit choice.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from tunneler.errors import ConfigError
from tunneler.log import get_logger
from tunneler.ops.snapshot import DaemonView, Status, problems

log = get_logger("metrics")

PREFIX = "tunneler"


def parse_listen(value: str) -> tuple[str, int]:
    """`127.0.0.1:9100` or `[::1]:9100` → (host, port).

    Raises:
        ConfigError: not HOST:PORT with an IP address and a port in 1..65535.
    """
    host, sep, port_text = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"--metrics-listen {value!r}: expected IP:PORT, "
                          "e.g. 127.0.0.1:9100") from None
    if not sep or not 0 < port < 65536:
        raise ConfigError(f"--metrics-listen {value!r}: port must be 1..65535")
    return host, port


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _labelled(family: Any, values: dict[str, int]) -> Any:
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class ViewCollector:
    """A Prometheus collector reading one `DaemonView` at every scrape."""

    def __init__(self, view: DaemonView) -> None:
        self.view = view

    def collect(self) -> Iterator[Any]:
        status = self.view.status()
        yield _gauge("ready", "1 when ready (router up, services, DNS and routes applied)",
                     0 if problems(status) else 1)
        yield _gauge("uptime_seconds", "seconds since the daemon started", status.uptime_s)
        yield from _identity_metrics(status)
        yield from _router_metrics(status)
        yield from _service_metrics(status)
        yield from _counter_metrics(status)


def _identity_metrics(status: Status) -> Iterator[Any]:
    expiry = GaugeMetricFamily(f"{PREFIX}_identity_certificate_expiry_timestamp_seconds",
                               "when the identity's client certificate expires (epoch seconds)",
                               labels=["identity"])
    failing = GaugeMetricFamily(f"{PREFIX}_identity_certificate_renewal_failing",
                                "1 while the last certificate renewal attempt failed",
                                labels=["identity"])
    for ident in status.identities:
        if ident.cert_expires_at:
            expiry.add_metric([ident.name], datetime.datetime.fromisoformat(
                ident.cert_expires_at).timestamp())
            failing.add_metric([ident.name], 1 if ident.cert_renewal_error else 0)
    yield expiry
    yield failing


def _router_metrics(status: Status) -> Iterator[Any]:
    connected = GaugeMetricFamily(f"{PREFIX}_router_connected", "1 when the channel is up",
                                  labels=["router", "identity"])
    latency = GaugeMetricFamily(f"{PREFIX}_router_latency_seconds",
                                "last measured channel round trip", labels=["router", "identity"])
    for router in status.routers:
        labels = [router.name, router.identity]
        connected.add_metric(labels, 1 if router.connected else 0)
        if router.latency_ms is not None:
            latency.add_metric(labels, router.latency_ms / 1000)
    yield connected
    yield latency


def _service_metrics(status: Status) -> Iterator[Any]:
    opened = CounterMetricFamily(f"{PREFIX}_service_flows", "flows opened per service",
                                 labels=["service"])
    active = GaugeMetricFamily(f"{PREFIX}_service_flows_active", "open flows per service",
                               labels=["service"])
    moved = CounterMetricFamily(f"{PREFIX}_service_bytes", "bytes relayed per service",
                                labels=["service", "direction"])
    for name, svc in sorted(status.counters.services.items()):
        opened.add_metric([name], svc.flows_opened)
        active.add_metric([name], svc.flows_active)
        moved.add_metric([name, "up"], svc.bytes_up)
        moved.add_metric([name, "down"], svc.bytes_down)
    yield from (opened, active, moved)
    totals = status.counters.flows
    yield CounterMetricFamily(f"{PREFIX}_flows", "flows opened", value=totals.flows_opened)
    yield _gauge("flows_active", "open flows", totals.flows_active)
    total_bytes = CounterMetricFamily(f"{PREFIX}_bytes", "bytes relayed", labels=["direction"])
    total_bytes.add_metric(["up"], totals.bytes_up)
    total_bytes.add_metric(["down"], totals.bytes_down)
    yield total_bytes


def _counter_metrics(status: Status) -> Iterator[Any]:
    counters = status.counters
    yield _labelled(CounterMetricFamily(f"{PREFIX}_dns_queries", "DNS queries by outcome",
                                        labels=["outcome"]), counters.dns)
    yield _labelled(CounterMetricFamily(f"{PREFIX}_dial_failures", "failed dials by reason",
                                        labels=["reason"]), counters.dial_failures)
    yield _labelled(CounterMetricFamily(f"{PREFIX}_packets_dropped", "dropped packets by reason",
                                        labels=["reason"]), counters.packets_dropped)
    yield _labelled(GaugeMetricFamily(f"{PREFIX}_buffer_high_water_bytes",
                                      "largest size seen per buffer", labels=["buffer"]),
                    counters.buffer_high_water)
    hist = counters.dial_latency
    cumulative, buckets = 0, []
    for bound, count in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    yield HistogramMetricFamily(f"{PREFIX}_dial_latency_seconds", "time to a dial's answer",
                                buckets=buckets, sum_value=hist.total)
    if counters.vip_pool is not None:
        yield _gauge("vip_pool_size", "virtual IPs in the pool", counters.vip_pool.size)
        yield _gauge("vip_pool_used", "virtual IPs assigned", counters.vip_pool.used)


def make_registry(view: DaemonView) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ViewCollector(view))
    return registry


def make_app(view: DaemonView) -> web.Application:
    """The aiohttp application serving the three endpoints."""
    registry = make_registry(view)

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def ready(_request: web.Request) -> web.Response:
        found = problems(view.status())
        if found:
            return web.Response(status=503, text="not ready\n" + "".join(f"{p}\n" for p in found))
        return web.Response(text="ready\n")

    async def metrics(_request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(client_max_size=1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    return app


class MetricsServer:
    """Runs `make_app(view)` on HOST:PORT until `close()`."""

    def __init__(self, view: DaemonView, listen: str) -> None:
        self.host, self.port = parse_listen(listen)
        self._runner = web.AppRunner(make_app(view), access_log=None)

    async def start(self) -> None:
        """Bind; raises OSError when the address is taken."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        log.info("metrics.listening", host=self.host, port=self.port)

    async def close(self) -> None:
        await self._runner.cleanup()
