"""OpenZiti channel v2: framing (`message`) and the sans-IO connection core (`connection`)."""

from __future__ import annotations
