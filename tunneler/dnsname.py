"""DNS host names: the one syntax check for configs, intercepts and dialer-chosen targets (pure).

A host name is 1..253 ASCII characters of dot-separated labels, each 1..63 letters, digits,
`-` or `_`, neither starting nor ending with `-`; one trailing dot is allowed. The last label
must not look like a number (`123`, `0x7f`): the C resolver reads such names as IPv4 addresses
(`inet_aton` accepts `127.1`, `2130706433`, `0x7f000001`), so a "name" could otherwise reach an
address that no allow-list entry names (security.md, SEC-01).
"""

from __future__ import annotations

import re

MAX_NAME_LENGTH = 253
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMERIC = re.compile(r"[0-9]+|0x[0-9a-f]*")


def normalize(name: str) -> str | None:
    """`name` lowercased without its trailing dot, or None if it is not a valid host name."""
    if not name.isascii():
        return None
    name = name.lower().removesuffix(".")
    if not 0 < len(name) <= MAX_NAME_LENGTH:
        return None
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels) or _NUMERIC.fullmatch(labels[-1]):
        return None
    return name


def is_hostname(text: str, *, wildcard: bool = False) -> bool:
    """True for a valid host name; with `wildcard`, `*.domain` is accepted too."""
    if wildcard and text.startswith("*."):
        text = text[2:]
    return normalize(text) is not None
