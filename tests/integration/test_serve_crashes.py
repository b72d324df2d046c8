"""`network serve` SIGKILLed 20 times during `apply` and enrollment (issue 9, item 7).

Each round starts `network serve`, runs an `apply` (adding one service) and an enrollment
(`tunneler enroll` of a new identity) at the same time, and kills the server with SIGKILL at
a seeded random moment. What was acknowledged must survive: afterwards the database passes
SQLite's integrity check, every service whose `apply` exited 0 is there, and every identity
whose enrollment wrote its identity file logs in. An enrollment the kill interrupted either
completes when tried again with the same token or is refused cleanly (never half-done).
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.support.overlay import Overlay, free_port, tunneler, wait_for_port
from tunneler.cli import main as cli
from tunneler.client.context import ZitiContext
from tunneler.errors import ControllerError

ROUNDS = 20
TUNNELER = [sys.executable, "-m", "tunneler"]


def _policy(services: int) -> str:
    return yaml.safe_dump({"services": [
        {"name": f"svc{n}", "roleAttributes": ["svc"], "configs": {
            "host.v1": {"protocol": "tcp", "address": "127.0.0.1", "port": 9000 + n}}}
        for n in range(services)]})


def _logs_in(identity: Path) -> bool:
    async def attempt() -> bool:
        ctx = ZitiContext(identity)
        try:
            await ctx.start()
        except ControllerError:
            return False
        finally:
            await ctx.close()
        return True
    return asyncio.run(attempt())


def test_twenty_sigkills_during_apply_and_enrollment_lose_nothing_acknowledged(
        tmp_path: Path) -> None:
    seed = random.SystemRandom().randrange(1 << 32)
    rng = random.Random(seed)
    ctrl, router = free_port(), free_port()
    net = tmp_path / "net"
    tunneler(tmp_path, "network", "init", str(net), "--hostname", "localhost",
             "--controller-port", str(ctrl), "--router-port", str(router))
    overlay = Overlay(tmp_path)
    applied: list[int] = []
    enrolled: list[str] = []
    interrupted: list[str] = []
    try:
        for round_ in range(ROUNDS):
            overlay.start(f"serve{round_}", "network", "serve", str(net), "--listen",
                          "127.0.0.1")
            wait_for_port(ctrl)
            identity = f"id{round_}"
            assert cli(["network", "enroll-token", str(net), identity,   # in-process: quick
                        "-o", str(tmp_path / f"{identity}.jwt")]) == 0
            (tmp_path / "policy.yaml").write_text(_policy(round_ + 1))
            apply = subprocess.Popen([*TUNNELER, "network", "apply", str(net), "policy.yaml"],
                                     cwd=tmp_path, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            enroll = subprocess.Popen([*TUNNELER, "enroll", "--jwt", f"{identity}.jwt",
                                       "--identity", f"{identity}.json"], cwd=tmp_path,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.0, 1.2))
            overlay.stop(f"serve{round_}", signal.SIGKILL)
            if apply.wait(timeout=60) == 0:
                applied.append(round_)
            if enroll.wait(timeout=60) == 0 and (tmp_path / f"{identity}.json").exists():
                enrolled.append(identity)
            else:
                interrupted.append(identity)
        with sqlite3.connect(net / "state.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        overlay.start("final", "network", "serve", str(net), "--listen", "127.0.0.1")
        wait_for_port(ctrl)
        listed = subprocess.run([*TUNNELER, "network", "list", str(net), "services", "--json"],
                                capture_output=True, text=True, check=True, timeout=60).stdout
        names = {row["name"] for row in json.loads(listed)}
        for round_ in applied:
            assert f"svc{round_}" in names
        for identity in enrolled:
            assert _logs_in(tmp_path / f"{identity}.json"), identity
        for identity in interrupted:   # the same token again: done now, or cleanly refused
            again = subprocess.run([*TUNNELER, "enroll", "--jwt", f"{identity}.jwt",
                                    "--identity", f"{identity}.json"], cwd=tmp_path,
                                   capture_output=True, text=True, timeout=60, check=False)
            assert again.returncode == 0 or "error:" in again.stderr, again.stderr
            if again.returncode == 0:
                assert _logs_in(tmp_path / f"{identity}.json"), identity
        print(f"serve crashes: seed {seed}, {ROUNDS} SIGKILLs, {len(applied)} applies and "
              f"{len(enrolled)} enrollments acknowledged, all present; {len(interrupted)} "
              "enrollments interrupted")
    finally:
        overlay.stop_all()
