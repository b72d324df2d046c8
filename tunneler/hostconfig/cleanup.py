"""Undo what a journal recorded, and ``tunneler cleanup``.

``undo(steps)`` runs undo steps in reverse order, best effort: a failing step is logged and
the rest still run. ``recover(path)`` undoes and removes a journal whose owner is dead;
``start_journal(runtime_dir)`` does that and opens the daemon's own journal.
``rollback(journal)`` is the clean-shutdown twin for the running process. ``cmd_cleanup``
(``ExecStopPost=tunneler cleanup``) recovers the journal, then removes leftovers a journal
may not know about: the named TUN link and our resolv.conf header.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from tunneler.dns import system
from tunneler.errors import JournalError, TunnelerError
from tunneler.journal import DEFAULT_RUNTIME_DIR, Journal, Step, journal_path, owner_alive
from tunneler.journal import load as load_journal
from tunneler.log import get_logger
from tunneler.tun import redirect, routes
from tunneler.tun.route_plan import DEFAULT_TUN_NAME

log = get_logger("tun")

_UNDO: dict[str, Callable[[dict[str, str]], bool]] = {
    "delete_link": lambda a: routes.delete_link(a["name"]),
    "delete_route": lambda a: routes.delete_route(a["dst"], a["name"]),
    "delete_nft_table": lambda a: redirect.Nft().delete(a["table"]),
    "restore_resolv_conf": lambda a: system.restore_resolv_conf(Path(a["path"])),
    "revert_resolved_link": lambda a: system.revert_resolved_link(a["link"]),
}


def undo(steps: Sequence[Step]) -> int:
    """Undo ``steps`` last-first; returns how many failed (each failure is logged)."""
    failed = 0
    for step in reversed(steps):
        try:
            done = _UNDO[step.op](step.args)
        except (TunnelerError, OSError, KeyError, ValueError) as exc:
            failed += 1
            log.error("journal.step_failed", op=step.op, args=step.args, error=str(exc))
            continue
        log.info("journal.step_undone", op=step.op, args=step.args, changed=done)
    return failed


def recover(path: Path) -> bool:
    """Undo and remove the journal at ``path`` if its owner is dead; False when there is none.

    Raises JournalError when the owner still runs (another tunneler owns the host state).
    """
    state = load_journal(path)
    if state is None:
        return False
    if owner_alive(state):
        raise JournalError(f"journal {path} belongs to running process {state.pid}; "
                           "stop it instead of cleaning up under it")
    log.info("journal.recovery_started", path=str(path), pid=state.pid, steps=len(state.steps))
    failed = undo(state.steps)
    Journal(path, state).remove()
    log.info("journal.recovery_finished", path=str(path), failed=failed)
    return True


def start_journal(runtime_dir: Path = DEFAULT_RUNTIME_DIR) -> Journal:
    """Daemon start: recover a dead predecessor's journal, then open our own."""
    path = journal_path(runtime_dir)
    recover(path)
    return Journal.create(path)


def rollback(journal: Journal) -> int:
    """Clean shutdown: undo this process's own steps and remove its journal."""
    failed = undo(journal.state.steps)
    journal.remove()
    return failed


def cmd_cleanup(args: argparse.Namespace) -> int:
    """``tunneler cleanup``: replay a dead daemon's journal, then remove known leftovers."""
    runtime_dir = Path(args.runtime_dir or DEFAULT_RUNTIME_DIR)
    recover(journal_path(runtime_dir))
    routes.cleanup(args.tun_name or DEFAULT_TUN_NAME)
    system.restore_resolv_conf(Path(args.resolv_conf or system.RESOLV_CONF))
    return 0
