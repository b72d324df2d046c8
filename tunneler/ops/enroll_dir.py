"""Enroll every `*.jwt` dropped in the identity directory, at start (systemd and sidecar).

`NAME.jwt` becomes `NAME.json` (mode 0600, atomic, through `identity.save_identity`) and the
token is deleted once the identity is saved. A token whose identity already exists is left
alone and reported; a failed enrollment is logged and the token kept, so the cause can be
fixed and the service restarted. Token contents never reach a log line.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tunneler.enroll import enroll
from tunneler.errors import TunnelerError
from tunneler.identity import save_identity
from tunneler.log import get_logger

log = get_logger("enroll")

MAX_TOKENS = 64


def enroll_pending(directory: Path) -> list[Path]:
    """Enroll each `*.jwt` in `directory`; returns the identity files written.

    Runs its own event loop per token: call it before the daemon's loop starts.
    """
    written: list[Path] = []
    if not directory.is_dir():
        return written
    tokens = sorted(directory.glob("*.jwt"))
    if len(tokens) > MAX_TOKENS:
        log.warning("enroll.tokens_skipped", count=len(tokens) - MAX_TOKENS, limit=MAX_TOKENS)
    for token in tokens[:MAX_TOKENS]:
        identity_file = _enroll_one(token)
        if identity_file is not None:
            written.append(identity_file)
    return written


def _enroll_one(token: Path) -> Path | None:
    target = token.with_suffix(".json")
    if target.exists():
        log.warning("enroll.token_ignored", token_file=str(token),
                    reason=f"{target.name} already exists")
        return None
    try:
        identity = asyncio.run(enroll(token))
    except (TunnelerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.error("enroll.token_failed", token_file=str(token), error=str(exc) or repr(exc))
        return None
    save_identity(identity, target)
    token.unlink()
    log.info("enroll.completed", identity_file=str(target), controller=identity.ztapi)
    return target

