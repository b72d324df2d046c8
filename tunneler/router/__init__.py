"""The embedded OpenZiti-compatible edge router: TLS channels, hello validation, Connect/Bind
pairing and the Data relay. `EdgeRouter` (server.py) is the entry point; the protocol logic is
sans-IO in `core.py`/`circuits.py`; `authority.py` is what it asks the controller.
"""

from __future__ import annotations

from tunneler.router.server import EdgeRouter

__all__ = ["EdgeRouter"]
