"""Controller outage benchmark: 10 minutes without the controller (issue 9, item 4).

The split network of tests/integration/test_failover.py on 127.0.0.1 (controller and two
routers as separate processes; router1 runs). run-host and a proxy start, then the
controller is SIGKILLed. For the first half of `--seconds` one long-lived flow keeps echoing
and new flows alternate between a service dialled before and one never dialled (its Dial
session was fetched ahead). Then run-host and the proxy are restarted: they serve from their
persisted caches (0600) and `status` says so; the second half runs on the restarted daemons.
Finally the controller returns and both take up their old API sessions. Targets: zero failed
new flows, the long-lived flow alive through the first half, both restarts served.

Usage: `.venv/bin/python bench/outage.py [--seconds 600] [--json out.json]` (no root).
Exit 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.outage import (  # noqa: E402
    controller_back,
    host_identity_status,
    keep_flowing,
    kill_controller,
    restart_from_cache,
    start_clients,
    wait_for_caches,
)
from tests.support.overlay import echo_server, host_service, roundtrip, split_network  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="outage-") as scratch, echo_server() as echo, \
            split_network(Path(scratch), [host_service("echo", echo),
                                          host_service("echo2", echo)]) as (overlay, _ports):
        clients = start_clients(overlay)
        long_lived = roundtrip(clients.ports["echo"], b"before")
        wait_for_caches(overlay)
        kill_controller(overlay)
        down = time.monotonic()
        before = keep_flowing(clients, long_lived, args.seconds / 2)
        long_lived.close()
        restart = time.monotonic()
        restart_from_cache(overlay, already_bound=2)
        restarted_in = time.monotonic() - restart
        cached = host_identity_status(overlay, clients)["services_cached_at"]
        after = keep_flowing(clients, None, args.seconds / 2)
        outage = time.monotonic() - down
        back = time.monotonic()
        controller_back(overlay)
        figures = {
            "outage_s": round(outage, 1),
            "before_restart": dataclasses.asdict(before),
            "restart_from_cache_s": round(restarted_in, 2),
            "status_services_cached_at": cached,
            "after_restart": dataclasses.asdict(after),
            "controller_back_s": round(time.monotonic() - back, 2),
        }
    print(json.dumps(figures, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    missed = before.new_failed or after.new_failed or before.long_lived_lost or cached is None
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
