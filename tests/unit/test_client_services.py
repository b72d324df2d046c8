"""Service list diffs reported to subscribers."""

from __future__ import annotations

from structlog.testing import capture_logs

from tunneler.client.ctrl import ServiceInfo
from tunneler.client.services import config_or_warn, diff_services
from tunneler.configs import host_of, parse_host


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


def test_config_or_warn_turns_a_bad_config_into_none_and_a_warning() -> None:
    good = _service("a")
    expected = parse_host(good.configs["host.v1"])
    assert config_or_warn(good, host_of, "test.config_invalid") == expected
    bad = ServiceInfo(id="id-b", name="b", permissions=frozenset({"Bind"}),
                      encryption_required=True, configs={"host.v1": {"protocol": "icmp"}})
    with capture_logs() as logs:
        assert config_or_warn(bad, host_of, "test.config_invalid") is None
    assert [(e["event"], e["service"], e["log_level"]) for e in logs] == \
        [("test.config_invalid", "b", "warning")]
    assert logs[0]["error"].startswith("b.host.v1")
