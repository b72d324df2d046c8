"""What the TCP and UDP interceptors share: their parts, and one flow's dial, timed and counted.

``FlowInterceptor`` holds the data path's parts both interceptors use (TUN pump, policy, VIP
pool, flat counters, limits, ops counters) and the ``draining`` flag.

``dial_flow`` dials ``match.target`` with the flow's app data and reports the outcome twice:
to the engine's flat counters (``<proto>_dials_failed``, a rate-limited warning) and to the
ops counters per service (``dial_succeeded`` with the latency measured by ``perf_counter``,
whose resolution is finer than an event loop clock's, or ``dial_failed`` with the reason).
"""

from __future__ import annotations

import time

from tunneler.dns.pool import VipPool
from tunneler.engine.limits import Limits
from tunneler.engine.policy import InterceptPolicy, Match
from tunneler.engine.stats import Stats
from tunneler.engine.tunreader import TunPump
from tunneler.errors import TunnelerError
from tunneler.nat import OriginalDestination
from tunneler.ops import stats as ops_stats
from tunneler.overlay import OverlaySink


async def dial_flow(match: Match, sink: OverlaySink, proto: str, key: OriginalDestination,
                    stats: Stats, counters: ops_stats.Stats) -> bool:
    """Dial the service of ``match`` for flow ``key``; False (counted, logged) if it failed."""
    target = match.target
    flow = (proto, key.src_ip, key.src_port, key.dst_ip, key.dst_port)
    started = time.perf_counter()
    try:
        await target.context.dial(target.service, sink, timeout=target.connect_timeout,
                                  app_data=match.app_data(*flow),
                                  terminator_identity=match.terminator_identity(*flow))
    except (TunnelerError, OSError, TimeoutError) as exc:  # refuses this flow only
        stats.count(f"{proto}_dials_failed")
        stats.warn(f"engine.{proto}_dial_failed", service=target.service, error=str(exc))
        counters.dial_failed(target.service, ops_stats.failure_reason(exc), str(exc))
        return False
    counters.dial_succeeded(target.service, time.perf_counter() - started)
    return True


class FlowInterceptor:
    """The parts of the data path a TCP or UDP interceptor works with; `draining` refuses flows."""

    def __init__(self, pump: TunPump, policy: InterceptPolicy, pool: VipPool, stats: Stats,
                 limits: Limits, counters: ops_stats.Stats) -> None:
        self.pump = pump
        self.policy = policy
        self.pool = pool
        self.stats = stats
        self.counters = counters  # per service, for the ops layer
        self.limits = limits
        self.draining = False
