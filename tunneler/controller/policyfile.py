"""`network apply`: load, validate and idempotently apply a YAML file of network entities.

Format (OpenZiti entity field names; every section optional)::

    identities:
      - {name: laptop, roleAttributes: [llm-clients]}
    services:
      - name: llm
        encryptionRequired: true          # default true
        roleAttributes: [llm]
        configs: {intercept.v1: {...}, host.v1: {...}}
    servicePolicies:
      - {name: llm-dial, type: Dial, semantic: AnyOf, identityRoles: ["#llm-clients"],
         serviceRoles: ["@llm"]}

Entities are upserted by name; entities absent from the file are left alone. Errors name the
path of the bad field (`services[0].configs.intercept.v1.portRanges[0].low: ...`).

Input is bounded by structure as well as by bytes (security.md SEC-06, SEC-07): a document has
at most `MAX_NODES` nodes nested at most `MAX_DEPTH` deep *counted with its aliases expanded*
(a 600-byte file of nested aliases expands to gigabytes; plain aliases, as `yaml.safe_dump`
writes them, stay fine), and each stored config, parsed or not, is at
most `MAX_CONFIG_BYTES` of JSON nested at most `MAX_CONFIG_DEPTH` deep. Names are 1..255
characters, not blank, without control characters (the same rule for `network enroll-token`).
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunneler.configs import parse_config
from tunneler.controller.models import POLICY_TYPES, ROLE_ALL, SEMANTICS
from tunneler.controller.store import KNOWN_CONFIG_TYPES, Store
from tunneler.errors import ConfigError

MAX_FILE_BYTES = 1 << 20
MAX_NAME_LENGTH = 255
MAX_NODES = 100_000
MAX_DEPTH = 64
MAX_CONFIG_BYTES = 64 * 1024
MAX_CONFIG_DEPTH = 32


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that caps the document as it would be once its aliases are expanded.

    Each composed node records its expanded size and depth (an alias counts the whole node it
    names), so a few bytes of nested aliases are refused before anything expands them; an
    alias to a node that encloses it (a recursive document) is refused too.
    """

    def __init__(self, stream: bytes) -> None:
        super().__init__(stream)
        self._expanded: dict[int, tuple[int, int]] = {}  # id(node) -> (size, depth)
        self._open = 0  # nodes being composed (stops deep nesting before it recurses deeply)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        where = f"line {event.start_mark.line + 1}, column {event.start_mark.column + 1}"
        if self._open >= MAX_DEPTH:
            raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels")
        self._open += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._open -= 1
        if node is None or isinstance(event, yaml.AliasEvent):
            return node
        size, depth = 1, 1
        for child in _children(node):
            expanded = self._expanded.get(id(child))
            if expanded is None:
                raise ConfigError(f"{where}: a YAML alias refers to a node that contains it")
            size, depth = size + expanded[0], max(depth, expanded[1] + 1)
        if size > MAX_NODES:
            raise ConfigError(f"{where}: more than {MAX_NODES} YAML nodes once aliases are "
                              "expanded")
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels")
        self._expanded[id(node)] = (size, depth)
        return node


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


@dataclass(frozen=True)
class IdentitySpec:
    name: str
    role_attributes: tuple[str, ...]


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    encryption_required: bool
    role_attributes: tuple[str, ...]
    configs: Mapping[str, Any]


@dataclass(frozen=True)
class PolicySpec:
    name: str
    type: str
    semantic: str
    identity_roles: tuple[str, ...]
    service_roles: tuple[str, ...]


@dataclass(frozen=True)
class ApplyFile:
    """A validated apply file."""

    identities: tuple[IdentitySpec, ...]
    services: tuple[ServiceSpec, ...]
    policies: tuple[PolicySpec, ...]


def _fields(obj: object, path: str, allowed: Sequence[str], required: Sequence[str],
            ) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{path}: must be a mapping")
    for key in obj:
        if key not in allowed:
            raise ConfigError(f"{path}.{key}: unknown field (expected one of {', '.join(allowed)})")
    for key in required:
        if key not in obj:
            raise ConfigError(f"{path}.{key}: is required")
    return obj


def entity_name(obj: object, path: str) -> str:
    """A valid identity/service/policy name or role.

    Raises:
        ConfigError: not 1..255 characters, blank, or with a control character.
    """
    if not isinstance(obj, str) or not obj.strip() or len(obj) > MAX_NAME_LENGTH or \
            any(unicodedata.category(char) == "Cc" for char in obj):
        raise ConfigError(f"{path}: must be 1..{MAX_NAME_LENGTH} characters, not blank, "
                          "without control characters")
    return obj


def _bounded(obj: object, path: str, depth: int = 0) -> None:
    """Raise ConfigError (with the path of the offending field) if `obj` nests too deeply."""
    if depth > MAX_CONFIG_DEPTH:
        raise ConfigError(f"{path}: nested deeper than {MAX_CONFIG_DEPTH} levels")
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            _bounded(value, f"{path}.{key}", depth + 1)
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            _bounded(value, f"{path}[{index}]", depth + 1)


