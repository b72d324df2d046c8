"""Layering rules, checked on the source (style.md §5.3): sans-IO cores, one kernel package.

- Cores (protocol logic, parsers, tables, planners) import no I/O, clock or thread modules:
  bytes in, events out, time passed in.
- Only `tunneler/tun` talks to the kernel's network configuration (fcntl ioctls, netlink);
  subprocesses are run only where a system tool is the interface (`dns/system`, `nft` in
  `tun/redirect`, the demo).
- The top-level asset folders hold no Python; every module says what it is for.
- Every exception class is defined in `errors.py`, which draws the hierarchy.
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

from tunneler import errors

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "tunneler"

CORES = [
    "channel/message.py", "channel/connection.py", "edge/messages.py", "edge/appdata.py",
    "edge/secretstream.py", "configs.py", "jwt.py", "packet/parse.py", "packet/build.py",
    "packet/checksum.py", "nat.py", "intercept.py", "dns/pool.py", "dns/answer.py",
    "tun/route_plan.py", "router/core.py", "router/circuits.py", "router/frames.py",
    "router/terminators.py", "client/targets.py", "client/backoff.py", "client/services.py",
    "dnsname.py", "counters.py", "overlay.py",
]
NO_IO = {"asyncio", "socket", "ssl", "fcntl", "subprocess", "time", "select", "threading",
         "uvloop", "aiohttp", "pyroute2"}
ONLY_IN = {
    "fcntl": ("tun/",),
    "pyroute2": ("tun/",),
    "subprocess": ("dns/system.py", "tun/redirect.py", "demo/"),
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


def test_exception_classes_live_in_errors_py() -> None:
    """One home for the hierarchy (errors.py draws it): no module defines its own exception."""
    exceptions = {name for name, value in vars(builtins).items()
                  if isinstance(value, type) and issubclass(value, BaseException)}
    exceptions |= {name for name, value in vars(errors).items()
                   if isinstance(value, type) and issubclass(value, BaseException)}
    offenders = []
    for path in _modules():
        if path == PACKAGE / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            bases = [b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "")
                     for b in node.bases] if isinstance(node, ast.ClassDef) else []
            if any(base in exceptions for base in bases):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert offenders == [], offenders


# ---- import direction (issue 10, item 6) ------------------------------------------------------
# Every `tunneler` import counts, also those under `if TYPE_CHECKING:` (a type-only import is
# still a dependency between modules).

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in _modules()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _within(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@pytest.mark.parametrize(("importer", "forbidden"), [
    ("tunneler.ops", ("tunneler.daemon", "tunneler.daemon_view", "tunneler.host")),
    ("tunneler.dns", ("tunneler.tun", "tunneler.hostconfig")),
    ("tunneler.tun", ("tunneler.dns", "tunneler.hostconfig")),
    ("tunneler.journal", ("tunneler.dns", "tunneler.tun", "tunneler.hostconfig")),
    ("tunneler.hostconfig.config", ("tunneler.dns", "tunneler.hostconfig.linux")),
    ("tunneler.daemon_view", ("tunneler.daemon",)),
    # the engine reaches the overlay through tunneler.overlay and counts into tunneler.counters
    ("tunneler.engine", ("tunneler.ops", "tunneler.client", "tunneler.daemon",
                         "tunneler.daemon_view", "tunneler.host")),
    # below the data path: the seams themselves import no side of them
    ("tunneler.overlay", ("tunneler.client", "tunneler.engine", "tunneler.ops")),
    ("tunneler.counters", ("tunneler.client", "tunneler.engine", "tunneler.ops")),
    ("tunneler.bridges", ("tunneler.client", "tunneler.engine", "tunneler.ops")),
])
def test_imports_point_one_way(importer: str, forbidden: tuple[str, ...]) -> None:
    bad = sorted(f"{module} imports {dep}" for module, deps in _graph().items()
                 if _within(module, importer) for dep in deps if _within(dep, *forbidden))
    assert bad == [], bad


def test_no_import_cycle_anywhere_in_the_package() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module):], module]
        if module in done:
            return None
        for dep in sorted(graph[module]):
            if (cycle := visit(dep, [*path, module])) is not None:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        assert cycle is None, " -> ".join(cycle or ())
