"""`tunneler network init|apply|enroll-token|serve` run as real subprocesses in a temporary dir."""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.support.controller import TUNNELER, free_port, serve_process
from tests.support.pki import client_context
from tunneler import jwt
from tunneler.controller import pki

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TUNNELER, *args], capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.fixture(scope="module", name="net")
def _net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "net"
    result = run("network", "init", str(root), "--hostname", "localhost", "--controller-port",
                 str(free_port()), "--router-port", str(free_port()), "--router-name", "edge1")
    assert result.returncode == 0, result.stderr
    return root


def test_init_layout_and_modes(net: Path) -> None:
    assert stat.S_IMODE(net.stat().st_mode) == 0o700
    config = json.loads((net / "network.json").read_text())
    assert config["hostname"] == "localhost" and config["router_name"] == "edge1"
    for key in ("ca.key", "ctrl.key", "router.key"):
        assert stat.S_IMODE((net / "pki" / key).stat().st_mode) == 0o600
    assert stat.S_IMODE((net / "state.db").stat().st_mode) == 0o600
    ctrl = pki.load_cert(net / "pki" / "ctrl.pem")
    sans = ctrl.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "127.0.0.1"} <= set(sans.get_values_for_type(x509.DNSName))
    again = run("network", "init", str(net))
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr


def test_apply_valid_then_invalid(net: Path, tmp_path: Path) -> None:
    first = run("network", "apply", str(net), str(ROOT / "policies" / "llm.yaml"))
    assert first.returncode == 0, first.stderr
    second = run("network", "apply", str(net), str(ROOT / "policies" / "llm.yaml"))
    assert "service llm: unchanged" in second.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("services:\n  - name: x\n    configs:\n      intercept.v1:\n"
                   "        {protocols: [tcp], addresses: [a.test],"
                   " portRanges: [{low: -1, high: 1}]}\n")
    result = run("network", "apply", str(net), str(bad))
    assert result.returncode == 1
    assert "services[0].configs.intercept.v1.portRanges[0].low: must be an integer 0..65535" in \
        result.stderr


def test_enroll_token_file_and_stdout(net: Path, tmp_path: Path) -> None:
    out = tmp_path / "new.jwt"
    result = run("network", "enroll-token", str(net), "brand-new", "-o", str(out),
                 "--expires-in", "600")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = pki.load_cert(net / "pki" / "ctrl.pem").public_key()
    claims = jwt.verify(out.read_text(), key, now=time.time())  # type: ignore[arg-type]
    assert claims["em"] == "ott" and claims["aud"] == ""
    assert time.time() + 500 < claims["exp"] <= time.time() + 601
    printed = run("network", "enroll-token", str(net), "brand-new")
    assert jwt.verify(printed.stdout, key, now=time.time())["sub"] == claims["sub"]  # type: ignore[arg-type]
    bad = run("network", "enroll-token", str(net), "x", "--expires-in", "1")
    assert bad.returncode == 1 and "--expires-in" in bad.stderr
    missing = run("network", "enroll-token", str(tmp_path / "nothing"), "x")
    assert missing.returncode == 1 and "not a network directory" in missing.stderr


@pytest.fixture(name="served")
def _served(net: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    with serve_process(net) as served:
        yield served


def test_serve_answers_and_stops_on_sigterm(net: Path, served: tuple[subprocess.Popen[str],
                                                                     dict[str, Any]]) -> None:
    process, config = served
    context = client_context(net / "pki" / "ca.pem")
    url = f"https://localhost:{config['controller_port']}/version"
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        assert json.loads(response.read())["data"]["apiVersions"]["edge"]["v1"]["path"]
        assert response.headers["ziti-instance-id"] == config["instance_id"]
    with socket.create_connection(("127.0.0.1", config["router_port"]), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        assert tls.getpeercert() is not None
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    assert "network.stopped" in process.communicate()[1]


def test_serve_reports_a_busy_port(net: Path) -> None:
    config = json.loads((net / "network.json").read_text())
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", config["controller_port"]))
        blocker.listen()
        result = subprocess.run([*TUNNELER, "network", "serve", str(net), "--listen",
                                 "127.0.0.1"], capture_output=True, text=True, timeout=30,
                                check=False)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{config['controller_port']}" in result.stderr


@pytest.mark.parametrize("name", ["", "   ", "two\nlines", "x" * 5000])
def test_enroll_token_refuses_bad_identity_names(net: Path, name: str) -> None:
    result = run("network", "enroll-token", str(net), name)
    assert result.returncode == 1
    assert "identity name: must be 1..255 characters, not blank, without control characters" \
        in result.stderr
    assert not result.stdout


def test_apply_refuses_an_alias_bomb(net: Path, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("services:\n  - name: bomb\n    configs:\n      host.v2:\n" + "".join(
        f"        l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else 'x'] * 9)}]\n"
        for i in range(9)))
    result = run("network", "apply", str(net), str(bomb))
    assert result.returncode == 1
    assert "more than 100000 YAML nodes once aliases are expanded" in result.stderr


def test_add_router_issues_a_certificate_and_refuses_clashes_with_clear_errors(
        net: Path) -> None:
    port = free_port()
    added = run("network", "add-router", str(net), "edge9", "--port", str(port))
    assert added.returncode == 0, added.stderr
    assert f"router edge9 tls://localhost:{port} added" in added.stdout
    cert = pki.load_cert(net / "pki" / "router-edge9.pem")
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert stat.S_IMODE((net / "pki" / "router-edge9.key").stat().st_mode) == 0o600
    config = json.loads((net / "network.json").read_text())
    for argv, message in [
        (["edge9", "--port", str(free_port())], "router 'edge9' already exists"),
        (["edge10", "--port", str(port), "--hostname", "elsewhere.test"],
         f"port {port} is already used by router edge9"),
        (["edge11", "--port", str(config["controller_port"])], "used by the controller"),
        (["../evil", "--port", str(free_port())], "use 1..63 letters, digits"),
        (["edge12", "--port", "70000"], "must be a port number 1..65535"),
    ]:
        refused = run("network", "add-router", str(net), *argv)
        assert refused.returncode == 1 and message in refused.stderr, refused.stderr
    unknown = run("network", "serve-router", str(net), "nope")
    assert unknown.returncode == 1 and "no router named 'nope'" in unknown.stderr
    assert "edge9" in unknown.stderr
