"""OpenZiti identity files: load, save (0600, atomic) and the mTLS client context they give.

Format (libziti 0.29.3, openziti-protocol.md §5.5)::

    {"ztAPI": "https://ctrl:1280", "id": {"cert": PEM, "key": PEM, "ca": PEM bundle}}

Each of cert/key/ca may be inline PEM, `pem:<PEM>` or `file://<path>`. A key file (or an
identity file holding an inline key) that other users can read is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from tunneler.errors import IdentityError
from tunneler.fsutil import write_atomic

MAX_IDENTITY_FILE = 1024 * 1024


@dataclass(frozen=True)
class Identity:
    """An enrolled identity: controller URL, client certificate, key and CA bundle (PEM text)."""

    ztapi: str
    cert_pem: str
    key_pem: str
    ca_pem: str
    path: Path | None = None
    ztapis: tuple[str, ...] = ()  # every controller (HA), ztAPI first; () means (ztapi,)

    @property
    def controllers(self) -> tuple[str, ...]:
        """The controller URLs to try, in order: ztAPI, then the rest of ztAPIs."""
        return tuple(dict.fromkeys((self.ztapi, *self.ztapis)))

    @property
    def certificate(self) -> x509.Certificate:
        """The client certificate."""
        return x509.load_pem_x509_certificate(self.cert_pem.encode())

    @property
    def fingerprint(self) -> str:
        """Lowercase hex SHA-1 of the client certificate DER (OpenZiti's format)."""
        der = self.certificate.public_bytes(Encoding.DER)
        return hashlib.sha1(der, usedforsecurity=False).hexdigest()

    @property
    def name_hint(self) -> str:
        """The certificate's common name (the identity id), for logs before authentication."""
        names = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else "unknown"

    @property
    def controller_address(self) -> tuple[str, int]:
        """(host, port) of the controller."""
        url = urlsplit(self.ztapi)
        if not url.hostname:
            raise IdentityError(f"identity ztAPI {self.ztapi!r} has no host")
        return url.hostname, url.port or 443

    def client_ssl_context(self) -> ssl.SSLContext:
        """TLS 1.2+ client context: our certificate, trusting only the identity's CA bundle."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_verify_locations(cadata=self.ca_pem)
        except ssl.SSLError as exc:
            raise IdentityError(f"identity CA bundle is not valid PEM: {exc}") from exc
        _load_chain(context, self.cert_pem, self.key_pem)
        return context

    def to_json(self) -> dict[str, Any]:
        """The identity file's JSON object."""
        data: dict[str, Any] = {"ztAPI": self.ztapi, "id": {
            "cert": self.cert_pem, "key": self.key_pem, "ca": self.ca_pem}}
        if self.ztapis:
            data["ztAPIs"] = list(self.ztapis)
        return data


def _load_chain(context: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """Load cert + key from memory: through a 0600 temporary file removed at once."""
    with tempfile.TemporaryDirectory(prefix="tunneler-id-") as tmp:
        path = Path(tmp) / "chain.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(cert_pem.rstrip() + "\n" + key_pem.rstrip() + "\n")
        try:
            context.load_cert_chain(path)
        except ssl.SSLError as exc:
            raise IdentityError(f"identity certificate and key do not form a pair: {exc}") from exc


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXO):
        raise IdentityError(
            f"{path} is accessible by other users (mode {stat.S_IMODE(mode):o}); "
            f"fix it with: chmod 600 {path}")


def _resolve(value: Any, field: str, base: Path, *, secret: bool = False) -> str:
    if not isinstance(value, str) or not value:
        raise IdentityError(f"identity field id.{field} is missing or not a string")
    if value.startswith("pem:"):
        return value[4:]
    if value.startswith("file://"):
        path = (base / value[7:]).resolve()
        if secret:
            _check_private(path)
        try:
            return path.read_text()
        except OSError as exc:
            raise IdentityError(f"identity id.{field}: cannot read {path}: {exc}") from exc
    if "-----BEGIN" not in value:
        raise IdentityError(f"identity id.{field} is not PEM, pem: or file:// text")
    return value


def load_identity(path: str | Path) -> Identity:
    """Read and check an identity file.

    Raises:
        IdentityError: missing file, unsafe mode, bad JSON or missing fields; says how to fix.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_IDENTITY_FILE:
            raise IdentityError(f"{path} is larger than {MAX_IDENTITY_FILE} bytes")
        raw = path.read_text()
    except FileNotFoundError:
        raise IdentityError(f"identity file {path} not found; enroll first: "
                            f"tunneler enroll --jwt TOKEN.jwt --identity {path}") from None
    except OSError as exc:
        raise IdentityError(f"cannot read identity file {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise IdentityError(f"identity file {path} is not UTF-8 text: {exc.reason} at byte "
                            f"{exc.start}") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise IdentityError(f"identity file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("id"), dict):
        raise IdentityError(f"identity file {path} lacks the 'id' object")
    ztapi = data.get("ztAPI")
    if not isinstance(ztapi, str) or not ztapi.startswith(("https://", "http://")):
        raise IdentityError(f"identity file {path}: ztAPI must be the controller's https URL")
    section, base = data["id"], path.parent
    key = _resolve(section.get("key"), "key", base, secret=True)
    if not str(section.get("key", "")).startswith("file://"):
        _check_private(path)
    ztapis = data.get("ztAPIs") or []
    if not isinstance(ztapis, list) or not all(
            isinstance(url, str) and url.startswith(("https://", "http://")) for url in ztapis):
        raise IdentityError(f"identity file {path}: ztAPIs must be a list of controller URLs")
    identity = Identity(ztapi, _resolve(section.get("cert"), "cert", base), key,
                        _resolve(section.get("ca"), "ca", base), path, tuple(ztapis))
    try:
        identity.certificate  # noqa: B018 - parse now so a bad cert fails at load time
    except (ValueError, x509.InvalidVersion) as exc:   # InvalidVersion is no ValueError
        raise IdentityError(f"identity file {path}: certificate is not valid PEM: {exc}") from exc
    return identity


def save_identity(identity: Identity, path: str | Path) -> None:
    """Write atomically with mode 0600 (temporary file, fsync, rename); never world-readable."""
    write_atomic(Path(path), json.dumps(identity.to_json(), indent=2).encode(), dir_mode=0o755)
