"""Long-running programs started inside network namespaces, each logging to ``DIR/<name>.log``.

`Processes` is what the demo scenario, the privileged tests' deployments, the loopback overlay of
the integration tests and the benchmarks share: start a program by name (in a namespace, or
with `start_here` in this one), wait until its log shows a line (failing early when it exits),
and stop it (a signal, then SIGKILL after a timeout), or all of them, the network last.
Commands are argv lists, never shell strings.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from tunneler.demo.netns import Netns
from tunneler.errors import NetnsError

WAIT_TIMEOUT = 40.0
STOP_TIMEOUT = 15.0


class Processes:
    """Named programs in namespaces, logging to files in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, ns: Netns, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start `argv` in `ns` as `name` (stdout and stderr to DIR/<name>.log)."""
        with self._log_file(name, append=False) as log:
            proc: subprocess.Popen[bytes] = ns.popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                     cwd=self.dir)
        self.procs[name] = proc
        return proc

    def start_here(self, name: str, argv: Sequence[str], *,
                   append: bool = False) -> subprocess.Popen[bytes]:
        """Start `argv` in this namespace as `name`; its log is appended to if `append`."""
        with self._log_file(name, append) as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.dir)
        self.procs[name] = proc
        return proc

    def _log_file(self, name: str, append: bool) -> BinaryIO:
        return (self.dir / f"{name}.log").open("ab" if append else "wb")

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_log(self, name: str, text: str, count: int = 1,
                 timeout: float = WAIT_TIMEOUT) -> None:
        """Until `name` logged `text` `count` times; `NetnsError` (with the log's end) if it
        exits first or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while self.log(name).count(text) < count:
            if self.procs[name].poll() is not None or time.monotonic() > deadline:
                raise NetnsError(f"{name} did not log {text!r}; its log ends:\n"
                                 f"{self.log(name)[-3000:]}")
            time.sleep(0.05)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send `sig` to one program and wait (SIGKILL after `timeout`); its exit code."""
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop_all(self) -> dict[str, int]:
        """Stop every program, `network` last (the others lose their router gracefully)."""
        order = [name for name in self.procs if name != "network"]
        order += ["network"] if "network" in self.procs else []
        return {name: self.stop(name) for name in order}
