"""Suite-wide set-up: `tests.support` importable (tests/ has no __init__.py), and the one
build of the project (sdist, wheel, offline wheelhouse) that the packaging test and the
booted-systemd test install from."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.support import dist as _dist  # noqa: E402


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_dist.Dist]:
    """`python -m build` of the source tree plus the locked runtime wheels; removed at the end."""
    work = tmp_path_factory.mktemp("dist")
    try:
        yield _dist.build(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
