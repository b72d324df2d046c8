"""Issue 5 end to end: the demo's private-LLM scenario (tunneler.demo.scenario), as root.

One scenario for the module: app (`tunneler run`), edge (`network serve`, no forwarding), llm
(llm-stub behind nftables that drops every inbound connection, `run-host`). Unmodified clients
in app (curl, dig, the official openai client) reach the LLM by name. Checked: the deny-inbound
proof, DNS and `tunneler intercepts`, a stream whose first token arrives well before its last,
20 concurrent completions, a client that hangs up mid-stream (the server sees it), and that
the teardown leaves nothing. The demo program itself runs twice in a row, exit 0 both times.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.wait import eventually
from tunneler.demo import netns
from tunneler.demo.scenario import (
    DNS_IP,
    LLM_IP,
    LLM_NAME,
    LLM_PORT,
    PYTHON,
    UPSTREAM_RESOLV,
    Scenario,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    built = Scenario(tmp_path_factory.mktemp("demo") / "scenario", token_delay=0.05)
    try:
        built.up()
        yield built
        assert built.stop("run") == 0
        assert built.app.etc_file("resolv.conf").read_text() == UPSTREAM_RESOLV
        assert "tunneler0" not in built.app.ip("-o", "link", "show")
        assert "tunneler0" not in built.app.ip("route", "show")
    finally:
        codes = built.close()
    assert codes.get("run-host") == 0 and codes.get("network") == 0, codes
    assert built.leftovers() == []


def curl(ns: netns.Netns, url: str) -> subprocess.CompletedProcess[str]:
    return ns.run(["curl", "-sS", "--max-time", "2", url], check=False)


def test_llm_namespace_refuses_direct_connections(scenario: Scenario) -> None:
    local = curl(scenario.llm, f"http://127.0.0.1:{LLM_PORT}/v1/models")
    assert local.returncode == 0 and "tunneler-demo" in local.stdout  # it does listen
    assert curl(scenario.edge, f"http://{LLM_IP}:{LLM_PORT}/v1/models").returncode == 28
    assert curl(scenario.app, f"http://{LLM_IP}:{LLM_PORT}/v1/models").returncode != 0
    through = curl(scenario.app, f"http://{LLM_NAME}:{LLM_PORT}/v1/models")
    assert through.returncode == 0 and "tunneler-demo" in through.stdout, through.stderr


def test_dns_and_intercepts(scenario: Scenario) -> None:
    vip = scenario.app.run(["dig", "+short", f"@{DNS_IP}", LLM_NAME]).stdout.strip()
    assert vip.startswith("100."), vip
    assert scenario.app.run(["dig", "+short", LLM_NAME]).stdout.strip() == vip  # resolv.conf
    rows = json.loads(scenario.app.run([PYTHON, "-m", "tunneler", "intercepts", "--json",
                                        "--control-socket", str(scenario.control_socket)]).stdout)
    assert LLM_NAME in json.dumps(rows)


def test_stream_tokens_arrive_incrementally(scenario: Scenario) -> None:
    result = json.loads(scenario.client("stream", "--max-tokens", "40"))
    times = result["times"]
    assert len(times) >= 15 and result["text"].startswith("You said:")
    assert times[-1] > 0.7  # 0.05 s between tokens at the server
    assert times[0] < times[-1] / 3  # the first token came long before the last


def test_twenty_concurrent_completions(scenario: Scenario) -> None:
    result = json.loads(scenario.client("concurrent", "20", "--max-tokens", "20"))
    assert result["errors"] == [] and result["ok"] == 20
    assert result["distinct_ok"] == 20  # each answer belongs to its own request
    assert result["elapsed"] < 8.0  # one stream takes ~1 s; one after another would take 20 s


def test_client_cancel_mid_stream_reaches_the_server(scenario: Scenario) -> None:
    before = scenario.stub_stats()
    assert before["streams_cancelled"] == 0
    assert json.loads(scenario.client("cancel", "5")) == {"received": 5}
    eventually(lambda: scenario.stub_stats()["streams_cancelled"] == 1, timeout=10,
               interval=0.1)
    after = scenario.stub_stats()
    assert after["streams_active"] == 0
    assert after["streams_completed"] == before["streams_completed"]


def test_demo_command_twice_in_a_row() -> None:
    for _ in range(2):
        demo = subprocess.Popen([PYTHON, "-m", "tunneler.demo"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        output, _ = demo.communicate(timeout=90)
        assert demo.returncode == 0, output[-4000:]
        assert "This reply comes from the tunneler demo model." in output
        assert "left behind: nothing" in output
        assert netns.ours(demo.pid) == []
        assert not list(Path(tempfile.gettempdir()).glob(f"{netns.WORKDIR_PREFIX}{demo.pid}-*"))
