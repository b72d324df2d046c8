"""Layering rules, checked on the source (style.md §5.3): sans-IO cores, one kernel package.

- Cores (protocol logic, parsers, tables, planners) import no I/O, clock or thread modules:
  bytes in, events out, time passed in.
- Only `tunneler/tun` talks to the kernel's network configuration (fcntl ioctls, netlink);
  subprocesses are run only where a system tool is the interface (`dns/system`, the demo).
- The top-level asset folders hold no Python; every module says what it is for.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "tunneler"

CORES = [
    "channel/message.py", "channel/connection.py", "edge/messages.py", "edge/appdata.py",
    "edge/secretstream.py", "configs.py", "jwt.py", "packet/parse.py", "packet/build.py",
    "packet/checksum.py", "nat.py", "intercept.py", "dns/pool.py", "dns/answer.py",
    "tun/route_plan.py", "router/core.py", "router/circuits.py", "router/frames.py",
    "router/terminators.py", "client/targets.py", "client/backoff.py", "client/services.py",
    "dnsname.py",
]
NO_IO = {"asyncio", "socket", "ssl", "fcntl", "subprocess", "time", "select", "threading",
         "uvloop", "aiohttp", "pyroute2"}
ONLY_IN = {
    "fcntl": ("tun/",),
    "pyroute2": ("tun/",),
    "subprocess": ("dns/system.py", "demo/"),
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("core", CORES)
def test_cores_are_sans_io(core: str) -> None:
    forbidden = _imports(PACKAGE / core) & NO_IO
    assert not forbidden, f"{core} is a sans-IO core; pass bytes and `now` instead of {forbidden}"


def test_kernel_and_process_access_stay_in_their_modules() -> None:
    for path in _modules():
        relative = path.relative_to(PACKAGE).as_posix()
        for module, allowed in ONLY_IN.items():
            if module in _imports(path):
                assert relative.startswith(allowed), f"{relative} imports {module}"


def test_asset_folders_hold_no_python() -> None:
    for folder in ("dns", "tun", "policies", "systemd", "docker"):
        assert not list((ROOT / folder).rglob("*.py")), f"{folder}/ is for non-code assets"


def test_every_module_has_a_docstring() -> None:
    missing = [p.relative_to(ROOT).as_posix() for p in _modules()
               if ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, missing


def test_no_shell_anywhere() -> None:
    """Commands are argv lists: no `shell=True`, `os.system` or `os.popen` (security.md SEC-32)."""
    offenders = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "shell":
                offenders.append(f"{path.relative_to(ROOT)}:{node.value.lineno} shell=")
            elif isinstance(node, ast.Attribute) and node.attr in ("system", "popen") and \
                    isinstance(node.value, ast.Name) and node.value.id == "os":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} os.{node.attr}")
    assert offenders == []
