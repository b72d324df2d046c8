"""Unit tests for the write-ahead journal and its replay (file steps only; no root needed)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tunneler.dns.system import install_resolv_conf
from tunneler.errors import JournalError
from tunneler.hostconfig.cleanup import recover, rollback, start_journal, undo
from tunneler.journal import (
    Journal,
    JournalState,
    Step,
    decode,
    encode,
    load,
    owner_alive,
    process_start,
)


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def write_stale(path: Path, steps: list[Step]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(JournalState(dead_pid(), "1", steps)))


def test_create_record_load_round_trip_with_private_modes(tmp_path: Path) -> None:
    path = tmp_path / "run" / "journal.json"
    journal = Journal.create(path)
    journal.record(Step.delete_link("tunneler0"))
    journal.record(Step.delete_route("198.51.100.7/32", "tunneler0"),
                   Step.revert_resolved_link("tunneler0"))
    state = load(path)
    assert state is not None
    assert state.pid == os.getpid() and owner_alive(state)
    assert [s.op for s in state.steps] == ["delete_link", "delete_route", "revert_resolved_link"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["journal.json"]  # no temp files left


def test_create_refuses_an_existing_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    Journal.create(path)
    with pytest.raises(JournalError, match="running tunneler"):
        Journal.create(path)
    write_stale(path, [])
    with pytest.raises(JournalError, match="died"):
        Journal.create(path)


def test_recycled_pid_is_not_a_live_owner() -> None:
    assert owner_alive(JournalState(os.getpid(), process_start(os.getpid()), []))
    assert not owner_alive(JournalState(os.getpid(), "0", []))
    assert not owner_alive(JournalState(dead_pid(), None, []))


@pytest.mark.parametrize("data", [
    b"", b"[]", b'{"version": 2}', b'{"version": 1, "pid": "1", "steps": []}',
    b'{"version": 1, "pid": 1, "steps": [{"op": "rm -rf", "args": {}}]}',
    b'{"version": 1, "pid": 1, "steps": [{"op": "delete_link", "args": {"name": 1}}]}',
])
def test_decode_rejects_bad_documents(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode(data)


def test_corrupt_journal_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    path.write_text("{not json")
    with pytest.raises(JournalError, match="corrupt"):
        load(path)
    with pytest.raises(JournalError, match="corrupt"):
        recover(path)


def test_recover_undoes_a_dead_owners_steps_and_removes_the_journal(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_bytes(b"nameserver 10.0.0.2\n")
    install_resolv_conf(resolv, "100.64.0.2")
    path = tmp_path / "journal.json"
    write_stale(path, [Step.delete_link("tt-no-such-link"), Step.restore_resolv_conf(resolv)])
    assert recover(path) is True
    assert resolv.read_bytes() == b"nameserver 10.0.0.2\n"
    assert not path.exists()
    assert recover(path) is False


def test_recover_refuses_a_live_owner(tmp_path: Path) -> None:
    journal = Journal.create(tmp_path / "journal.json")
    with pytest.raises(JournalError, match="running process"):
        recover(journal.path)
    assert journal.path.exists()


def test_undo_runs_in_reverse_and_survives_failures(tmp_path: Path) -> None:
    first, second = tmp_path / "a.conf", tmp_path / "b.conf"
    for path in (first, second):
        path.write_bytes(b"search x\n")
        install_resolv_conf(path, "100.64.0.2")
    unreadable = tmp_path / "dir.conf"
    unreadable.mkdir()  # reading a directory fails: logged, the others still run
    steps = [Step.restore_resolv_conf(first), Step.restore_resolv_conf(unreadable),
             Step.restore_resolv_conf(second)]
    assert undo(steps) == 1
    assert first.read_bytes() == second.read_bytes() == b"search x\n"


def test_rollback_of_own_journal(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_bytes(b"nameserver 10.0.0.2\n")
    journal = Journal.create(tmp_path / "journal.json")
    journal.record(Step.restore_resolv_conf(resolv))
    install_resolv_conf(resolv, "100.64.0.2")
    assert rollback(journal) == 0
    assert resolv.read_bytes() == b"nameserver 10.0.0.2\n"
    assert not journal.path.exists()


def test_journal_file_is_readable_json(tmp_path: Path) -> None:
    journal = Journal.create(tmp_path / "journal.json")
    journal.record(Step.delete_link("tunneler0"))
    doc = json.loads(journal.path.read_text())
    assert doc["steps"] == [{"op": "delete_link", "args": {"name": "tunneler0"}}]


def test_start_journal_recovers_a_dead_predecessor_first(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_bytes(b"nameserver 10.0.0.2\n")
    install_resolv_conf(resolv, "100.64.0.2")
    write_stale(tmp_path / "journal.json", [Step.restore_resolv_conf(resolv)])
    journal = start_journal(tmp_path)
    assert resolv.read_bytes() == b"nameserver 10.0.0.2\n"
    state = load(journal.path)
    assert state is not None and state.pid == os.getpid() and state.steps == []
