"""Operating a running tunneler: control socket, CLI views, health, metrics, systemd.

The daemon (`tunneler run`) and `tunneler run-host` implement `snapshot.DaemonView`; everything
here reads the daemon only through that protocol, so it can be tested against any small view.
"""

from __future__ import annotations
