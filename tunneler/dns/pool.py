"""Virtual-IP pool: stable IPv4 addresses for intercepted hostnames (sans-IO, ``now`` passed in).

The range string names the TUN address (``100.64.0.1/10``: TUN = .1, DNS = TUN + 1 = .2, first
VIP = .3, as ziti-edge-tunnel does since v0.19.10). The network and broadcast addresses, the
TUN and the DNS address are never handed out.

Life of an address (reliability.md TM-08, TM-09)::

    free --assign--> in use --retire (service gone) and no live flows--> quarantine
                       ^  |                                                 |
                       |  +--wildcard quota reached, LRU without flows------+
                       +--assign of the same name while quarantined---------+
    quarantine --after `quarantine` seconds (>= 2 x DNS TTL)--> free

API:

- ``VipPool(cidr, quarantine=120.0, wildcard_quota=4096)``; ``tun_ip``, ``dns_ip``,
  ``capacity``, ``in_use``.
- ``assign(name, now, wildcard=None) -> IPv4Address`` (same IP while the name is held);
  raises ``PoolExhausted`` or ``WildcardQuotaExceeded`` (answer SERVFAIL).
- ``lookup(name)``, ``hostname_for(ip)`` (reverse map, also for retired names with flows).
- ``wildcard_names(domain)``: the names (and VIPs) assigned under ``*.domain`` now.
- ``acquire(ip, now)`` / ``release(ip, now)``: a flow to the VIP started / ended (refcount:
  an IP with live flows is never reassigned); ``touch(ip, now)`` records use.
- ``retain(keep, now)``: retire every name for which ``keep(name)`` is false (services changed).
- ``counters``: assigned, restored, retired, evicted, exhausted, quota_exceeded.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface

from tunneler.errors import PoolExhausted, WildcardQuotaExceeded

DEFAULT_RANGE = "100.64.0.1/10"
DEFAULT_QUARANTINE = 120.0
DEFAULT_WILDCARD_QUOTA = 4096
_MAX_PREFIX = 29


class _Entry:
    __slots__ = ("last_used", "name", "offset", "refs", "retired", "wildcard")

    def __init__(self, name: str, offset: int, wildcard: str | None, now: float) -> None:
        self.name = name
        self.offset = offset
        self.wildcard = wildcard
        self.refs = 0
        self.retired = False
        self.last_used = now


class VipPool:
    """Allocator of virtual IPs over one IPv4 CIDR."""

    def __init__(
        self,
        cidr: str = DEFAULT_RANGE,
        *,
        quarantine: float = DEFAULT_QUARANTINE,
        wildcard_quota: int = DEFAULT_WILDCARD_QUOTA,
    ) -> None:
        interface = IPv4Interface(cidr)
        network = interface.network
        if network.prefixlen > _MAX_PREFIX:
            raise ValueError(f"virtual IP range {cidr} is smaller than a /{_MAX_PREFIX}")
        self._base = int(network.network_address)
        self._size = network.num_addresses
        tun_offset = max(int(interface.ip) - self._base, 1)
        if tun_offset + 1 >= self._size - 1:
            raise ValueError(f"no room for the TUN and DNS addresses in {cidr}")
        self._reserved = frozenset({0, tun_offset, tun_offset + 1, self._size - 1})
        self.tun_ip = IPv4Address(self._base + tun_offset)
        self.dns_ip = IPv4Address(self._base + tun_offset + 1)
        self.network = network
        self.capacity = self._size - len(self._reserved)
        self.quarantine = quarantine
        self.wildcard_quota = wildcard_quota
        self._cursor = tun_offset + 2
        self._by_name: dict[str, _Entry] = {}
        self._by_offset: dict[int, _Entry] = {}
        self._quarantined: OrderedDict[int, tuple[float, str]] = OrderedDict()
        self._quarantined_names: dict[str, int] = {}
        self._wildcards: dict[str, OrderedDict[str, None]] = {}
        self.counters: Counter[str] = Counter()

    @property
    def in_use(self) -> int:
        """Addresses held by names or in quarantine."""
        return len(self._by_offset) + len(self._quarantined)

    def lookup(self, name: str) -> IPv4Address | None:
        """Return the VIP of an active (not retired) ``name``."""
        entry = self._by_name.get(name)
        return self._ip(entry) if entry is not None and not entry.retired else None

    def hostname_for(self, ip: IPv4Address) -> str | None:
        """Return the name holding ``ip`` (retired names keep it while flows live)."""
        entry = self._by_offset.get(int(ip) - self._base)
        return entry.name if entry is not None else None

    def wildcard_names(self, domain: str) -> list[tuple[str, IPv4Address]]:
        """The active names assigned under ``*.domain`` with their VIPs, most recently used
        first (at most ``wildcard_quota`` of them)."""
        names = self._wildcards.get(domain)
        if names is None:
            return []
        entries = (self._by_name[name] for name in reversed(names))
        return [(e.name, self._ip(e)) for e in entries if not e.retired]

    def assign(self, name: str, now: float, wildcard: str | None = None) -> IPv4Address:
        """Return the VIP for ``name``, allocating one if needed.

        Args:
            name: a normalized (lowercase) hostname.
            now: monotonic time.
            wildcard: the wildcard domain the name matched, for its quota; None for exact names.

        Raises:
            PoolExhausted: no address is free.
            WildcardQuotaExceeded: ``wildcard`` holds its quota and none is evictable.
        """
        self._expire_quarantine(now)
        entry = self._by_name.get(name)
        if entry is None:
            entry = self._restore(name, wildcard, now) or self._allocate(name, now, wildcard)
        entry.retired = False
        self._use(entry, now)
        return self._ip(entry)

    def reserve(self) -> IPv4Address:
        """Take the next free address out of the pool for good (the engine's NAT address):
        never handed to a name, never in a DNS answer, not counted as in use.

        Raises:
            PoolExhausted: no address is free.
        """
        if self.in_use >= self.capacity:
            raise PoolExhausted(f"all {self.capacity} virtual IPs of {self.network} are in use")
        offset = self._next_free_offset()
        self._reserved = self._reserved | {offset}
        self.capacity -= 1
        return IPv4Address(self._base + offset)

    def acquire(self, ip: IPv4Address, now: float) -> None:
        """Count a live flow to ``ip`` (it is not reassigned while flows live)."""
        entry = self._by_offset.get(int(ip) - self._base)
        if entry is not None:
            entry.refs += 1
            self._use(entry, now)

    def release(self, ip: IPv4Address, now: float) -> None:
        """A flow to ``ip`` ended; a retired name without flows goes to quarantine."""
        entry = self._by_offset.get(int(ip) - self._base)
        if entry is None or entry.refs == 0:
            return
        entry.refs -= 1
        entry.last_used = now
        if entry.refs == 0 and entry.retired:
            self._quarantine(entry, now)

    def touch(self, ip: IPv4Address, now: float) -> None:
        """Record use of ``ip`` (keeps a wildcard name off the LRU end)."""
        entry = self._by_offset.get(int(ip) - self._base)
        if entry is not None:
            self._use(entry, now)

    def retain(self, keep: Callable[[str], bool], now: float) -> None:
        """Retire every name for which ``keep`` is false; free those without flows."""
        for entry in list(self._by_name.values()):
            if entry.retired or keep(entry.name):
                continue
            entry.retired = True
            self.counters["retired"] += 1
            if entry.refs == 0:
                self._quarantine(entry, now)

    def _ip(self, entry: _Entry) -> IPv4Address:
        return IPv4Address(self._base + entry.offset)

    def _use(self, entry: _Entry, now: float) -> None:
        entry.last_used = now
        if entry.wildcard is not None:
            self._wildcards[entry.wildcard].move_to_end(entry.name)

    def _restore(self, name: str, wildcard: str | None, now: float) -> _Entry | None:
        """Give a quarantined name its old address back (clients may still cache it)."""
        offset = self._quarantined_names.pop(name, None)
        if offset is None:
            return None
        del self._quarantined[offset]
        self.counters["restored"] += 1
        return self._insert(_Entry(name, offset, wildcard, now))

    def _allocate(self, name: str, now: float, wildcard: str | None) -> _Entry:
        if wildcard is not None:
            self._make_room_for(wildcard, now)
        if self.in_use >= self.capacity:
            self.counters["exhausted"] += 1
            raise PoolExhausted(f"all {self.capacity} virtual IPs of {self.network} are in use")
        offset = self._next_free_offset()
        entry = self._insert(_Entry(name, offset, wildcard, now))
        self.counters["assigned"] += 1
        return entry

    def _insert(self, entry: _Entry) -> _Entry:
        self._by_name[entry.name] = entry
        self._by_offset[entry.offset] = entry
        if entry.wildcard is not None:
            self._wildcards.setdefault(entry.wildcard, OrderedDict())[entry.name] = None
        return entry

    def _make_room_for(self, wildcard: str, now: float) -> None:
        names = self._wildcards.get(wildcard)
        if names is None or len(names) < self.wildcard_quota:
            return
        for name in names:
            victim = self._by_name[name]
            if victim.refs == 0:
                self.counters["evicted"] += 1
                self._quarantine(victim, now)
                return
        self.counters["quota_exceeded"] += 1
        raise WildcardQuotaExceeded(f"*.{wildcard} holds {self.wildcard_quota} names with flows")

    def _next_free_offset(self) -> int:
        while True:  # terminates: in_use < capacity was checked by the caller
            offset = self._cursor
            self._cursor = (self._cursor + 1) % self._size
            taken = offset in self._by_offset or offset in self._quarantined
            if not taken and offset not in self._reserved:
                return offset

    def _quarantine(self, entry: _Entry, now: float) -> None:
        del self._by_name[entry.name]
        del self._by_offset[entry.offset]
        if entry.wildcard is not None:
            names = self._wildcards[entry.wildcard]
            del names[entry.name]
            if not names:
                del self._wildcards[entry.wildcard]
        self._quarantined[entry.offset] = (now + self.quarantine, entry.name)
        self._quarantined_names[entry.name] = entry.offset

    def _expire_quarantine(self, now: float) -> None:
        while self._quarantined:
            offset, (until, name) = next(iter(self._quarantined.items()))
            if until > now:
                return
            del self._quarantined[offset]
            del self._quarantined_names[name]
