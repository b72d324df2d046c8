"""App data (edge header 1011) exchanged between tunnelers: a JSON object of string values.

Keys follow ziti-edge-tunnel's `tunneler_app_data`: `connType`, `dst_protocol`, `dst_hostname`,
`dst_ip`, `dst_port`, `src_protocol`, `src_ip`, `src_port`, `source_addr`. Unknown keys are kept;
non-string values are converted to strings; `null` means absent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

MAX_APP_DATA = 8192


def encode_app_data(fields: Mapping[str, str | int | None]) -> bytes:
    """Serialise, dropping absent (None) fields."""
    return json.dumps({k: str(v) for k, v in fields.items() if v is not None},
                      separators=(",", ":")).encode()


def decode_app_data(raw: bytes | None) -> dict[str, str]:
    """Parse app data leniently: anything malformed or oversized yields an empty mapping."""
    if not raw or len(raw) > MAX_APP_DATA:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items() if v is not None}
