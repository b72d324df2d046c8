"""What the TCP and UDP interceptors share: their parts, and one flow's dial, timed and counted.

``FlowInterceptor`` holds the data path's parts both interceptors use (TUN pump, policy, VIP
pool, events and metrics, limits) and the ``draining`` flag.

``dial_flow`` dials ``match.target`` with the flow's app data and counts the outcome: per
protocol (``Count.TCP_DIALS_FAILED``/``UDP_DIALS_FAILED``, with a rate-limited warning) and
per service (``dial_succeeded`` with the latency measured by ``perf_counter``, whose
resolution is finer than an event loop clock's, or ``dial_failed`` with the `DialFailure`
the error carries).
"""

from __future__ import annotations

import time

from tunneler.counters import Count, Metrics
from tunneler.dns.pool import VipPool
from tunneler.engine.events import Events, Proto
from tunneler.engine.limits import Limits
from tunneler.engine.policy import InterceptPolicy, Match
from tunneler.engine.tunreader import TunPump
from tunneler.errors import TunnelerError
from tunneler.nat import OriginalDestination
from tunneler.overlay import OverlaySink

_DIALS_FAILED: dict[Proto, Count] = {"tcp": Count.TCP_DIALS_FAILED, "udp": Count.UDP_DIALS_FAILED}


async def dial_flow(match: Match, sink: OverlaySink, proto: Proto, key: OriginalDestination,
                    events: Events) -> bool:
    """Dial the service of ``match`` for flow ``key``; False (counted, logged) if it failed."""
    target = match.target
    flow = (proto, key.src_ip, key.src_port, key.dst_ip, key.dst_port)
    started = time.perf_counter()
    try:
        await target.context.dial(target.service, sink, timeout=target.connect_timeout,
                                  app_data=match.app_data(*flow),
                                  terminator_identity=match.terminator_identity(*flow))
    except (TunnelerError, OSError, TimeoutError) as exc:  # refuses this flow only
        events.metrics.count(_DIALS_FAILED[proto])
        events.warn(f"engine.{proto}_dial_failed", service=target.service, error=str(exc))
        events.metrics.dial_failed(target.service, exc)
        return False
    events.metrics.dial_succeeded(target.service, time.perf_counter() - started)
    return True


class FlowInterceptor:
    """The parts of the data path a TCP or UDP interceptor works with; `draining` refuses flows."""

    def __init__(self, pump: TunPump, policy: InterceptPolicy, pool: VipPool, events: Events,
                 limits: Limits) -> None:
        self.pump = pump
        self.policy = policy
        self.pool = pool
        self.events = events
        self.metrics: Metrics = events.metrics
        self.limits = limits
        self.draining = False
