"""The daemon-side ops options (--control-socket, --control-group, --metrics-listen) and config.

Kept free of heavy imports: the CLI parser imports it for every command.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SOCKET = Path("/run/tunneler/tunneler.sock")
SOCKET_NAME = DEFAULT_SOCKET.name


@dataclass(frozen=True)
class OpsConfig:
    control_socket: Path | None = DEFAULT_SOCKET   # None: no control socket
    control_group: str | None = None                # default: the daemon's own group
    metrics_listen: str | None = None               # "127.0.0.1:9100"; None: no HTTP listener

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> OpsConfig:
        """From `add_arguments` options; the socket defaults to RUNTIME_DIR/tunneler.sock
        when the command has a --runtime-dir (`run`), else to none (`run-host`)."""
        socket_path = getattr(args, "control_socket", None)
        runtime_dir = getattr(args, "runtime_dir", None)
        if socket_path is None and runtime_dir is not None:
            socket_path = str(Path(runtime_dir) / SOCKET_NAME)
        return cls(control_socket=Path(socket_path) if socket_path else None,
                   control_group=getattr(args, "control_group", None),
                   metrics_listen=getattr(args, "metrics_listen", None))


#: no control socket, no metrics (programmatic use and tests); sd_notify still follows the env
NO_OPS = OpsConfig(control_socket=None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The daemon-side options: --control-socket, --control-group, --metrics-listen."""
    parser.add_argument("--control-socket",
                        help="Unix socket for `tunneler status/intercepts/...` (default for "
                             f"`run`: RUNTIME_DIR/{SOCKET_NAME}, i.e. {DEFAULT_SOCKET}; "
                             "for `run-host`: none; empty string: none)")
    parser.add_argument("--control-group",
                        help="group allowed to use the control socket (default: our group)")
    parser.add_argument("--metrics-listen", metavar="IP:PORT",
                        help="serve /healthz, /ready and Prometheus /metrics here")
