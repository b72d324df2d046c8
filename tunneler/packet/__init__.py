"""Sans-IO IP layer: parse packets read from the TUN, build packets to write, checksums.

- ``tunneler.packet.parse``: ``parse(buf, out) -> Parsed | DropReason`` (bounds-checked).
- ``tunneler.packet.build``: UDP datagrams, TCP RSTs, ICMP port unreachable.
- ``tunneler.packet.checksum``: RFC 1071 sums and RFC 1624 incremental updates.
"""

from __future__ import annotations

from tunneler.packet.parse import DropReason, Parsed, parse

__all__ = ["DropReason", "Parsed", "parse"]
