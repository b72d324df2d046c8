"""What the embedded edge router asks the controller: API sessions, sessions and live policy.

`tunneler.controller.store.Store` implements `RouterAuthority`; the router depends only on
this module, never on the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ApiSessionInfo:
    """An authenticated API session (the token a client sends in channel Hello header 1002)."""

    id: str
    token: str
    identity_id: str
    identity_name: str
    cert_fingerprints: frozenset[str]  # lowercase hex SHA-1 of client cert DER


@dataclass(frozen=True)
class SessionInfo:
    """A Dial or Bind session for one service (the token in an edge Connect/Bind body)."""

    id: str
    token: str
    type: str  # "Dial" | "Bind"
    service_id: str
    service_name: str
    identity_id: str
    api_session_id: str
    encryption_required: bool


class RouterAuthority(Protocol):
    """Lookups an edge router needs to authorise channels, dials and binds."""

    def api_session_by_token(self, token: str) -> ApiSessionInfo | None:
        """The API session for `token`, or None when unknown or expired."""
        ...

    def api_session_info(self, session_id: str) -> ApiSessionInfo | None:
        """The live API session with this id (named by an OIDC access token), or None."""
        ...

    def session_by_token(self, token: str) -> SessionInfo | None:
        """The session for `token`, or None when unknown or deleted."""
        ...

    def is_permitted(self, identity_id: str, service_id: str, kind: str) -> bool:
        """Whether a service policy of type `kind` ("Dial"/"Bind") currently allows the pair."""
        ...
