"""Container files: least privilege in the recipes (security.md SEC-30), the entrypoint itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


def load(name: str) -> Any:
    return yaml.safe_load((ROOT / "docker" / name).read_text())


def test_compose_sidecar_is_least_privilege() -> None:
    services = load("compose.yml")["services"]
    tunneler, app = services["tunneler"], services["app"]
    assert tunneler["cap_drop"] == ["ALL"] and tunneler["cap_add"] == ["NET_ADMIN"]
    assert tunneler["devices"] == ["/dev/net/tun:/dev/net/tun"]
    assert "no-new-privileges:true" in tunneler["security_opt"]
    assert tunneler["read_only"] is True
    assert "privileged" not in tunneler and "network_mode" not in tunneler
    assert "TUNNELER_ENROLL_TOKEN" not in tunneler["environment"]     # a file, not a value
    assert app["network_mode"] == "service:tunneler"
    assert "cap_add" not in app and "privileged" not in app


def test_kubernetes_sidecar_is_least_privilege() -> None:
    spec = load("kubernetes.yaml")["spec"]
    assert "hostNetwork" not in spec
    tunneler, app = spec["containers"]
    context = tunneler["securityContext"]
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert context["allowPrivilegeEscalation"] is False and "privileged" not in context
    assert context["readOnlyRootFilesystem"] is True
    assert app["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["dnsConfig"]["nameservers"] == ["100.64.0.2"]


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE=python:3.11-slim\n" in text and "\nFROM ${BASE}\n" in text
    assert "\nUSER tunneler\n" in text
    assert 'CMD ["tunneler", "status", "--control-socket", "/run/tunneler/tunneler.sock"]' in text
    assert 'ENTRYPOINT ["/usr/local/bin/tunneler-entrypoint"]' in text
    assert "privileged" not in text.lower().replace("--privileged or host network", "")


def run_entrypoint(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {"PATH": os.environ["PATH"], "TUNNELER_IDENTITY_DIR": str(tmp_path / "ids"),
               "TUNNELER_RUNTIME_DIR": str(tmp_path / "run"),
               "TUNNELER_BIN": str(Path(sys.executable).with_name("tunneler")), **env}
    return subprocess.run(["sh", str(ENTRYPOINT), *args], capture_output=True, text=True,
                          env=environ, timeout=60, check=False)


def test_entrypoint_runs_a_command(tmp_path: Path) -> None:
    result = run_entrypoint(tmp_path, str(Path(sys.executable).with_name("tunneler")), "version")
    assert result.returncode == 0 and result.stdout.startswith("tunneler ")
    assert not (tmp_path / "ids").exists()               # nothing prepared for a plain command


def test_entrypoint_rejects_unknown_mode(tmp_path: Path) -> None:
    result = run_entrypoint(tmp_path, TUNNELER_MODE="proxy")
    assert result.returncode == 1
    assert "TUNNELER_MODE must be run or run-host, not 'proxy'" in result.stderr


def test_entrypoint_writes_token_file_and_keeps_it_when_enrollment_fails(tmp_path: Path) -> None:
    result = run_entrypoint(tmp_path, TUNNELER_MODE="run-host", TUNNELER_IDENTITY_NAME="app",
                            TUNNELER_ENROLL_TOKEN="not-a-jwt")
    assert result.returncode == 1                        # enrollment failed, so no identity
    assert "enroll.token_failed" in result.stderr and "not-a-jwt" not in result.stderr
    assert "no identity" in result.stderr
    token = tmp_path / "ids" / "app.jwt"
    assert token.read_text() == "not-a-jwt\n"
    assert token.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ids").stat().st_mode & 0o777 == 0o700


def test_entrypoint_ignores_token_when_identity_exists(tmp_path: Path) -> None:
    (tmp_path / "ids").mkdir()
    (tmp_path / "ids" / "sidecar.json").write_text("{}")
    result = run_entrypoint(tmp_path, TUNNELER_MODE="run-host", TUNNELER_ENROLL_TOKEN="x")
    assert not (tmp_path / "ids" / "sidecar.jwt").exists()
    assert result.returncode == 1                        # the fake identity does not load


def test_entrypoint_refuses_intercept_mode_without_root() -> None:
    as_nobody: dict[str, Any] = {"user": 65534, "group": 65534, "extra_groups": []} \
        if os.geteuid() == 0 else {}
    # the script comes on stdin: nobody may not be able to read the checkout's folders
    result = subprocess.run(["sh", "-s"], input=ENTRYPOINT.read_text(), capture_output=True,
                            text=True, cwd="/", env={"PATH": "/usr/bin:/bin"}, timeout=60,
                            check=False, **as_nobody)
    assert result.returncode == 1, result.stderr
    assert "intercept mode needs NET_ADMIN" in result.stderr
