"""Enrolling every *.jwt of an identity directory at start, against a real controller."""

from __future__ import annotations

import stat
from pathlib import Path

from structlog.testing import capture_logs

from tests.support.controller import cli, init_network, serve_process
from tunneler.identity import load_identity
from tunneler.ops.enroll_dir import enroll_pending


def test_tokens_become_identities(tmp_path: Path) -> None:
    root = init_network(tmp_path / "net")
    ids = tmp_path / "ids"
    ids.mkdir(mode=0o700)
    for name in ("alpha", "beta"):
        token = ids / f"{name}.jwt"
        assert cli(["network", "enroll-token", str(root), name, "-o", str(token)]) == 0
    (ids / "broken.jwt").write_text("not a token")
    (ids / "gamma.json").write_text("{}")
    (ids / "gamma.jwt").write_text("ignored: gamma is enrolled already")
    with serve_process(root), capture_logs() as logs:
        written = enroll_pending(ids)
    assert written == [ids / "alpha.json", ids / "beta.json"]
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len({load_identity(path).fingerprint for path in written}) == 2
    assert sorted(p.name for p in ids.iterdir()) == [
        "alpha.json", "beta.json", "broken.jwt", "gamma.json", "gamma.jwt"]
    events = [entry["event"] for entry in logs]
    assert events.count("enroll.completed") == 2
    assert "enroll.token_failed" in events and "enroll.token_ignored" in events
    assert "not a token" not in repr(logs)


def test_missing_directory_enrolls_nothing(tmp_path: Path) -> None:
    assert enroll_pending(tmp_path / "absent") == []
