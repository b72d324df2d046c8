"""Durations on the command line and in network.json: `90s`, `30m`, `24h`, `365d` (pure)."""

from __future__ import annotations

import re

from tunneler.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"([0-9]{1,9})([smhd])")


def parse_duration(text: str, name: str, minimum: int, maximum: int) -> int:
    """Seconds in `text` (a number with unit s, m, h or d), within [minimum, maximum].

    Raises:
        ConfigError: naming `name` and saying what is accepted.
    """
    match = _DURATION.fullmatch(text.strip())
    seconds = int(match.group(1)) * _UNITS[match.group(2)] if match else -1
    if not minimum <= seconds <= maximum:
        raise ConfigError(f"{name}: {text!r} must be a duration such as 90s, 30m, 24h or 365d, "
                          f"from {format_duration(minimum)} to {format_duration(maximum)}")
    return seconds


def format_duration(seconds: int) -> str:
    """The shortest exact spelling of `seconds` (`86400` → `1d`)."""
    for unit in ("d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"
