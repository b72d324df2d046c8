"""Edge Client API query helpers: paging, the `name="x"` filter, config types (pure)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tunneler.controller.apierrors import bad_request
from tunneler.controller.views import list_envelope

DEFAULT_LIMIT = 10
MAX_LIMIT = 500
MAX_CONFIG_TYPES = 32
MAX_CONFIG_TYPE_LENGTH = 128

_NAME_FILTER = re.compile(r'\s*name\s*=\s*"((?:[^"\\]|\\.)*)"\s*')


def _int_param(query: Mapping[str, str], name: str, default: int, high: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request("INVALID_PAGINATION", f"{name} must be an integer") from None
    if not 0 <= value <= high:
        raise bad_request("INVALID_PAGINATION", f"{name} must be 0..{high}")
    return value


def page(query: Mapping[str, str], items: Sequence[Any]) -> dict[str, Any]:
    """The `limit`/`offset` slice of `items` in a list envelope with the exact total count."""
    limit = _int_param(query, "limit", DEFAULT_LIMIT, MAX_LIMIT) or DEFAULT_LIMIT
    offset = _int_param(query, "offset", 0, 2**31 - 1)
    return list_envelope(list(items[offset:offset + limit]), limit, offset, len(items))


def parse_name_filter(text: str | None) -> str | None:
    """The service name of a `name="x"` filter (the only filter the SDK sends), or None."""
    if text is None or not text.strip():
        return None
    match = _NAME_FILTER.fullmatch(text)
    if match is None:
        raise bad_request("INVALID_FILTER", 'only filter=name="<service name>" is supported')
    return re.sub(r"\\(.)", r"\1", match.group(1))


def wanted_config_types(requested: object, default: Iterable[str]) -> tuple[str, ...]:
    """Validated config type names from a request (JSON list or repeated query parameter)."""
    if requested is None or requested == []:
        return tuple(default)
    if not isinstance(requested, list) or len(requested) > MAX_CONFIG_TYPES or not all(
            isinstance(item, str) and 0 < len(item) <= MAX_CONFIG_TYPE_LENGTH
            for item in requested):
        raise bad_request("COULD_NOT_VALIDATE",
                          f"configTypes must be a list of at most {MAX_CONFIG_TYPES} names")
    return tuple(dict.fromkeys(requested))