def _strings(obj: object, path: str, *, role: bool = False) -> tuple[str, ...]:
    if obj is None:
        return ()
    if not isinstance(obj, list):
        raise ConfigError(f"{path}: must be a list")
    values = tuple(entity_name(value, f"{path}[{index}]") for index, value in enumerate(obj))
    for index, value in enumerate(values):
        if role and value != ROLE_ALL and (value[0] not in "#@" or len(value) < 2):
            raise ConfigError(f"{path}[{index}]: must be '#attribute', '@name' or '#all'")
    return values


def _choice(obj: object, path: str, choices: Sequence[str]) -> str:
    if obj not in choices:
        raise ConfigError(f"{path}: must be one of {', '.join(choices)}")
    return str(obj)


def _bool(obj: object, path: str) -> bool:
    if not isinstance(obj, bool):
        raise ConfigError(f"{path}: must be true or false")
    return obj


def _identity(obj: object, path: str) -> IdentitySpec:
    fields = _fields(obj, path, ("name", "roleAttributes"), ("name",))
    return IdentitySpec(entity_name(fields["name"], f"{path}.name"),
                        _strings(fields.get("roleAttributes"), f"{path}.roleAttributes"))


def _configs(obj: object, path: str) -> Mapping[str, Any]:
    fields = _fields(obj if obj is not None else {}, path, KNOWN_CONFIG_TYPES, ())
    for type_name, config in fields.items():
        where = f"{path}.{type_name}"
        _bounded(config, where)
        try:
            size = len(json.dumps(config))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: not representable as JSON: {exc}") from exc
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{where}: {size} bytes as JSON, more than {MAX_CONFIG_BYTES}")
        parse_config(type_name, config, where)
    return dict(fields)


def _service(obj: object, path: str) -> ServiceSpec:
    fields = _fields(obj, path, ("name", "encryptionRequired", "roleAttributes", "configs"),
                     ("name",))
    return ServiceSpec(
        name=entity_name(fields["name"], f"{path}.name"),
        encryption_required=_bool(fields.get("encryptionRequired", True),
                                  f"{path}.encryptionRequired"),
        role_attributes=_strings(fields.get("roleAttributes"), f"{path}.roleAttributes"),
        configs=_configs(fields.get("configs"), f"{path}.configs"),
    )


def _policy(obj: object, path: str) -> PolicySpec:
    allowed = ("name", "type", "semantic", "identityRoles", "serviceRoles")
    fields = _fields(obj, path, allowed, ("name", "type", "identityRoles", "serviceRoles"))
    return PolicySpec(
        name=entity_name(fields["name"], f"{path}.name"),
        type=_choice(fields["type"], f"{path}.type", POLICY_TYPES),
        semantic=_choice(fields.get("semantic", "AnyOf"), f"{path}.semantic", SEMANTICS),
        identity_roles=_strings(fields["identityRoles"], f"{path}.identityRoles", role=True),
        service_roles=_strings(fields["serviceRoles"], f"{path}.serviceRoles", role=True),
    )


def _section(document: Mapping[str, Any], key: str, parse: Any) -> tuple[Any, ...]:
    items = document.get(key)
    if items is None:
        return ()
    if not isinstance(items, list):
        raise ConfigError(f"{key}: must be a list")
    parsed = tuple(parse(item, f"{key}[{index}]") for index, item in enumerate(items))
    seen: set[str] = set()
    for index, spec in enumerate(parsed):
        if spec.name in seen:
            raise ConfigError(f"{key}[{index}].name: duplicate name {spec.name!r}")
        seen.add(spec.name)
    return parsed


def parse_document(document: object) -> ApplyFile:
    """Validate a decoded apply document.

    Raises:
        ConfigError: naming the path of the first bad field.
    """
    if document is None:
        document = {}
    fields = _fields(document, "(top level)", ("identities", "services", "servicePolicies"), ())
    return ApplyFile(_section(fields, "identities", _identity),
                     _section(fields, "services", _service),
                     _section(fields, "servicePolicies", _policy))


def load(path: Path) -> ApplyFile:
    """Read and validate an apply file (YAML or JSON, at most 1 MiB)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        return parse_document(yaml.load(data, Loader=_BoundedLoader))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def apply(store: Store, spec: ApplyFile, *, prune: bool = False) -> list[tuple[str, str, str]]:
    """Upsert every entity of `spec`; returns (kind, name, created/updated/unchanged/deleted)
    rows. With `prune`, service policies the file does not name are deleted (identities are
    only ever removed by `network delete-identity`, services stay)."""
    changes = [("identity", i.name, store.upsert_identity(i.name, i.role_attributes))
               for i in spec.identities]
    changes += [("service", s.name, store.upsert_service(
        s.name, encryption_required=s.encryption_required, role_attributes=s.role_attributes,
        configs=s.configs)) for s in spec.services]
    changes += [("servicePolicy", p.name, store.upsert_policy(
        p.name, kind=p.type, semantic=p.semantic, identity_roles=p.identity_roles,
        service_roles=p.service_roles)) for p in spec.policies]
    if prune:
        named = {p.name for p in spec.policies}
        changes += [("servicePolicy", p.name, "deleted") for p in store.policies()
                    if p.name not in named and store.delete_policy(p.name)]
    return changes
