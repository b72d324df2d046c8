"""tunneler as users install it: `python -m build` output and an offline wheelhouse.

`build(work)` copies the source tree (without caches, virtual environments or VCS data) and
runs `python -m build` on the copy, which makes the sdist and then the wheel *from that
sdist*, so a file missing from the sdist breaks the wheel. The build backend and every
dependency come at the versions of requirements.lock (PIP_CONSTRAINT). The wheelhouse holds
the wheel, the binary wheels of every runtime dependency and pip, so `pip install --no-index
--find-links WHEELHOUSE` (a venv, pipx, a booted test system) needs no index.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
BUILD_TIMEOUT = 600
SKIPPED = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist",
                                 "tmp", ".*_cache", ".hypothesis", "*.py[cod]")


@dataclass(frozen=True)
class Dist:
    sdist: Path
    wheel: Path
    wheelhouse: Path
    """The wheel, its runtime dependencies and pip, at the locked versions."""


def locked_env() -> dict[str, str]:
    """The environment for pip and build: every package at its requirements.lock version."""
    return {**os.environ, "PIP_CONSTRAINT": str(LOCK), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, env=locked_env(),
                          timeout=BUILD_TIMEOUT, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:4])}... failed ({done.returncode}):\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def build(work: Path) -> Dist:
    """sdist, wheel and wheelhouse under `work` (see the module docstring)."""
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=SKIPPED, symlinks=True)
    out = work / "dist"
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(source)])
    (sdist,), (wheel,) = sorted(out.glob("tunneler-*.tar.gz")), sorted(out.glob("tunneler-*.whl"))
    house = work / "wheelhouse"
    _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:",
          "-d", str(house), str(wheel), "pip"])
    return Dist(sdist=sdist, wheel=wheel, wheelhouse=house)
