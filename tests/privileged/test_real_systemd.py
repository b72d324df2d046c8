"""The units under a real systemd, with a real systemd-resolved (issue 12, items 2 and 3).

A Debian root (debootstrap: systemd, dbus, systemd-resolved, python3) boots with
systemd-nspawn inside the demo's app namespace; its resolved's global server is the app
side's original resolver (the scenario's upstream DNS in edge, which knows the edge router's
name and nothing else). `network serve` runs in edge. The sdist, the wheel and the enrollment
tokens are copied in; the locked wheelhouse is mounted read-only as pip's only source. Then
the README's install block runs verbatim, as root, in the booted system: both units, the
intercept identity and the host identity, `systemctl enable --now`.

The booted system is the user's host: curl there reaches `llm.private.test` by name through
tunneler.service, the edge, and tunneler-host.service, which connects to an LLM stub on the
namespace's loopback. The tests share that one boot and run in file order: install, DNS via
resolved, watchdog, crash and ExecStopPost, --dns-route-all, stop, exposure scores.
"""

from __future__ import annotations

import re
import shutil
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.dist import Dist
from tests.support.realhost import SYSTEMD_PACKAGES, Booted, debian_root, missing_tools
from tunneler.demo.scenario import (
    EDGE_APP_IP,
    EDGE_NAME,
    LLM_NAME,
    LLM_PORT,
    LLM_SERVICE,
    TUNNELER,
    Scenario,
    Service,
)

pytestmark = pytest.mark.skipif(missing_tools("systemd-nspawn", "debootstrap", "nsenter")
                                is not None, reason=str(missing_tools("systemd-nspawn",
                                                                      "debootstrap", "nsenter")))

WILDCARD = Service("models", "*.models.test", 8001)
TUN = "tunneler0"
DNS_IP = "100.64.0.2"
WAIT = 90.0
#: the README's install block is the one after this line
README_ANCHOR = "**As a systemd service**"
#: test-only settings: a short watchdog (so a wedged loop is caught in seconds), no restart
#: delay; everything else is the shipped unit
FAST_WATCHDOG = "[Service]\nWatchdogSec=6\nRestartSec=0\n"


