"""CLI handlers that talk to a running daemon: `intercepts`, `status`, `log-level`, `refresh`.

`tunneler status` is usable as a health check: exit 0 when healthy, 1 when the daemon answers
but is not healthy (the problems are printed), 2 when no daemon answers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from tunneler.errors import ControlError
from tunneler.ops import control
from tunneler.ops.render import render_intercepts, render_json, render_status, status_json
from tunneler.ops.snapshot import InterceptRow, Status, from_json, problems

EXIT_HEALTHY, EXIT_UNHEALTHY, EXIT_UNREACHABLE = 0, 1, 2


def _ask(args: argparse.Namespace, command: str, data: dict[str, Any] | None = None) -> Any:
    return control.request(Path(args.control_socket), command, data)


def _decode(cls: type[Any], data: Any) -> Any:
    try:
        return from_json(cls, data)
    except ValueError as exc:
        raise ControlError(f"unexpected answer from the daemon: {exc}") from None


def _width() -> int:
    return shutil.get_terminal_size((80, 24)).columns


def cmd_intercepts(args: argparse.Namespace) -> int:
    """`tunneler intercepts [--json]`."""
    data = _ask(args, "intercepts")
    raw = data.get("intercepts") if isinstance(data, dict) else None
    if not isinstance(raw, list):
        raise ControlError("unexpected answer from the daemon: no intercept list")
    rows = [_decode(InterceptRow, item) for item in raw]
    print(render_json({"intercepts": rows}) if args.json else render_intercepts(rows, _width()))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """`tunneler status [--json]`: exit 0 healthy, 1 unhealthy, 2 unreachable."""
    try:
        data = _ask(args, "status")
    except ControlError as exc:
        print(f"tunneler: error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not isinstance(data, dict):
        raise ControlError("unexpected answer from the daemon: status is not an object")
    status: Status = _decode(Status, {k: v for k, v in data.items()
                                      if k not in ("healthy", "problems")})
    healthy = not problems(status)
    if args.json:
        print(json.dumps(status_json(status), indent=2, ensure_ascii=False))
    else:
        print(render_status(status, color=sys.stdout.isatty()))
    return EXIT_HEALTHY if healthy else EXIT_UNHEALTHY


def cmd_log_level(args: argparse.Namespace) -> int:
    """`tunneler log-level LEVEL`."""
    data = _ask(args, "set_log_level", {"level": args.level})
    print(f"log level: {data.get('level') if isinstance(data, dict) else args.level}")
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    """`tunneler refresh`: re-fetch services now."""
    data = _ask(args, "refresh")
    if isinstance(data, dict) and data:
        print("services refreshed: " + ", ".join(f"{k} {v}" for k, v in data.items()))
    else:
        print("services refreshed")
    return 0
