"""Crash loops (issue 9, item 7): `tunneler run` SIGKILLed 50 times at random moments.

In one namespace with the network, run-host and the LLM stub: each round starts `tunneler
run` and kills it with SIGKILL at a moment drawn from a seeded RNG (printed): during start,
right after it is ready, during a policy change (a second service added or removed by
`network apply` while it runs), or under load (requests in flight). Every next start must
replay the dead daemon's journal and come up; afterwards a clean start serves a request, a
SIGTERM stops it, and no TUN device, no 100.64/10 route and no resolver line is left.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

from tests.privileged.run_support import (
    LLM_SERVICE,
    TUNNELER,
    Deployment,
    links,
    service,
    tcp_intercept,
)
from tests.support.netns import NetnsPool
from tunneler.demo.netns import Netns

KILLS = 50
RESOLV = "nameserver 127.0.0.1\n"
URL = "http://llm.private.test:8000/v1/models"
EXTRA = service("extra", tcp_intercept(["extra.private.test"], 9000),
                {"protocol": "tcp", "address": "127.0.0.1", "port": 9000})


def _load(ns: Netns, stop: threading.Event) -> None:
    while not stop.is_set():
        ns.run(["curl", "-s", "-o", "/dev/null", "--max-time", "2", URL], check=False,
               timeout=10)


def test_fifty_sigkills_at_random_moments_leave_nothing_behind(netns_pool: NetnsPool,
                                                                tmp_path: Path) -> None:
    seed = random.SystemRandom().randrange(1 << 32)
    rng = random.Random(seed)
    print(f"crash loops: seed {seed}")
    ns = netns_pool.new(resolv_conf=RESOLV)
    deploy = Deployment(tmp_path)
    runtime = tmp_path / "run"
    phases: Counter[str] = Counter()
    try:
        deploy.llm_behind_host(ns)
        identity = deploy.enroll(ns, "client1")
        argv = [*TUNNELER, "run", "--identity", str(identity), "--runtime-dir", str(runtime),
                "--refresh-interval", "1"]
        with_extra = False
        for round_ in range(KILLS):
            name = f"run{round_}"
            phase = rng.choices(["start", "ready", "policy", "load"], [5, 2, 2, 1])[0]
            phases[phase] += 1
            deploy.start(ns, name, argv)
            if phase == "start":
                time.sleep(rng.uniform(0.0, 1.5))
            else:
                deploy.wait_log(name, "daemon.ready", timeout=60)
                if phase == "policy":
                    with_extra = not with_extra
                    deploy.apply(ns, [LLM_SERVICE, EXTRA] if with_extra else [LLM_SERVICE])
                    time.sleep(rng.uniform(0.0, 1.5))
                elif phase == "load":
                    stop = threading.Event()
                    worker = threading.Thread(target=_load, args=(ns, stop))
                    worker.start()
                    time.sleep(rng.uniform(0.2, 1.0))
                else:
                    time.sleep(rng.uniform(0.0, 0.5))
            deploy.stop(name, signal.SIGKILL)
            if phase == "load":
                stop.set()
                worker.join(timeout=30)
        deploy.start(ns, "final", argv)
        deploy.wait_log("final", "daemon.ready", timeout=60)
        served = ns.run(["curl", "-sS", "--max-time", "10", URL])
        assert '"object"' in served.stdout
        assert deploy.stop("final", signal.SIGTERM) == 0
        recovered = sum(deploy.log(f"run{i}").count("journal.recovery_finished")
                        for i in range(KILLS)) + deploy.log("final").count(
                            "journal.recovery_finished")
        print(f"crash loops: {KILLS} SIGKILLs ({dict(phases)}), {recovered} journal replays")
        assert "tunneler0" not in links(ns)
        assert "100.64." not in ns.run(["ip", "-4", "route", "show", "table", "all"]).stdout
        assert ns.etc_file("resolv.conf").read_text() == RESOLV
        assert recovered >= phases["ready"] + phases["policy"] + phases["load"]
        assert not (runtime / "journal.json").exists()
    finally:
        deploy.close()
