"""Write-ahead journal of host mutations, so a crash never leaves the host changed for good.

Before each change to the host (TUN link, route, resolver setting) the daemon records the
`Step` that undoes it; the file is rewritten atomically (temp file, fsync, rename) and is
0600 in a 0700 runtime directory (default ``/run/tunneler/journal.json``). On start, and in
``tunneler cleanup``, a journal whose owner process is dead is undone in reverse order
(`tunneler.hostconfig.cleanup`); a clean shutdown undoes its own steps and removes the file.

The owner is identified by PID *and* the process start time from ``/proc/PID/stat``, so a
recycled PID is not mistaken for a live owner. File format::

    {"version": 1, "pid": 1234, "pid_start": "5678", "steps": [{"op": "...", "args": {...}}]}
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunneler.errors import JournalError
from tunneler.fsutil import write_atomic

VERSION = 1
DEFAULT_RUNTIME_DIR = Path("/run/tunneler")
JOURNAL_NAME = "journal.json"
MAX_JOURNAL_BYTES = 16 << 20  # 65536 routes fit with room to spare
OPS = frozenset({"delete_link", "delete_route", "delete_nft_table", "restore_resolv_conf",
                 "revert_resolved_link"})


@dataclass(frozen=True)
class Step:
    """One undo action: ``op`` names it, ``args`` are its string arguments."""

    op: str
    args: dict[str, str] = field(default_factory=dict)

    @classmethod
    def delete_link(cls, name: str) -> Step:
        return cls("delete_link", {"name": name})

    @classmethod
    def delete_route(cls, dst: str, name: str) -> Step:
        return cls("delete_route", {"dst": dst, "name": name})

    @classmethod
    def delete_nft_table(cls, table: str) -> Step:
        return cls("delete_nft_table", {"table": table})

    @classmethod
    def restore_resolv_conf(cls, path: Path) -> Step:
        return cls("restore_resolv_conf", {"path": str(path)})

    @classmethod
    def revert_resolved_link(cls, link: str) -> Step:
        return cls("revert_resolved_link", {"link": link})


@dataclass
class JournalState:
    """The decoded contents of a journal file."""

    pid: int
    pid_start: str | None
    steps: list[Step]


def journal_path(runtime_dir: Path) -> Path:
    return runtime_dir / JOURNAL_NAME


def process_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (/proc/PID/stat field 22); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def owner_alive(state: JournalState) -> bool:
    """True when the process that wrote the journal is still running."""
    start = process_start(state.pid)
    return start is not None and (state.pid_start is None or start == state.pid_start)


def _decode_step(raw: Any) -> Step:
    if not isinstance(raw, dict) or raw.get("op") not in OPS or not isinstance(raw.get("args"),
                                                                                 dict):
        raise ValueError(f"bad step {raw!r}")
    args = raw["args"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in args.items()):
        raise ValueError(f"bad step arguments {args!r}")
    return Step(raw["op"], dict(args))


def decode(data: bytes) -> JournalState:
    """Parse journal bytes; ValueError says what is wrong."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ValueError("not a version 1 tunneler journal")
    pid, start, steps = doc.get("pid"), doc.get("pid_start"), doc.get("steps")
    if not isinstance(pid, int) or pid <= 0 or not isinstance(steps, list):
        raise ValueError("missing pid or steps")
    if start is not None and not isinstance(start, str):
        raise ValueError("bad pid_start")
    return JournalState(pid, start, [_decode_step(step) for step in steps])


def encode(state: JournalState) -> bytes:
    steps = [{"op": step.op, "args": step.args} for step in state.steps]
    doc = {"version": VERSION, "pid": state.pid, "pid_start": state.pid_start, "steps": steps}
    return json.dumps(doc, indent=1).encode() + b"\n"


def load(path: Path) -> JournalState | None:
    """The journal at ``path``; None when there is none. JournalError when unreadable."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_JOURNAL_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise JournalError(f"cannot read journal {path}: {exc.strerror}") from exc
    if len(data) > MAX_JOURNAL_BYTES:
        raise JournalError(f"journal {path} exceeds {MAX_JOURNAL_BYTES} bytes")
    try:
        return decode(data)
    except ValueError as exc:
        raise JournalError(f"journal {path} is corrupt ({exc}); undo by hand "
                           "(`ip link del`, restore resolv.conf), then delete it") from exc


class Journal:
    """The journal of the running process. Use `create`, then `record` before each change."""

    def __init__(self, path: Path, state: JournalState) -> None:
        self.path = path
        self.state = state

    @classmethod
    def create(cls, path: Path) -> Journal:
        """Start an empty journal owned by this process.

        Raises JournalError when a journal already exists: a live owner means another
        tunneler is running; a dead one must be recovered first (`tunneler.hostconfig.cleanup`).
        """
        existing = load(path)
        if existing is not None:
            who = "a running tunneler" if owner_alive(existing) else "a tunneler that died"
            raise JournalError(f"journal {path} belongs to {who} (pid {existing.pid}); "
                               "run `tunneler cleanup` if that process is gone")
        journal = cls(path, JournalState(os.getpid(), process_start(os.getpid()), []))
        journal.flush()
        return journal

    def record(self, *steps: Step) -> None:
        """Append undo steps and persist them before the caller changes the host."""
        self.state.steps.extend(steps)
        self.flush()

    def flush(self) -> None:
        try:
            write_atomic(self.path, encode(self.state))
        except OSError as exc:
            raise JournalError(f"cannot write journal {self.path}: {exc.strerror}") from exc

    def remove(self) -> None:
        """Forget the journal: everything it recorded has been undone."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
