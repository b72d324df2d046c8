"""The image, built and run by a real container engine (issue 12): podman with runc.

The base is a Debian root made with debootstrap (no registry is reachable); the Dockerfile takes
it as `BASE`. On the demo topology (tunneler.demo.scenario: app ── edge ── llm, nftables
dropping everything inbound in llm), with `network serve` in edge and the LLM stub in llm:

- the host-mode image runs in llm as the image's non-root user with no capability at all,
  enrolls from a token file and binds the service;
- the intercept image runs in app as the sidecar of docker/compose.yml: `--cap-drop all
  --cap-add NET_ADMIN --device /dev/net/tun`, read-only root, no-new-privileges, user 0,
  enrolling from a token file; its HEALTHCHECK reports healthy;
- podman mounts resolv.conf read-only under --read-only, so the sidecar gets `--dns
  100.64.0.2` and `--no-dns-config --dns-upstream` (docs/operations.md);
- an unmodified app container sharing its network namespace (`--network container:`) gets a
  streamed chat completion by name with curl and with the openai client;
- `podman stop` leaves no TUN device and no route behind in the namespace.
Every container and image made is removed afterwards, pass or fail.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.realhost import ROOT, Podman, missing_tools
from tunneler.demo.clients import MODEL, OPENAI_SNIPPET
from tunneler.demo.scenario import EDGE_APP_IP, EDGE_LLM_IP, EDGE_NAME, LLM_URL, Scenario

pytestmark = pytest.mark.skipif(missing_tools("podman", "runc", "debootstrap") is not None,
                                reason=str(missing_tools("podman", "runc", "debootstrap")))

START_TIMEOUT = 120.0
#: the image's user owns its runtime directory (control socket, HEALTHCHECK) on a tmpfs
#: podman mounts /etc/resolv.conf read-only in a --read-only container (docker does not), so
#: the sidecar's resolv.conf names our DNS from the start, as in the Kubernetes recipe
DNS_IP = "100.64.0.2"
HOST_RUNTIME = "/run/tunneler:mode=0750,U"
CHAT = json.dumps({"model": MODEL, "stream": True, "max_tokens": 8,
                   "messages": [{"role": "user", "content": "hello from a container"}]})


@pytest.fixture(scope="module", name="podman")
def _podman(debian_base: Path) -> Iterator[Podman]:
    engine = Podman(f"tt-{os.getpid()}")
    try:
        base = engine.import_root(debian_base, f"localhost/{engine.prefix}-base:test")
        engine.build(f"localhost/{engine.prefix}-tunneler:test", ROOT,
                     "--build-arg", f"BASE={base}")
        engine.build(f"localhost/{engine.prefix}-app:test", ROOT / "tests" / "privileged",
                     "--build-arg", f"BASE={base}",
                     file=ROOT / "tests" / "privileged" / "containers" / "app.Dockerfile")
        yield engine
    finally:
        engine.close()


def _image(engine: Podman, what: str) -> str:
    return f"localhost/{engine.prefix}-{what}:test"


def _logs(engine: Podman, container: str) -> str:
    """The container's output, both streams, from one `podman logs`."""
    done = engine("logs", container, check=False)
    return done.stdout + done.stderr


