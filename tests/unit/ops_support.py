"""A small in-test `DaemonView` for the ops layer's tests (the real one is the daemon's).

`SampleView` holds real `Metrics` and builds its snapshots from plain attributes the test sets
(`router_up`, `services_loaded`, ...), so each test states the daemon state it needs. DNS
outcomes come from the engine's responder in a real daemon, so here from `dns_counts`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tunneler import __version__, log
from tunneler.counters import Counters, Metrics, PoolUsage
from tunneler.ops.snapshot import (
    DnsStatus,
    IdentityStatus,
    InterceptRow,
    RouterStatus,
    Status,
    TunStatus,
)


@dataclass
class SampleView:
    router_up: bool = True
    services_loaded: bool = True
    dns_applied: bool = True
    stats: Metrics = field(default_factory=Metrics)
    rows: list[InterceptRow] = field(default_factory=list)
    refreshes: int = 0
    log_levels: list[str] = field(default_factory=list)
    uptime_s: float = 3723.0
    dns_counts: dict[str, int] = field(default_factory=dict)

    def intercepts(self) -> list[InterceptRow]:
        return [InterceptRow(**{**r.__dict__,
                                "active_flows": self.stats.active_flows(r.service),
                                "last_error": self.stats.last_error(r.service)})
                for r in self.rows]

    def status(self) -> Status:
        return Status(
            version=__version__, mode="intercept", uptime_s=self.uptime_s,
            services_loaded=self.services_loaded,
            identities=(IdentityStatus("laptop", True, True, "2030-01-01T00:00:00+00:00", 2),),
            routers=(RouterStatus("router1", "laptop", self.router_up,
                                  1.25 if self.router_up else None, "tls://localhost:3022"),),
            tun=TunStatus("tunneler0", True, True, 3),
            dns=DnsStatus("100.64.0.2", "resolv.conf", self.dns_applied, ("10.0.0.53",)),
            counters=self._counters(),
        )

    def _counters(self) -> Counters:
        counters = self.stats.snapshot(PoolUsage(size=65534, used=len(self.rows)))
        return dataclasses.replace(counters, dns={**counters.dns, **self.dns_counts})

    async def refresh(self) -> dict[str, int]:
        self.refreshes += 1
        return {"added": 1, "changed": 0, "removed": 0}

    def set_log_level(self, level: str) -> None:
        log.parse_level(level)
        self.log_levels.append(level)


def llm_rows() -> list[InterceptRow]:
    """Two intercepts of two services, as a daemon would list them."""
    return [
        InterceptRow("llm.private.test", "llm", "laptop", ("100.64.0.3",), ("tcp",), ("443",),
                     "router1", 1.25),
        InterceptRow("*.models.private.test", "models-wildcard-service-with-a-long-name",
                     "laptop", ("100.64.0.4", "100.64.0.5"), ("tcp", "udp"),
                     ("8000-8100", "9000"), "router-with-a-rather-long-name.example",
                     12.0),
    ]
