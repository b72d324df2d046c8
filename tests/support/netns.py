"""The pytest side of the namespace harness (design.md §4, reliability.md §4.0).

Namespaces themselves (unique names, /etc/netns files, veth, nftables inbound drop, run/popen,
``ip``/``ip_json``, ``entered()``, stale cleanup) live in `tunneler.demo.netns`. This adds only
`NetnsPool` and the ``netns_pool`` fixture: everything created through the pool is removed at
the end of the test, also when it fails (processes killed, namespaces and /etc/netns
directories deleted).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tunneler.demo.netns import DEFAULT_HOSTS, DEFAULT_RESOLV, Netns


class NetnsPool:
    """Creates namespaces for one test (or one benchmark) and deletes them all on `close`."""

    def __init__(self) -> None:
        self._spaces: list[Netns] = []

    def new(self, role: str = "t", *, resolv_conf: str = DEFAULT_RESOLV,
            hosts: str = DEFAULT_HOSTS) -> Netns:
        ns = Netns(role, resolv_conf=resolv_conf, hosts=hosts)
        self._spaces.append(ns)
        return ns

    def close(self) -> None:
        """Delete every namespace of the pool, newest first; one failing does not stop the
        others (the first error is raised afterwards)."""
        with contextlib.ExitStack() as stack:
            while self._spaces:
                stack.callback(self._spaces.pop(0).delete)


@pytest.fixture
def netns_pool() -> Iterator[NetnsPool]:
    """Namespaces for one test; all deleted afterwards, pass or fail."""
    pool = NetnsPool()
    try:
        yield pool
    finally:
        pool.close()
