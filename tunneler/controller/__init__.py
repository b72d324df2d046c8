"""The embedded OpenZiti-compatible controller: PKI, state, policy files, Edge Client API, CLI."""

from __future__ import annotations
