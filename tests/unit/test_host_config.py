"""run-host: which config a service is hosted with, and the Bind options derived from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunneler.client.ctrl import ServiceInfo
from tunneler.configs import parse_host
from tunneler.edge.messages import PRECEDENCE_DEFAULT, PRECEDENCE_REQUIRED
from tunneler.errors import ConfigError
from tunneler.host import bind_options, host_config, identity_paths


def _service(configs: dict[str, object]) -> ServiceInfo:
    return ServiceInfo("id", "svc", frozenset({"Bind"}), True, dict(configs))


def test_host_v1_preferred_and_legacy_server_config_converted() -> None:
    both = _service({"host.v1": {"protocol": "tcp", "address": "a", "port": 1},
                     "ziti-tunneler-server.v1": {"hostname": "b", "port": 2}})
    assert host_config(both) == parse_host({"protocol": "tcp", "address": "a", "port": 1})
    legacy = host_config(_service({"ziti-tunneler-server.v1": {"hostname": "b", "port": 2}}))
    assert legacy is not None and (legacy.protocol, legacy.address, legacy.port) == ("tcp", "b", 2)


def test_invalid_or_missing_config_is_skipped() -> None:
    assert host_config(_service({})) is None
    assert host_config(_service({"host.v1": {"protocol": "icmp"}})) is None


def test_bind_options_from_listen_options() -> None:
    config = parse_host({"protocol": "tcp", "address": "a", "port": 1, "listenOptions": {
        "cost": 7, "precedence": "required", "identity": "$tunneler_id.name-x"}})
    options = bind_options(config, "host1")
    assert (options.cost, options.precedence, options.terminator_identity) == (
        7, PRECEDENCE_REQUIRED, "host1-x")
    edge = parse_host({"protocol": "tcp", "address": "a", "port": 1,
                       "listenOptions": {"bindUsingEdgeIdentity": True}})
    assert bind_options(edge, "host1").terminator_identity == "host1"
    plain = bind_options(parse_host({"protocol": "tcp", "address": "a", "port": 1}), "h")
    assert (plain.cost, plain.precedence, plain.terminator_identity) == (
        0, PRECEDENCE_DEFAULT, None)


def test_identity_paths(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text("{}")
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("")
    assert identity_paths(["x.json"], str(tmp_path)) == [
        Path("x.json"), tmp_path / "a.json", tmp_path / "b.json"]
    with pytest.raises(ConfigError, match="no identity"):
        identity_paths([], None)
    with pytest.raises(ConfigError, match="not a directory"):
        identity_paths([], str(tmp_path / "missing"))
