"""Service list diffs reported to subscribers."""

from __future__ import annotations

from tunneler.client.ctrl import ServiceInfo
from tunneler.client.services import diff_services


def _service(name: str, port: int = 80, perms: tuple[str, ...] = ("Dial",)) -> ServiceInfo:
    return ServiceInfo(id=f"id-{name}", name=name, permissions=frozenset(perms),
                       encryption_required=True,
                       configs={"host.v1": {"protocol": "tcp", "address": "x", "port": port}})


def test_added_changed_removed() -> None:
    old = {"a": _service("a"), "b": _service("b"), "c": _service("c")}
    new = {"a": _service("a"), "b": _service("b", port=81), "d": _service("d")}
    changes = diff_services(old, new)
    assert [s.name for s in changes.added] == ["d"]
    assert [s.name for s in changes.changed] == ["b"]
    assert [s.name for s in changes.removed] == ["c"]
    assert changes


def test_permission_change_is_a_change_and_no_change_is_falsy() -> None:
    old = {"a": _service("a")}
    assert diff_services(old, {"a": _service("a", perms=("Dial", "Bind"))}).changed
    assert not diff_services(old, {"a": _service("a")})
