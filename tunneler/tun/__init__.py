"""The only package that touches the kernel's network configuration: the TUN device
(``device``: ``LinuxTun`` and the ``SocketPairTun`` fake), netlink routes and addresses
(``routes``) and the pure route planner (``route_plan``).

The daemon does not call ``routes`` itself: ``tunneler.hostconfig.linux`` applies each
``HostConfig`` through it, journaling every change in ``tunneler.journal`` first.
"""

from __future__ import annotations
