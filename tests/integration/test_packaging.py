"""Install like a Python tool (issue 12): `python -m build` and `pipx install` of the wheel.

The `dist` fixture (tests/conftest.py) builds the sdist from a copy of the tree and the wheel
from that sdist, with the locked build backend. Here: both archives hold what they should and
nothing stray, the wheel's metadata matches pyproject.toml, and pipx, offline from the locked
wheelhouse, installs a `tunneler` that enrolls an identity against a real embedded network.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement

import tunneler
from tests.support.controller import free_port, serve_process
from tests.support.dist import ROOT, Dist, locked_env

PACKAGE = {str(p.relative_to(ROOT)) for p in (ROOT / "tunneler").rglob("*")
           if p.is_file() and "__pycache__" not in p.parts}
#: what installing as a service or an image needs beyond the package (README, operations.md)
SERVICE_FILES = {"README.md", "pyproject.toml", "requirements.lock", "Dockerfile",
                 "systemd/tunneler.service", "systemd/tunneler-host.service",
                 "systemd/tunneler.env", "dns/polkit/50-tunneler-resolve1.rules",
                 "dns/resolved.conf.d/tunneler.conf", "tun/modules-load.d/tunneler.conf",
                 "docker/entrypoint.sh", "docker/compose.yml", "policies/llm.yaml",
                 "docs/operations.md", "docs/security.md"}


def _stray(names: set[str]) -> list[str]:
    return sorted(n for n in names if "__pycache__" in n or n.endswith((".pyc", ".jwt"))
                  or n.startswith((".venv/", ".git/", "tests/")))


def test_the_sdist_holds_the_package_and_the_service_files_and_nothing_stray(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as archive:
        top = f"tunneler-{tunneler.__version__}/"
        names = {m.name.removeprefix(top) for m in archive.getmembers() if m.isfile()}
    assert names >= PACKAGE, sorted(PACKAGE - names)
    assert names >= SERVICE_FILES, sorted(SERVICE_FILES - names)
    assert _stray(names) == []


def test_the_wheel_holds_the_package_its_entry_point_and_the_declared_requirements(
        dist: Dist) -> None:
    info = f"tunneler-{tunneler.__version__}.dist-info/"
    with zipfile.ZipFile(dist.wheel) as archive:
        names = set(archive.namelist())
        metadata = Parser().parsestr(archive.read(info + "METADATA").decode())
        entry_points = archive.read(info + "entry_points.txt").decode()
    assert {n for n in names if not n.startswith(info)} == PACKAGE
    assert "tunneler = tunneler.cli:main" in entry_points
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {str(Requirement(r)) for r in project["dependencies"]}
    runtime = {str(Requirement(r)) for r in metadata.get_all("Requires-Dist") or []
               if "extra ==" not in r}
    assert runtime == declared
    assert metadata["Requires-Python"] == project["requires-python"]


def test_pipx_installs_a_working_tunneler_from_the_wheel_offline(dist: Dist,
                                                                 tmp_path: Path) -> None:
    home = tmp_path / "pipx"
    env = {**locked_env(), "PIPX_HOME": str(home / "home"), "PIPX_BIN_DIR": str(home / "bin"),
           "PIPX_MAN_DIR": str(home / "man"), "PIP_NO_INDEX": "1"}
    done = subprocess.run([sys.executable, "-m", "pipx", "install", "--pip-args",
                           f"--no-index --find-links {dist.wheelhouse}", str(dist.wheel)],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    exe = home / "bin" / "tunneler"
    assert exe.resolve().is_relative_to(home / "home" / "venvs" / "tunneler")

    def pipx_tunneler(*args: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL"))}
        return subprocess.run([str(exe), *args], capture_output=True, text=True, env=clean,
                              cwd=tmp_path, timeout=120, check=False)

    assert pipx_tunneler("--version").stdout.strip() == f"tunneler {tunneler.__version__}"
    net = tmp_path / "net"
    made = pipx_tunneler("network", "init", str(net), "--hostname", "localhost",
                         "--controller-port", str(free_port()), "--router-port", str(free_port()))
    assert made.returncode == 0, made.stderr
    applied = pipx_tunneler("network", "apply", str(net), str(ROOT / "policies" / "llm.yaml"))
    assert applied.returncode == 0, applied.stderr
    token = tmp_path / "laptop.jwt"
    issued = pipx_tunneler("network", "enroll-token", str(net), "laptop", "-o", str(token))
    assert issued.returncode == 0, issued.stderr
    with serve_process(net):
        identity = tmp_path / "laptop.json"
        enrolled = pipx_tunneler("enroll", "--jwt", str(token), "--identity", str(identity))
        assert enrolled.returncode == 0, enrolled.stderr
    assert stat.S_IMODE(identity.stat().st_mode) == 0o600
    assert b"BEGIN CERTIFICATE" in identity.read_bytes()