def _wait_logged(engine: Podman, container: str, text: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while text not in (logs := _logs(engine, container)):
        state = engine("inspect", "-f", "{{.State.Status}}", container, check=False).stdout
        assert state.strip() in ("running", "created", "configured"), \
            f"{container} is {state.strip()}:\n{logs[-3000:]}"
        assert time.monotonic() < deadline, f"{container} never logged {text!r}:\n{logs[-3000:]}"
        time.sleep(0.5)


def _wait_healthy(engine: Podman, container: str) -> None:
    """The image's HEALTHCHECK (run by podman) passes before the deadline: its start period
    covers the first router link."""
    deadline = time.monotonic() + START_TIMEOUT
    while engine("healthcheck", "run", container, check=False).returncode != 0:
        if time.monotonic() > deadline:
            status = engine("exec", container, "tunneler", "status", "--control-socket",
                            "/run/tunneler/tunneler.sock", check=False)
            raise AssertionError(f"{container} never healthy:\n{status.stdout}{status.stderr}")
        time.sleep(1.0)


def _secret(path: Path) -> Path:
    """A copy of a token file the container user can read (the test dir is 0700)."""
    copy = path.with_suffix(".secret")
    copy.write_text(path.read_text())
    copy.chmod(0o644)
    return copy


def test_sidecar_images_serve_an_unmodified_app_by_name(podman: Podman, tmp_path: Path) -> None:
    scenario = Scenario(tmp_path / "work")
    try:
        scenario.build_topology()
        scenario.start_network()
        scenario.start_llm()
        work = scenario.dir
        for folder in ("host-id", "app-id"):
            (work / folder).mkdir(mode=0o777)
            (work / folder).chmod(0o777)  # the image's users write their identity here
        work.chmod(0o755)

        # host mode: non-root, no capability, in the private namespace
        host = podman.run(
            "host", "--network", f"ns:/run/netns/{scenario.llm.name}",
            "--add-host", f"{EDGE_NAME}:{EDGE_LLM_IP}", "--cap-drop", "all", "--read-only",
            "--security-opt", "no-new-privileges", "--tmpfs", HOST_RUNTIME, "--tmpfs", "/tmp",
            "-v", f"{work / 'host-id'}:/var/lib/tunneler",
            "-v", f"{_secret(work / 'llm-host.jwt')}:/run/secrets/enroll_token:ro",
            "-e", "TUNNELER_MODE=run-host", "-e", "TUNNELER_IDENTITY_NAME=llm-host",
            "-e", "TUNNELER_ENROLL_TOKEN_FILE=/run/secrets/enroll_token",
            _image(podman, "tunneler"))
        _wait_logged(podman, host, "host.service_bound")
        status = podman("exec", host, "sh", "-c", "id -u; grep CapEff /proc/self/status")
        uid, caps = status.stdout.split("\n", 1)
        assert uid.strip() != "0" and caps.split()[-1] == "0000000000000000"

        # intercept mode: the compose.yml sidecar, in the app namespace
        sidecar = podman.run(
            "sidecar", "--network", f"ns:/run/netns/{scenario.app.name}",
            "--dns", DNS_IP, "--add-host", f"{EDGE_NAME}:{EDGE_APP_IP}",
            "--user", "0:0", "--cap-drop", "all", "--cap-add", "NET_ADMIN",
            "--device", "/dev/net/tun", "--read-only", "--security-opt", "no-new-privileges",
            "--tmpfs", "/run/tunneler:mode=0750", "--tmpfs", "/tmp",
            "-v", f"{work / 'app-id'}:/var/lib/tunneler",
            "-v", f"{_secret(work / 'laptop.jwt')}:/run/secrets/enroll_token:ro",
            "-e", "TUNNELER_ENROLL_TOKEN_FILE=/run/secrets/enroll_token",
            "-e", "TUNNELER_IDENTITY_NAME=app-sidecar", _image(podman, "tunneler"),
            "--no-dns-config", "--dns-upstream", EDGE_APP_IP)
        _wait_logged(podman, sidecar, "daemon.ready")
        assert (work / "app-id" / "app-sidecar.json").stat().st_mode & 0o777 == 0o600
        caps = podman("exec", sidecar, "grep", "CapEff", "/proc/1/status").stdout.split()[-1]
        assert caps == "0000000000001000"  # CAP_NET_ADMIN only
        _wait_healthy(podman, sidecar)

        # an unmodified app in the same network namespace, by name
        app = ("--network", f"container:{sidecar}", _image(podman, "app"))
        curl = podman.run_once(*app, "curl", "-sSN", "--max-time", "60",
                               f"{LLM_URL}/chat/completions", "-H",
                               "Content-Type: application/json", "-d", CHAT)
        assert curl.returncode == 0, curl.stderr
        events = [line for line in curl.stdout.splitlines() if line.startswith("data: ")]
        assert len(events) >= 3 and events[-1] == "data: [DONE]", curl.stdout[-500:]
        client = podman.run_once(*app, "/opt/app/bin/python", "-c", OPENAI_SNIPPET)
        assert client.returncode == 0 and client.stdout.strip(), client.stderr[-2000:]

        podman("stop", "-t", "20", sidecar)
        links = scenario.app.ip("-o", "link", "show")
        routes = scenario.app.ip("route", "show", "table", "all")
        assert "tunneler0" not in links, links
        assert "100.64." not in routes, routes
    finally:
        podman.remove_containers()  # first: they hold the namespaces' mounts
        scenario.close()
