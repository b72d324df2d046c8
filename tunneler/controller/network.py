"""The network directory (`tunneler network init DIR`): network.json, state.db and pki/.

Layout (docs/architecture.md): `network.json` {hostname, controller_port, router_port,
router_name, instance_id, oidc, access_token_seconds, refresh_token_seconds,
client_cert_seconds} (the last four optional: OIDC on, 30 min, 24 h, 365 d); `state.db`;
`pki/ca.pem|key`, `pki/ctrl.pem|key`, `pki/router.pem|key` (the first router) and
`pki/router-NAME.pem|key` (each router `network add-router` added; all routers are rows of
state.db, which every `serve`/`serve-router` process of the directory shares).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from tunneler.controller import pki
from tunneler.controller.api import ApiSettings
from tunneler.controller.oidc_api import OidcSettings
from tunneler.errors import ConfigError

ACCESS_TOKEN_RANGE = (10, 24 * 3600)
REFRESH_TOKEN_RANGE = (60, 90 * 24 * 3600)
CLIENT_CERT_RANGE = (30, 10 * 365 * 86400)
NETWORK_FILE = "network.json"
STATE_FILE = "state.db"
MAX_NETWORK_FILE_BYTES = 65536
ROUTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def check_router_name(name: str) -> str:
    """A router name: 1..63 letters, digits, `_`, `.` or `-`, starting with a letter or digit
    (it names the router's certificate files)."""
    if not ROUTER_NAME.fullmatch(name):
        raise ConfigError(f"router name {name!r}: use 1..63 letters, digits, '_', '.' or '-', "
                          "starting with a letter or digit")
    return name


@dataclass(frozen=True)
class NetworkConfig:
    """Contents of network.json."""

    hostname: str
    controller_port: int
    router_port: int
    router_name: str
    instance_id: str
    oidc: bool = True
    access_token_seconds: int = 30 * 60
    refresh_token_seconds: int = 24 * 3600
    client_cert_seconds: int = 365 * 86400

    @property
    def controller_url(self) -> str:
        return f"https://{self.hostname}:{self.controller_port}"


def _check_port(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(f"{name}: must be a port number 1..65535")
    return value


def _check_text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 253 or value != value.strip():
        raise ConfigError(f"{name}: must be a non-empty name without surrounding spaces")
    return value


def validate(data: Any) -> NetworkConfig:
    """Validate network.json content (or init arguments)."""
    if not isinstance(data, dict):
        raise ConfigError("network.json: must be a JSON object")
    fields = ("hostname", "controller_port", "router_port", "router_name", "instance_id")
    missing = [name for name in fields if name not in data]
    if missing:
        raise ConfigError(f"network.json: missing {', '.join(missing)}")
    return NetworkConfig(
        hostname=_check_text(data["hostname"], "hostname"),
        controller_port=_check_port(data["controller_port"], "controller_port"),
        router_port=_check_port(data["router_port"], "router_port"),
        router_name=_check_text(data["router_name"], "router_name"),
        instance_id=_check_text(data["instance_id"], "instance_id"),
        oidc=_check_bool(data.get("oidc", True), "oidc"),
        access_token_seconds=_check_seconds(data.get("access_token_seconds", 1800),
                                            "access_token_seconds", *ACCESS_TOKEN_RANGE),
        refresh_token_seconds=_check_seconds(data.get("refresh_token_seconds", 86400),
                                             "refresh_token_seconds", *REFRESH_TOKEN_RANGE),
        client_cert_seconds=_check_seconds(data.get("client_cert_seconds", 365 * 86400),
                                           "client_cert_seconds", *CLIENT_CERT_RANGE),
    )


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: must be true or false")
    return value


def _check_seconds(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name}: must be a number of seconds {low}..{high}")
    return value


@dataclass(frozen=True)
class NetworkDir:
    """Paths and configuration of one network directory."""

    root: Path
    config: NetworkConfig

    @property
    def pki(self) -> pki.Pki:
        return pki.Pki(self.root / "pki")

    @property
    def state_db(self) -> Path:
        return self.root / STATE_FILE

    def router_cert(self, router_name: str) -> str:
        """The PKI name of a router's TLS certificate: "router" for the one `init` made,
        "router-NAME" for the ones `add-router` made."""
        return "router" if router_name == self.config.router_name else f"router-{router_name}"

    def signing_key(self) -> rsa.RSAPrivateKey:
        """The controller TLS key, which signs enrollment JWTs (RS256)."""
        key = pki.load_key(self.pki.key("ctrl"))
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(f"{self.pki.key('ctrl')}: the controller key must be RSA")
        return key

    def api_settings(self) -> ApiSettings:
        """What the Edge Client API needs from the directory."""
        return ApiSettings(
            instance_id=self.config.instance_id, name=self.config.hostname,
            controller_url=self.config.controller_url, trust_domain=self.config.instance_id,
            ca_cert=pki.load_cert(self.pki.ca_cert), ca_key=pki.load_key(self.pki.ca_key),
            server_cert=pki.load_cert(self.pki.cert("ctrl")), oidc=self.oidc_settings(),
            client_cert_seconds=self.config.client_cert_seconds)

    def oidc_settings(self) -> OidcSettings | None:
        """The OIDC provider's settings, or None when the network serves legacy sessions only."""
        if not self.config.oidc:
            return None
        return OidcSettings(self.config.controller_url, self.config.access_token_seconds,
                            self.config.refresh_token_seconds, self.signing_key())


def load(root: Path) -> NetworkDir:
    """Open an existing network directory."""
    path = root / NETWORK_FILE
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_NETWORK_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{root}: not a network directory (no {NETWORK_FILE}); "
                          "run `tunneler network init` first") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    return NetworkDir(root, validate(data))


def prepare(root: Path) -> None:
    """Create `root` (0700) for a new network; refuse to touch an existing one."""
    if (root / NETWORK_FILE).exists() or (root / STATE_FILE).exists() or (root / "pki").exists():
        raise ConfigError(f"{root}: already holds a network; refusing to overwrite it")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o700)


def write_config(root: Path, config: NetworkConfig) -> None:
    """Write network.json atomically (the file marks a complete network directory)."""
    temporary = root / (NETWORK_FILE + ".tmp")
    temporary.write_text(json.dumps(asdict(config), indent=2) + "\n")
    temporary.replace(root / NETWORK_FILE)
