"""The host configuration a running `tunneler run` wants, and the one place that applies it.

- ``tunneler.hostconfig.config``: ``HostConfig`` (TUN link, routes, DNS IP, domains,
  route-all), the ``HostConfigurator`` interface and ``FakeHostConfigurator``, which records
  what it was given (tests drive a real ``Daemon`` on it without root).
- ``tunneler.hostconfig.linux``: ``LinuxHostConfigurator`` (netlink routes via
  ``tunneler.tun.routes``, the resolver via ``tunneler.dns.system``).
- ``tunneler.journal`` (one level down, so routes and resolver need not import this package) and
  ``tunneler.hostconfig.cleanup``: the undo journal both routes and resolver
  record into before each change, and its replay (``tunneler cleanup``).

How the daemon uses it::

    configurator.prepare(tun_name)          # replay a crashed run's journal, open ours
    tun = LinuxTun(tun_name)
    configurator.set(HostConfig(routes))    # link, addresses, routes; no DNS yet
    ...engine starts...
    configurator.set(HostConfig(routes, dns_ip, domains))   # and on every service change
    configurator.reclaim()                  # every few seconds: put back what drifted
    configurator.set(HostConfig(routes))    # stop: the resolver first
    configurator.close()                    # undo the rest, remove the journal
"""

from __future__ import annotations
