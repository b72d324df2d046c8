"""Long-running programs started inside network namespaces, each logging to ``DIR/<name>.log``.

`Processes` is what the demo scenario, the privileged tests' deployments and the benchmarks
share: start a program by name, wait until its log shows a line (failing early when it exits),
and stop it (a signal, then SIGKILL after a timeout). Commands are argv lists, never shell strings.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tunneler.demo.netns import Netns, NetnsError

WAIT_TIMEOUT = 40.0
STOP_TIMEOUT = 15.0


class Processes:
    """Named programs in namespaces, logging to files in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, ns: Netns, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start `argv` in `ns` as `name` (stdout and stderr to DIR/<name>.log)."""
        with (self.dir / f"{name}.log").open("wb") as log:
            proc: subprocess.Popen[bytes] = ns.popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                     cwd=self.dir)
        self.procs[name] = proc
        return proc

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
