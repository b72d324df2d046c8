"""Internet checksums: RFC 1071 full sums and RFC 1624 incremental updates.

API:

- ``ones_sum(data)`` — the folded 16-bit one's complement sum of ``data`` (odd lengths are
  padded with a zero byte); ``internet_checksum(data, initial=0)`` — the checksum field value
  (``~sum``) of ``data`` plus an already folded partial sum ``initial``.
- ``pseudo_header_sum(src, dst, proto, length)`` — the folded sum of the TCP/UDP pseudo header
  (RFC 793 / RFC 768 for IPv4, RFC 8200 §8.1 for IPv6); addresses are ints of either width.
- ``checksum_delta(old, new)`` — a precomputable delta for replacing the 16-bit words ``old``
  by ``new`` (RFC 1624 eqn. 3: ``HC' = ~(~HC + ~m + m')``); ``apply_delta(hc, delta)`` applies
  it to a stored checksum. A NAT computes the delta once per flow and direction.
- ``address_words(ip)`` / ``port_words(port)`` — helpers turning a 32-bit address or a 16-bit
  port into the word tuple ``checksum_delta`` takes.

A valid packet has ``internet_checksum(pseudo + segment) == 0``.
"""

from __future__ import annotations

from collections.abc import Iterable

_MASK = 0xFFFF


def _fold(total: int) -> int:
    """Fold a non-negative integer into 16 bits with end-around carry (0 stays 0)."""
    if total == 0:
        return 0
    folded = total % _MASK
    return folded or _MASK


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """Return the folded one's complement sum of the big-endian 16-bit words of ``data``.

    Summing 16-bit words modulo 0xFFFF equals the end-around-carry sum (2**16 ≡ 1 mod 0xFFFF),
    so one big-integer conversion in C replaces a Python loop.
    """
    if len(data) % 2:
        return _fold(int.from_bytes(bytes(data) + b"\x00", "big"))
    return _fold(int.from_bytes(data, "big"))


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Return the RFC 1071 checksum of ``data`` with ``initial`` (a folded sum) added in."""
    return ~_fold(ones_sum(data) + initial) & _MASK


def pseudo_header_sum(src: int, dst: int, proto: int, length: int) -> int:
    """Return the folded sum of the TCP/UDP pseudo header (IPv4 or IPv6 addresses as ints).

    An address int is congruent to the sum of its 16-bit words modulo 0xFFFF, so the fields
    can be added whole.
    """
    return _fold(src + dst + proto + length)


def address_words(ip: int) -> tuple[int, int]:
    """Split a 32-bit address into its two 16-bit words."""
    return (ip >> 16) & _MASK, ip & _MASK


def port_words(port: int) -> tuple[int]:
    """Wrap a port as a one-word tuple."""
    return (port & _MASK,)


def checksum_delta(old: Iterable[int], new: Iterable[int]) -> int:
    """Return the folded ``sum(~old) + sum(new)`` for an RFC 1624 incremental update."""
    total = 0
    for word in old:
        total += ~word & _MASK
    for word in new:
        total += word
    return _fold(total)


def apply_delta(checksum: int, delta: int) -> int:
    """Apply a ``checksum_delta`` to a stored checksum field value (RFC 1624 eqn. 3)."""
    return ~_fold((~checksum & _MASK) + delta) & _MASK
