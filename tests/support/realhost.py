"""Real hosts for the privileged tests: Debian roots (debootstrap), podman, systemd-nspawn.

No container registry is reachable here, so images start from a Debian root that debootstrap
makes from Debian's packages (../shared/docs/real-hosts.md): `debian_root()` makes it (python3,
venv, CA certificates: the image base; plus systemd, dbus and systemd-resolved for a root
that boots). `Podman` runs podman with runc and explicit ulimits (the machine's cgroup and
rlimit quirks) and removes every container and image it made, by name and id, also after a
failure. `Booted` boots a root with systemd-nspawn inside a test's network namespace (never
the host's) and runs commands in it with nsenter. Roots live under a directory the caller
removes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
SYSTEMD_PACKAGES = (*BASE_PACKAGES, "systemd", "systemd-sysv", "dbus", "systemd-resolved",
                    "polkitd", "libpam-systemd", "curl")
DEBOOTSTRAP_TIMEOUT = 900
TRIM = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man")


def missing_tools(*tools: str) -> str | None:
    """A skip reason naming the first missing tool, or None."""
    for tool in tools:
        if shutil.which(tool) is None:
            return (f"{tool} is missing: `make test` installs it (scripts/system-deps.sh), "
                    f"or apt-get install {_package(tool)}")
    return None


def _package(tool: str) -> str:
    return {"systemd-nspawn": "systemd-container"}.get(tool, tool)


def debian_root(target: Path, packages: tuple[str, ...] = BASE_PACKAGES,
                cache: Path | None = None) -> Path:
    """A minimal Debian root at `target` with `packages`, caches trimmed. With `cache`, the
    downloaded packages are kept there for the next root (debootstrap --cache-dir).

    Raises:
        RuntimeError: debootstrap failed (its output's end in the message).
    """
    cached = [f"--cache-dir={cache.resolve()}"] if cache is not None else []
    done = subprocess.run(["debootstrap", "--variant=minbase", *cached,
                           f"--include={','.join(packages)}", SUITE, str(target)],
                          capture_output=True, text=True, timeout=DEBOOTSTRAP_TIMEOUT,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"debootstrap failed: {(done.stdout + done.stderr)[-3000:]}")
    for part in TRIM:
        shutil.rmtree(target / part, ignore_errors=True)
    return target


class Podman:
    """podman (runc, explicit ulimits) that remembers and removes what it made."""

    RUNTIME = ("--runtime", "runc")
    LIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.containers: list[str] = []
        self.images: list[str] = []

    def __call__(self, *args: str, check: bool = True,
                 timeout: float = 300) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["podman", *self.RUNTIME, *args], capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args[:3])}... failed "
                                 f"({done.returncode}):\n{done.stdout[-2000:]}\n"
                                 f"{done.stderr[-3000:]}")
        return done

    def import_root(self, root: Path, tag: str) -> str:
        """A base image from a root directory (`podman import`)."""
        with subprocess.Popen(["tar", "-C", str(root), "-c", "."],
                              stdout=subprocess.PIPE) as tar:
            done = subprocess.run(["podman", "import", "-", tag], stdin=tar.stdout,
                                  capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr
        self.images.append(tag)
        return tag

    def build(self, tag: str, context: Path, *args: str, file: Path | None = None) -> str:
        """Build an image (docker format: keeps HEALTHCHECK) with the host's CA bundle
        mounted for pip; intermediate images of the build are removed at cleanup too."""
        before = set(self._image_ids())
        try:
            self("build", "--format", "docker", "--network", "host",
                 "-v", "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/"
                 "ca-certificates.crt:ro", "--build-arg",
                 "PIP_CERT=/etc/ssl/certs/ca-certificates.crt", *args,
                 *(("-f", str(file)) if file else ()), "-t", tag, str(context), timeout=900)
        finally:
            self.images.extend(sorted(set(self._image_ids()) - before))
        self.images.append(tag)
        return tag

    def run(self, name: str, *args: str) -> str:
        """Start a detached container named `<prefix>-<name>`; its name."""
        full = f"{self.prefix}-{name}"
        self.containers.append(full)
        self("run", "-d", "--name", full, *self.LIMITS, *args)
        return full

    def run_once(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run a container to completion (removed after)."""
        return self("run", "--rm", *self.LIMITS, *args, check=False, timeout=timeout)

    def _image_ids(self) -> list[str]:
        return self("images", "-q", "--no-trunc", check=False).stdout.split()

    def remove_containers(self) -> None:
        """Remove every container this object started (running ones are stopped first)."""
        for name in reversed(self.containers):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self("rm", "-f", "-t", "5", name, check=False, timeout=60)
        self.containers.clear()

    def close(self) -> None:
        """Remove every container, then every image this object made (newest first)."""
        self.remove_containers()
        for image in reversed(self.images):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self("rmi", "-f", image, check=False, timeout=120)
        self.images.clear()


class Booted:
    """A Debian root booted by systemd-nspawn in the network namespace `netns`.

    `--register=no --keep-unit`: the host has no systemd to register with; CAP_NET_ADMIN,
    which nspawn keeps only for networks it made itself, is given back (the namespace is the
    test's own; PID 1 of a real host has it). Commands run in
    the booted system with nsenter into its PID 1 (systemd), with a clean environment.
    `close()` halts it (SIGTERM to systemd-nspawn, by PID), then kills it if it lingers.
    """

    PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    BOOT_TIMEOUT = 120.0

    def __init__(self, root: Path, netns: str, log: Path, *binds: str) -> None:
        self.root = root
        self.log = log
        self.argv = ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D", str(root),
                     "--boot", "--console=pipe", f"--network-namespace-path=/run/netns/{netns}",
                     "--capability=CAP_NET_ADMIN",
                     *(f"--bind-ro={bind}" for bind in binds)]
        self.process: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def boot(self) -> None:
        """Start it and wait until systemd reports the system running."""
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.BOOT_TIMEOUT
        while True:
            assert self.process.poll() is None, f"systemd-nspawn exited:\n{self._tail()}"
            assert time.monotonic() < deadline, f"never booted:\n{self._tail()}"
            self.leader = self.leader or self._child(self.process.pid)
            if self.leader:
                state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.5)

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    @staticmethod
    def _child(pid: int) -> int:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return 0
        return int(children[0]) if children else 0

    def run(self, *argv: str, check: bool = True, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`argv` inside the booted system (all its namespaces), clean environment."""
        assignments = [f"{k}={v}" for k, v in {"PATH": self.PATH, **(env or {})}.items()]
        done = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "--", "/usr/bin/env",
                               "-i", *assignments, *argv], capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}):\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def close(self) -> None:
        """Halt the booted system and wait for systemd-nspawn to exit."""
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
