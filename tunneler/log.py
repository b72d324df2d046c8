"""structlog configuration: JSON lines when not a TTY, console rendering on a TTY.

Event names are stable, `area.object_past_verb` in snake_case (`flow.opened`,
`dns.query_answered`, `channel.hello_rejected`); data goes in keys, never in the event string.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

_REDACTED_KEYS = frozenset({"token", "jwt", "key", "private_key", "session_token", "password"})


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Never let secrets reach a log line, whatever a caller passes."""
    for key in _REDACTED_KEYS.intersection(event):
        event[key] = "<redacted>"
    return event


class _StderrLogger:
    """Writes each rendered line to the *current* sys.stderr (which tests may swap)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _stderr_logger(*_args: Any) -> _StderrLogger:
    return _StderrLogger()


def parse_level(name: str) -> int:
    """Map a level name (`debug`, `info`, ...) to a logging level, or raise ValueError."""
    try:
        return _LEVELS[name.lower()]
    except KeyError:
        choices = ", ".join(sorted(_LEVELS))
        raise ValueError(f"unknown log level {name!r}; choose one of {choices}") from None


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog for the whole process.

    Args:
        level: minimum level name.
        json: force JSON (True) or console (False) output; default: JSON unless stderr is a TTY.
    """
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=True)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(parse_level(level)),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


def set_level(level: str) -> None:
    """Change the minimum level at run time (used by the control socket)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(parse_level(level)))


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger bound to a component name."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(component=name)
    return logger
