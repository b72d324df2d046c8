"""requirements.lock pins everything `make` installs, and this environment is exactly it.

`make` installs with PIP_CONSTRAINT=requirements.lock (scripts/lock.sh regenerates it), so a
fresh machine gets what CI tested. These tests catch a dependency added to pyproject.toml
without re-locking, a pin that contradicts pyproject.toml, and a lock that misses a
transitive dependency.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _lock() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _declared() -> list[Requirement]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lines = [*config["build-system"]["requires"], *config["project"]["dependencies"]]
    for extra in config["project"]["optional-dependencies"].values():
        lines += [line for line in extra if not line.startswith("tunneler[")]
    return [Requirement(line) for line in lines]


def test_every_declared_dependency_is_pinned_to_a_version_it_allows() -> None:
    pins = _lock()
    for requirement in _declared():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            f"requirements.lock pins {name}=={pins[name]}, pyproject.toml wants {requirement}"


def _closure(roots: list[Requirement]) -> set[str]:
    """Every distribution the requirements pull in, following installed metadata."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker is not None and not requirement.marker.evaluate(
                {"extra": ""})):
            continue
        seen.add(name)
        for line in metadata.requires(name) or []:
            child = Requirement(line)
            extras = requirement.extras or {""}
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in extras):
                todo.append(child)
    return seen


def test_the_lock_is_complete_and_this_environment_is_exactly_it() -> None:
    pins = _lock()
    wanted = _closure([r for r in _declared() if r.name != "setuptools"])
    assert wanted - set(pins) == set(), "transitive dependencies missing from the lock"
    for name in wanted:
        assert Version(metadata.version(name)) == pins[name], \
            f"installed {name} {metadata.version(name)}, locked {pins[name]}: run `make deps`"
