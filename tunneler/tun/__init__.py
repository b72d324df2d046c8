"""The only package that touches the kernel: TUN devices, routes, and the undo journal.

How the daemon wires it (reliability.md §3.3-3.4)::

    journal = cleanup.start_journal(runtime_dir)          # undoes a crashed predecessor first
    journal.record(Step.delete_link(name))
    tun = LinuxTun(name, offload=offload)                 # device.py
    routes.configure(route_plan.desired_config(...), journal)
    method, why = dns.system.detect_method(resolv_conf, no_dns_config=...)
    resolver = SystemResolver(method, link=tun.name, dns_ip=..., domains=..., journal=journal)
    resolver.apply()
    ...
    resolver.revert()                                     # shutdown: DNS first
    tun.close()                                           # the kernel drops link and routes
    cleanup.rollback(journal)                             # undo the rest, remove the journal
"""

from __future__ import annotations
