"""Apply files: the minimal example, error paths, idempotent re-apply, entities left alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tunneler.controller import policyfile
from tunneler.controller.store import Store
from tunneler.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = """
identities:
  - {name: laptop, roleAttributes: [llm-clients]}
  - {name: llm-host, roleAttributes: [llm-hosts]}
services:
  - name: llm
    encryptionRequired: true
    roleAttributes: [llm]
    configs:
      intercept.v1:
        {protocols: [tcp], addresses: [llm.private.test], portRanges: [{low: 8000, high: 8000}]}
      host.v1: {protocol: tcp, address: 127.0.0.1, port: 8000}
servicePolicies:
  - {name: llm-dial, type: Dial, identityRoles: ["#llm-clients"], serviceRoles: ["@llm"]}
  - {name: llm-bind, type: Bind, identityRoles: ["#llm-hosts"], serviceRoles: ["#llm"]}
"""


@pytest.fixture(name="store")
def _store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "state.db")
    yield store
    store.close()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "apply.yaml"
    path.write_text(text)
    return path


def test_minimal_file_applies_and_reapplies_idempotently(tmp_path: Path, store: Store) -> None:
    spec = policyfile.load(_write(tmp_path, MINIMAL))
    first = policyfile.apply(store, spec)
    assert [status for _, _, status in first] == ["created"] * 5
    changed_at = store.last_change_at()
    second = policyfile.apply(store, policyfile.load(_write(tmp_path, MINIMAL)))
    assert [status for _, _, status in second] == ["unchanged"] * 5
    assert store.last_change_at() == changed_at
    laptop, host, llm = (store.identity_by_name("laptop"), store.identity_by_name("llm-host"),
                         store.service_by_name("llm"))
    assert laptop and host and llm
    assert store.is_permitted(laptop.id, llm.id, "Dial")
    assert not store.is_permitted(laptop.id, llm.id, "Bind")
    assert store.is_permitted(host.id, llm.id, "Bind")
    assert llm.configs["host.v1"] == {"protocol": "tcp", "address": "127.0.0.1", "port": 8000}


def test_entities_absent_from_the_file_are_left_alone(tmp_path: Path, store: Store) -> None:
    policyfile.apply(store, policyfile.load(_write(tmp_path, MINIMAL)))
    changed = policyfile.parse_document({"identities": [{"name": "laptop",
                                                         "roleAttributes": ["other"]}]})
    assert policyfile.apply(store, changed) == [("identity", "laptop", "updated")]
    assert store.identity_by_name("llm-host") is not None
    assert store.service_by_name("llm") is not None and len(store.policies()) == 2


def test_prune_deletes_only_the_service_policies_the_file_does_not_name(
        tmp_path: Path, store: Store) -> None:
    policyfile.apply(store, policyfile.load(_write(tmp_path, MINIMAL)))
    laptop, llm = store.identity_by_name("laptop"), store.service_by_name("llm")
    assert laptop and llm
    without_dial = policyfile.parse_document({"servicePolicies": [
        {"name": "llm-bind", "type": "Bind", "identityRoles": ["#llm-hosts"],
         "serviceRoles": ["#llm"]}]})
    changes = policyfile.apply(store, without_dial, prune=True)
    assert changes == [("servicePolicy", "llm-bind", "unchanged"),
                       ("servicePolicy", "llm-dial", "deleted")]
    assert [p.name for p in store.policies()] == ["llm-bind"]
    assert not store.is_permitted(laptop.id, llm.id, "Dial")
    assert store.identity_by_name("laptop") and store.service_by_name("llm")  # never pruned
    assert policyfile.apply(store, without_dial, prune=True) == [
        ("servicePolicy", "llm-bind", "unchanged")]


@pytest.mark.parametrize("path", sorted((ROOT / "policies").glob("*.yaml")))
def test_example_policy_files_are_valid(path: Path, store: Store) -> None:
    changes = policyfile.apply(store, policyfile.load(path))
    assert changes and all(status == "created" for _, _, status in changes)


def _doc() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(MINIMAL)
    return loaded


def _set(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    target: Any = doc
    keys = dotted.split("/")
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    last = keys[-1]
    target[int(last) if isinstance(target, list) else last] = value
    return doc


@pytest.mark.parametrize(("where", "value", "message"), [
    ("services/0/configs/intercept.v1/portRanges/0/low", 70000,
     "services[0].configs.intercept.v1.portRanges[0].low: must be an integer 0..65535"),
    ("services/0/configs/host.v1/port", "80", "services[0].configs.host.v1.port: must be"),
    ("services/0/configs/bogus.v1", {}, "services[0].configs.bogus.v1: unknown field"),
    ("services/0/encryptionRequired", "yes", "services[0].encryptionRequired: must be true"),
    ("servicePolicies/1/type", "Dail", "servicePolicies[1].type: must be one of Dial, Bind"),
    ("servicePolicies/0/identityRoles/0", "llm-clients",
     "servicePolicies[0].identityRoles[0]: must be '#attribute', '@name' or '#all'"),
    ("servicePolicies/0/semantic", "Some", "servicePolicies[0].semantic: must be one of"),
    ("identities/1/name", "laptop", "identities[1].name: duplicate name 'laptop'"),
    ("identities/0/roles", ["x"], "identities[0].roles: unknown field"),
    ("identities/0/roleAttributes", "x", "identities[0].roleAttributes: must be a list"),
    ("identities/0/name", "", "identities[0].name: must be 1..255 characters, not blank"),
    ("services", {"name": "x"}, "services: must be a list"),
    ("extra", 1, "(top level).extra: unknown field"),
])
def test_errors_name_the_bad_field(where: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        policyfile.parse_document(_set(_doc(), where, value))
    assert str(excinfo.value).startswith(message)


def test_missing_required_policy_field() -> None:
    doc = _doc()
    del doc["servicePolicies"][0]["serviceRoles"]
    with pytest.raises(ConfigError, match=r"^servicePolicies\[0\]\.serviceRoles: is required"):
        policyfile.parse_document(doc)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        policyfile.load(_write(tmp_path, "identities: [\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        policyfile.load(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="larger than"):
        policyfile.load(_write(tmp_path, "#" * (policyfile.MAX_FILE_BYTES + 1)))
    with pytest.raises(ConfigError, match=r"apply\.yaml: \(top level\): must be a mapping"):
        policyfile.load(_write(tmp_path, "- 1\n"))
    assert policyfile.load(_write(tmp_path, "")) == policyfile.ApplyFile((), (), ())


# -- bounded by structure (security.md SEC-06, SEC-07) ---------------------------------------

ALIAS_BOMB = "services:\n  - name: bomb\n    configs:\n      host.v2:\n" + "".join(
    f"        l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else 'x'] * 9)}]\n" for i in range(9))


def test_yaml_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    assert len(ALIAS_BOMB) < 700
    with pytest.raises(ConfigError, match=r"line 10, column \d+: more than 100000 YAML nodes once "
                                          r"aliases are expanded"):
        policyfile.load(_write(tmp_path, ALIAS_BOMB))
    with pytest.raises(ConfigError, match="refers to a node that contains it"):
        policyfile.load(_write(tmp_path, "identities: &x [{name: a, roleAttributes: *x}]\n"))


def test_plain_aliases_as_safe_dump_writes_them_are_fine(tmp_path: Path) -> None:
    shared = {"protocols": ["tcp"], "addresses": ["a.test"], "portRanges": [{"low": 1, "high": 2}]}
    doc = {"services": [{"name": "a", "configs": {"intercept.v1": shared}},
                        {"name": "b", "configs": {"intercept.v1": shared}}]}
    text = yaml.safe_dump(doc)
    assert "*id001" in text
    spec = policyfile.load(_write(tmp_path, text))
    assert spec.services[1].configs["intercept.v1"]["addresses"] == ["a.test"]


@pytest.mark.parametrize(("text", "message"), [
    ("[" + "0," * 1001 + "]", "more than 1000 YAML nodes"),
    ("[" * 200 + "]" * 200, "nested deeper than 64 levels"),
    ("[" * 400_000 + "]" * 400_000, "nested deeper than 64 levels"),
    ("a: &a [[[[[[[[[[1]]]]]]]]]]\nb: &b [*a, [[[[[[[[[[*a]]]]]]]]]]]\n" +
     "".join(f"c{i}: &c{i} [[[[[[[[[[*{'c' + str(i - 1) if i else 'b'}]]]]]]]]]]\n"
             for i in range(6)), "nested deeper than 64 levels"),
])
def test_yaml_node_count_and_depth_are_capped(tmp_path: Path, text: str, message: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policyfile, "MAX_NODES", 1000)  # the real cap (100,000) takes 5 s
    with pytest.raises(ConfigError, match=message):
        policyfile.load(_write(tmp_path, text))


def test_stored_configs_are_capped_in_size_and_depth_with_the_path() -> None:
    deep: Any = "x"
    for _ in range(40):
        deep = {"k": deep}
    doc = _set(_doc(), "services/0/configs/host.v2", {"a": deep})
    with pytest.raises(ConfigError, match=r"^services\[0\]\.configs\.host\.v2\.a(\.k){32}: "
                                          r"nested deeper than 32 levels"):
        policyfile.parse_document(doc)
    big = _set(_doc(), "services/0/configs/host.v2", {"blob": "y" * policyfile.MAX_CONFIG_BYTES})
    with pytest.raises(ConfigError, match=r"^services\[0\]\.configs\.host\.v2: \d+ bytes as "
                                          r"JSON, more than 65536"):
        policyfile.parse_document(big)


@pytest.mark.parametrize("name", ["", "   ", "a\nb", "tab\there", "nul\x00", "x" * 256])
def test_names_are_one_rule_for_apply_and_enroll_token(name: str) -> None:
    with pytest.raises(ConfigError, match=r"must be 1\.\.255 characters, not blank, without "
                                          r"control characters"):
        policyfile.entity_name(name, "identity name")
    with pytest.raises(ConfigError, match=r"^identities\[0\]\.name: must be 1\.\.255"):
        policyfile.parse_document(_set(_doc(), "identities/0/name", name))