@dataclass
class System:
    booted: Booted
    scenario: Scenario

    def sh(self, script: str, *, check: bool = True, env: dict[str, str] | None = None,
           timeout: float = 300) -> str:
        done = self.booted.run("bash", "-euo", "pipefail", "-c", script, check=check, env=env,
                               timeout=timeout)
        return done.stdout + done.stderr

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.booted.run("systemctl", "show", unit, *(f"-p{p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_active(self, unit: str, restarts: int | None = None) -> dict[str, str]:
        deadline = time.monotonic() + WAIT
        while True:
            state = self.show(unit, "ActiveState", "SubState", "NRestarts", "MainPID")
            if state["ActiveState"] == "active" and (
                    restarts is None or int(state["NRestarts"]) >= restarts):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"{unit}: {state}\n{self.journal(unit)}")
            time.sleep(0.5)

    def journal(self, unit: str) -> str:
        return self.booted.run("journalctl", "-u", unit, "--no-pager", "-o", "cat",
                               check=False).stdout[-6000:]

    def resolve(self, name: str) -> str:
        """`resolvectl query NAME`: its output (NXDOMAIN and friends included)."""
        done = self.booted.run("resolvectl", "query", "--cache=no", name, check=False)
        return done.stdout + done.stderr

    def link(self) -> str:
        return self.sh(f"resolvectl status {TUN} 2>&1 || true")

    def has_tun(self) -> bool:
        links = self.scenario.app.run(["ip", "-o", "link", "show"]).stdout
        return f": {TUN}:" in links

    def routes(self) -> str:
        return self.scenario.app.run(["ip", "-4", "route", "show", "table", "all"]).stdout


def _readme_block() -> str:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    after = text[text.index(README_ANCHOR):]
    return after.split("```sh\n", 1)[1].split("```", 1)[0]


def _prepare(root: Path, dist: Dist, tokens: Path) -> None:
    """What the user brings to the host: the release files and the tokens; resolved's
    original server. Nothing of tunneler is installed yet."""
    src = root / "root" / "src"
    src.mkdir(parents=True)
    with tarfile.open(dist.sdist) as archive:
        archive.extractall(src, filter="data")
    (release,) = src.iterdir()
    shutil.copy2(dist.wheel, release)
    for name in ("laptop.jwt", "llm-host.jwt"):
        shutil.copy2(tokens / name, release / name)
    resolved = root / "etc" / "systemd" / "resolved.conf.d"
    resolved.mkdir(parents=True, exist_ok=True)
    (resolved / "upstream.conf").write_text(f"[Resolve]\nDNS={EDGE_APP_IP}\n")
    (root / "etc" / "hostname").write_text("tunneler-host\n")


@pytest.fixture(scope="module", name="system")
def _system(dist: Dist, tmp_path_factory: pytest.TempPathFactory,
            debootstrap_cache: Path) -> Iterator[System]:
    work = tmp_path_factory.mktemp("systemd")
    scenario = Scenario(work / "scenario", services=(LLM_SERVICE, WILDCARD))
    booted: Booted | None = None
    try:
        scenario.build_topology()
        scenario.start_network()
        scenario.start(scenario.app, "llm-stub", [*TUNNELER, "llm-stub", "--listen", "127.0.0.1",
                                                  "--port", str(LLM_PORT)])
        scenario.wait_log("llm-stub", "llmstub.started")
        root = debian_root(work / "root", SYSTEMD_PACKAGES, cache=debootstrap_cache)
        _prepare(root, dist, scenario.dir)
        booted = Booted(root, scenario.app.name, work / "console.log",
                        f"{dist.wheelhouse}:/wheels")
        booted.boot()
        # systemd-udevd's default rules make /dev/net/tun 0666 on a real host; nspawn copied
        # this machine's node, which no udev touched (0600)
        booted.run("chmod", "0666", "/dev/net/tun")
        yield System(booted, scenario)
    finally:
        if booted is not None:
            booted.close()
        scenario.close()
        shutil.rmtree(work, ignore_errors=True)


def test_the_readme_install_gives_two_notify_units_that_serve_by_name(system: System) -> None:
    release = system.sh("ls -d /root/src/tunneler-*").strip()
    system.sh(f"cd {release}\n{_readme_block()}", env={"PIP_NO_INDEX": "1",
                                                       "PIP_FIND_LINKS": "/wheels"})
    for unit in ("tunneler.service", "tunneler-host.service"):
        shown = system.show(unit, "Type", "ActiveState", "SubState", "NRestarts",
                            "WatchdogUSec", "User")
        assert shown == {"Type": "notify", "ActiveState": "active", "SubState": "running",
                         "NRestarts": "0", "WatchdogUSec": "30s", "User": "tunneler"}, unit
    # the dropped tokens were enrolled at start: identity files 0600, tokens gone
    listing = system.sh("stat -c '%a %U %n' /var/lib/tunneler/* /var/lib/tunneler-host/*")
    assert "600 tunneler /var/lib/tunneler/laptop.json" in listing
    assert "600 tunneler /var/lib/tunneler-host/llm-host.json" in listing
    assert ".jwt" not in listing
    # the user's host reaches the private endpoint by name: both units carry the flow
    body = system.sh(f"curl -sS --max-time 20 http://{LLM_NAME}:{LLM_PORT}/v1/models")
    assert "tunneler-demo" in body
    assert system.has_tun()
    for unit in ("tunneler.service", "tunneler-host.service"):
        assert "reception only permitted for main PID" not in system.journal(unit)


def test_the_cli_answers_root_and_the_tunneler_group_only(system: System) -> None:
    system.sh("useradd -m -U -G tunneler alice && useradd -m -U mallory")
    intercepts = system.sh("tunneler intercepts")
    assert LLM_NAME in intercepts and "*.models.test" in intercepts, intercepts
    member = system.sh("setpriv --reuid alice --regid alice --init-groups "
                       "tunneler status; echo rc=$?", check=False)
    assert "healthy" in member and "rc=0" in member, member
    stranger = system.sh("setpriv --reuid mallory --regid mallory --init-groups "
                         "tunneler status; echo rc=$?", check=False)
    assert "rc=0" not in stranger, stranger


def test_resolved_sends_exactly_the_intercepted_names_to_our_dns(system: System) -> None:
    link = system.link()
    print(f"resolvectl status {TUN}:\n{link}")
    assert f"Current DNS Server: {DNS_IP}" in link
    domains = re.search(r"DNS Domain: (.*)", link)
    assert domains is not None and set(domains.group(1).split()) == {
        f"~{LLM_NAME}", "~models.test"}, link
    assert re.search(r"Default Route: no|-DefaultRoute", link), link
    assert re.search(r"Current Scopes: DNS\s*$", link, re.M) and "-LLMNR -mDNS" in link, link
    for name in (LLM_NAME, "gpu1.models.test"):
        answer = system.resolve(name)
        assert re.search(rf"{re.escape(name)}: 100\.(6[4-9]|[7-9]\d|1[01]\d|12[0-7])\.", answer) \
            and f"link: {TUN}" in answer, answer
    # everything else still goes to the original server, which knows the edge's name only
    edge = system.resolve(EDGE_NAME)
    assert f"{EDGE_NAME}: {EDGE_APP_IP}" in edge and TUN not in edge, edge
    assert "NXDOMAIN" in system.resolve("elsewhere.example") or \
        "not found" in system.resolve("elsewhere.example")
    # glibc resolves through resolved's stub too (what an unmodified app uses)
    assert system.sh(f"getent hosts {LLM_NAME}").startswith("100.")


def _watchdog_stamp(system: System) -> int:
    prop = "WatchdogTimestampMonotonic"
    return int(system.show("tunneler.service", prop)[prop])


def test_the_watchdog_is_fed_and_a_wedged_daemon_is_restarted(system: System) -> None:
    system.sh("mkdir -p /etc/systemd/system/tunneler.service.d && cat > "
              f"/etc/systemd/system/tunneler.service.d/50-test.conf <<'EOF'\n{FAST_WATCHDOG}EOF\n"
              "systemctl daemon-reload && systemctl restart tunneler.service")
    first = system.wait_active("tunneler.service")
    before = int(first["NRestarts"])
    stamps = {_watchdog_stamp(system)}
    deadline = time.monotonic() + WAIT
    while len(stamps) < 3:  # fed: two more pings arrive while the same process runs on
        assert time.monotonic() < deadline, f"watchdog pings seen: {sorted(stamps)}"
        time.sleep(0.5)
        stamps.add(_watchdog_stamp(system))
    state = system.show("tunneler.service", "ActiveState", "NRestarts", "MainPID")
    assert state == {**state, "ActiveState": "active", "NRestarts": str(before),
                     "MainPID": first["MainPID"]}
    # a loop that stops (SIGSTOP) stops feeding it: systemd aborts it and starts a new one
    system.booted.run("systemctl", "kill", "--kill-whom=main", "-s", "SIGSTOP",
                      "tunneler.service")
    after = system.wait_active("tunneler.service", restarts=before + 1)
    assert after["MainPID"] != first["MainPID"]
    assert "Watchdog timeout" in system.journal("tunneler.service")


def test_a_killed_daemon_is_cleaned_up_by_exec_stop_post(system: System) -> None:
    state = system.wait_active("tunneler.service")
    system.booted.run("systemctl", "kill", "--kill-whom=main", "-s", "SIGKILL",
                      "tunneler.service")
    after = system.wait_active("tunneler.service", restarts=int(state["NRestarts"]) + 1)
    assert after["MainPID"] != state["MainPID"]
    journal = system.journal("tunneler.service")
    killed = journal.rindex("status=9/KILL")
    # ExecStopPost (`tunneler cleanup`) replayed the dead daemon's undo journal
    assert re.search(r'"failed": 0, "event": "journal.recovery_finished"', journal[killed:]), \
        journal[killed:]
    post = system.show("tunneler.service", "ExecStopPost")["ExecStopPost"]
    assert "status=0/0" in post, post
    assert f"Current DNS Server: {DNS_IP}" in system.link()


def test_dns_route_all_sends_every_name_to_us_and_we_forward_the_rest(system: System) -> None:
    system.sh("sed -i 's|^#TUNNELER_RUN_ARGS=--metrics.*|TUNNELER_RUN_ARGS=--dns-route-all|' "
              "/etc/tunneler/tunneler.env && grep -q '^TUNNELER_RUN_ARGS=--dns-route-all' "
              "/etc/tunneler/tunneler.env && systemctl restart tunneler.service")
    system.wait_active("tunneler.service")
    link = system.link()
    assert re.search(r"DNS Domain: ~\.\s*$", link, re.M) and re.search(
        r"Default Route: yes|\+DefaultRoute", link), link
    edge = system.resolve(EDGE_NAME)
    assert f"{EDGE_NAME}: {EDGE_APP_IP}" in edge and f"link: {TUN}" in edge, edge
    assert system.resolve(LLM_NAME).count("100.") >= 1
    system.sh("sed -i 's|^TUNNELER_RUN_ARGS=--dns-route-all$|#TUNNELER_RUN_ARGS=|' "
              "/etc/tunneler/tunneler.env && systemctl restart tunneler.service")
    system.wait_active("tunneler.service")


def test_stop_restores_the_host(system: System) -> None:
    system.booted.run("systemctl", "stop", "tunneler.service", "tunneler-host.service")
    assert not system.has_tun()
    assert "100.64." not in system.routes()
    assert "100.64.0.2" not in system.sh("resolvectl dns")
    edge = system.resolve(EDGE_NAME)
    assert f"{EDGE_NAME}: {EDGE_APP_IP}" in edge, edge
    assert "NXDOMAIN" in system.resolve(LLM_NAME) or "not found" in system.resolve(LLM_NAME)
    assert system.show("tunneler.service", "ActiveState")["ActiveState"] == "inactive"


def test_both_units_score_below_two_in_systemd_analyze_security(system: System) -> None:
    for unit in ("tunneler.service", "tunneler-host.service"):
        out = system.sh(f"systemd-analyze security --no-pager {unit}")
        score = re.search(rf"Overall exposure level for {re.escape(unit)}: ([\d.]+)", out)
        assert score is not None, out
        print(f"{unit}: exposure {score.group(1)}")
        assert float(score.group(1)) < 2.0, out
