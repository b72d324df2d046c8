"""Privileged tests: real TUN devices, routes and resolver files inside throwaway namespaces.

Every test in this directory gets the ``privileged`` marker. The suite needs root,
``/dev/net/tun`` and ``ip netns``; a probe decides once per session, and when something is
missing every test here is skipped with the reason. Namespaces left by killed runs are removed
before the first test, and the ``netns_pool`` fixture removes the ones each test creates.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import realhost
from tests.support.netns import netns_pool  # noqa: F401  (fixture)
from tunneler.demo import netns

_HERE = Path(__file__).resolve().parent


@functools.cache
def skip_reason() -> str | None:
    """Why the privileged suite cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN) for TUN devices and namespaces"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (modprobe tun, or pass --device /dev/net/tun)"
    if shutil.which("ip") is None:
        return "the ip binary is missing (apt-get install iproute2)"
    probe = f"tt-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                          check=False)
    if made.returncode != 0:
        return f"`ip netns add` does not work here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.privileged)
            reason = skip_reason()
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"privileged: {reason}"))


@pytest.fixture(scope="session", autouse=True)
def _remove_stale_namespaces() -> Iterator[None]:
    if skip_reason() is None:
        netns.remove_stale()
    yield


@pytest.fixture(scope="session")
def debootstrap_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the session's debootstrap runs keep the packages they downloaded, so the second
    root fetches only what the first did not have. Removed at the end of the session."""
    cache = tmp_path_factory.mktemp("debootstrap-cache")
    try:
        yield cache
    finally:
        shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="session")
def debian_base(tmp_path_factory: pytest.TempPathFactory,
                debootstrap_cache: Path) -> Iterator[Path]:
    """A minimal Debian root (debootstrap, once per session): the base of test images.
    Removed at the end of the session."""
    reason = realhost.missing_tools("debootstrap")
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("roots")
    try:
        yield realhost.debian_root(work / "base", cache=debootstrap_cache)
    finally:
        shutil.rmtree(work, ignore_errors=True)
