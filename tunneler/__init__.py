"""tunneler: a userspace zero-trust tunneler speaking OpenZiti's protocols."""

from __future__ import annotations

__version__ = "0.1.0"
