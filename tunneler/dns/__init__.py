"""DNS for intercepted names: the virtual-IP pool and the sans-IO responder.

- ``tunneler.dns.pool``: ``VipPool`` (virtual IPs per hostname, quarantine, quotas).
- ``tunneler.dns.answer``: ``DnsResponder`` (query bytes -> ``Reply`` / ``Forward`` / ``Drop``)
  and ``check_upstream_reply`` (validation and rebinding protection for forwarded answers).
- ``tunneler.dns.system``: the OS resolver configuration (the one module here that does I/O).

Import as ``tunneler.dns...``; a bare ``import dns`` means dnspython, which we do not use.
"""

from __future__ import annotations
