"""OpenZiti edge protocol carried on a channel: messages, end-to-end crypto, app data."""

from __future__ import annotations
