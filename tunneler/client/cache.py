"""One identity's last known services, persisted so a daemon restarted while the controller
is down still serves them (issue 9, item 4; reliability.md §3.4).

The file is `<identity file>.cache` (not `*.json`, so `--identity-dir` never takes it for an
identity): JSON with the API session (and OIDC tokens), the edge routers, the services with
their configs and the Dial/Bind sessions. Its tokens are secrets of the same class as the
identity's key: written atomically with mode 0600, refused when others can read it, and
never logged. `encode`/`decode` are pure; `ServiceCache` does the file.
"""

from __future__ import annotations

import datetime
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunneler.client.ctrl import ApiSession, EdgeRouterRef, ServiceInfo, SessionRef
from tunneler.client.oidc import Tokens
from tunneler.errors import CacheError
from tunneler.fsutil import write_atomic

FORMAT = 1
SUFFIX = ".cache"


@dataclass(frozen=True)
class CachedState:
    """What a context needs to serve without its controller."""

    saved_at: float                     # epoch seconds
    auth_method: str
    api_session: ApiSession
    tokens: Tokens | None
    routers: tuple[EdgeRouterRef, ...]
    services: Mapping[str, ServiceInfo]
    sessions: Mapping[tuple[str, str], SessionRef]   # (service id, "Dial"/"Bind") -> session


def cache_path(identity_path: Path) -> Path:
    """Where the cache of the identity stored at `identity_path` lives."""
    return identity_path.with_name(identity_path.name + SUFFIX)


def _router(data: Mapping[str, Any]) -> EdgeRouterRef:
    return EdgeRouterRef(str(data["name"]), str(data["url"]))


def _content(state: CachedState) -> dict[str, Any]:
    """Everything but `saved_at` (two saves of the same content write the file once)."""
    session = state.api_session
    return {
        "format": FORMAT, "auth_method": state.auth_method,
        "api_session": {"id": session.id, "token": session.token,
                        "identity_id": session.identity_id, "identity_name": session.identity_name,
                        "expires_at": session.expires_at.isoformat() if session.expires_at
                        else None},
        "tokens": None if state.tokens is None else vars(state.tokens),
        "routers": [vars(router) for router in state.routers],
        "services": [{"id": s.id, "name": s.name, "permissions": sorted(s.permissions),
                      "encryption_required": s.encryption_required, "configs": s.configs,
                      "updated_at": s.updated_at} for s in state.services.values()],
        "sessions": [{"id": s.id, "token": s.token, "kind": s.kind, "service_id": s.service_id,
                      "edge_routers": [vars(r) for r in s.edge_routers]}
                     for s in state.sessions.values()],
    }


def encode(state: CachedState) -> bytes:
    """The file's bytes."""
    return json.dumps({**_content(state), "saved_at": state.saved_at}, sort_keys=True).encode()


def decode(data: bytes) -> CachedState:
    """Parse a cache file.

    Raises:
        CacheError: not a cache of this format, or a field is missing or of the wrong type.
    """
    try:
        doc = json.loads(data)
        if doc.get("format") != FORMAT:
            raise CacheError(f"format {doc.get('format')!r} is not {FORMAT}")
        raw = doc["api_session"]
        expires = raw["expires_at"]
        session = ApiSession(str(raw["id"]), str(raw["token"]), str(raw["identity_id"]),
                             str(raw["identity_name"]),
                             datetime.datetime.fromisoformat(expires) if expires else None)
        tokens = None if doc["tokens"] is None else Tokens(
            str(doc["tokens"]["access"]), str(doc["tokens"]["refresh"]),
            float(doc["tokens"]["expires_at"]), str(doc["tokens"]["api_session_id"]),
            str(doc["tokens"]["identity_id"]))
        services = {str(s["name"]): ServiceInfo(
            str(s["id"]), str(s["name"]), frozenset(str(p) for p in s["permissions"]),
            bool(s["encryption_required"]), dict(s["configs"]), str(s["updated_at"]))
            for s in doc["services"]}
        sessions = {(str(s["service_id"]), str(s["kind"])): SessionRef(
            str(s["id"]), str(s["token"]), str(s["kind"]), str(s["service_id"]),
            tuple(_router(r) for r in s["edge_routers"])) for s in doc["sessions"]}
        return CachedState(float(doc["saved_at"]), str(doc["auth_method"]), session, tokens,
                           tuple(_router(r) for r in doc["routers"]), services, sessions)
    except CacheError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CacheError(f"unreadable ({type(exc).__name__}: {exc})") from None


class ServiceCache:
    """The cache file of one identity."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved: dict[str, Any] | None = None

    def save(self, state: CachedState) -> bool:
        """Write `state` (0600, atomic) unless the file already holds the same content;
        True when it wrote."""
        content = _content(state)
        if content == self._saved:
            return False
        write_atomic(self.path, encode(state))
        self._saved = content
        return True

    def load(self) -> CachedState | None:
        """The saved state; None when there is no file.

        Raises:
            CacheError: unreadable, or readable by others than its owner.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheError(f"{self.path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            if stat.S_IMODE(os.fstat(handle.fileno()).st_mode) & 0o077:
                raise CacheError(f"{self.path}: readable by group or others (it holds "
                                 "session tokens): remove it or chmod 600 it")
            data = handle.read()
        try:
            return decode(data)
        except CacheError as exc:
            raise CacheError(f"{self.path}: {exc}") from None
