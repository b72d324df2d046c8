"""The intercepting data path of ``tunneler run`` (design.md §2): the adapters around the cores.

- ``events``: the rate-limited log and flow log lines shared by the pieces below (they count
  into ``tunneler.counters.Metrics`` and reach the overlay through ``tunneler.overlay``).
- ``tunreader``: the one reader/writer of the TUN, batching reads per loop turn.
- ``tcp``: SYN handling, overlay dial, hairpin NAT, local listener and local endpoints.
- ``udp``: UDP flows over one overlay connection each.
- ``dnsserver``: DNS on the DNS IP over UDP (packet path) and TCP (hairpin), upstream forwarding.
- ``policy``: intercepts from every identity's services; which context dials which service.
- ``engine``: the packet dispatcher tying them together; ``snapshot()`` for the ops layer.
"""

from __future__ import annotations
