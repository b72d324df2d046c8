"""Controller state in SQLite (`DIR/state.db`): one connection, WAL, used from one thread.

`network apply` / `network enroll-token` open their own connection while `network serve` runs;
WAL plus `BEGIN IMMEDIATE` write transactions keep that safe. Enrollment tokens are consumed
in one transaction (delete enrollment + create authenticator), so exactly one of several
concurrent attempts succeeds. `Store` implements `tunneler.router.authority.RouterAuthority`.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography import x509

from tunneler.configs import HOST_V1, INTERCEPT_V1, TUNNELER_CLIENT_V1, TUNNELER_SERVER_V1
from tunneler.controller.models import (
    ApiSession,
    Authenticator,
    Identity,
    Permissions,
    Router,
    Service,
    ServicePolicy,
    permissions,
)
from tunneler.controller.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION
from tunneler.errors import ConfigError, EnrollmentError
from tunneler.router.authority import ApiSessionInfo, SessionInfo

API_SESSION_SECONDS = 30 * 60
AUTH_CERT = "cert"
AUTH_OIDC = "oidc"
BUSY_TIMEOUT_SECONDS = 10.0
KNOWN_CONFIG_TYPES = (INTERCEPT_V1, HOST_V1, TUNNELER_CLIENT_V1, TUNNELER_SERVER_V1, "host.v2")

Issuer = Callable[[Identity], tuple[str, str]]  # identity -> (fingerprint, cert PEM)


def _not_after(pem: str) -> float | None:
    """A certificate's expiry, epoch seconds (None if the PEM does not parse)."""
    try:
        return x509.load_pem_x509_certificate(pem.encode()).not_valid_after_utc.timestamp()
    except ValueError:
        return None


def _authenticator(row: sqlite3.Row) -> Authenticator:
    return Authenticator(row["id"] or row["fingerprint"], row["identity_id"], row["fingerprint"],
                         row["cert_pem"], row["created_at"], row["expires_at"],
                         row["renewed_at"], row["pending_fingerprint"], row["pending_pem"])


def new_id() -> str:
    """A short random entity id."""
    return secrets.token_hex(8)


class Store:
    """The controller database. Methods take the current time from `clock` (epoch seconds)."""

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._db = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                                   check_same_thread=True)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._tx():
            self._create_schema()

    def _create_schema(self) -> None:
        existing = self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                    "AND name = 'meta'").fetchone()
        version = SCHEMA_VERSION
        if existing is not None:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                                   ).fetchone()
            version = int(row["value"]) if row else 1
        if version > SCHEMA_VERSION:
            raise ConfigError(f"state database schema {version} is newer than this tunneler "
                              f"({SCHEMA_VERSION}); upgrade tunneler")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[target]:
                self._db.execute(statement)
        for statement in SCHEMA.split(";"):
            if statement.strip():
                self._db.execute(statement)
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                         (str(SCHEMA_VERSION),))
        for name in KNOWN_CONFIG_TYPES:
            self._db.execute("INSERT OR IGNORE INTO config_types VALUES (?, ?)", (name, name))

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _one(self, sql: str, *params: object) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._db.execute(sql, params).fetchone()
        return row

    # -- change tracking ---------------------------------------------------------------------

    def last_change_at(self) -> float:
        """When services, configs, policies or identity roles last changed."""
        row = self._one("SELECT value FROM meta WHERE key = 'last_change_at'")
        return float(row["value"]) if row else 0.0

    def _mark_changed(self) -> None:
        now = max(self._clock(), self.last_change_at() + 1e-6)
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('last_change_at', ?)", (repr(now),))

    # -- identities --------------------------------------------------------------------------

    @staticmethod
    def _identity(row: sqlite3.Row) -> Identity:
        return Identity(row["id"], row["name"], tuple(json.loads(row["role_attributes"])),
                        row["created_at"], row["updated_at"])

    def identity_by_name(self, name: str) -> Identity | None:
        row = self._one("SELECT * FROM identities WHERE name = ?", name)
        return self._identity(row) if row else None

    def identity_by_id(self, identity_id: str) -> Identity | None:
        row = self._one("SELECT * FROM identities WHERE id = ?", identity_id)
        return self._identity(row) if row else None

    def identity_by_fingerprint(self, fingerprint: str) -> Identity | None:
        """The identity that enrolled the certificate with this SHA-1 fingerprint."""
        row = self._one("SELECT i.* FROM identities i JOIN authenticators a "
                        "ON a.identity_id = i.id WHERE a.fingerprint = ?", fingerprint)
        return self._identity(row) if row else None

    def identities(self) -> list[Identity]:
        """All identities, ordered by name."""
        rows = self._db.execute("SELECT * FROM identities ORDER BY name").fetchall()
        return [self._identity(row) for row in rows]

    def delete_identity(self, name: str) -> bool:
        """Revoke an identity: it, its certificates, enrollments, API sessions and sessions go
        (routers close its channels and circuits at their next sweep). False if unknown."""
        with self._tx() as db:
            deleted = db.execute("DELETE FROM identities WHERE name = ?", (name,)).rowcount
            if deleted:
                self._mark_changed()
        return bool(deleted)

    def api_sessions(self) -> list[ApiSession]:
        """Every live API session, newest first."""
        rows = self._db.execute("SELECT a.*, i.name AS identity_name FROM api_sessions a JOIN "
                                "identities i ON i.id = a.identity_id WHERE a.expires_at >= ? "
                                "ORDER BY a.created_at DESC", (self._clock(),)).fetchall()
        return [self._api_session_of(row) for row in rows]

    def session_count(self, api_session_id: str) -> int:
        """How many Dial/Bind sessions an API session holds."""
        row = self._one("SELECT COUNT(*) AS n FROM sessions WHERE api_session_id = ?",
                        api_session_id)
        return int(row["n"]) if row else 0

    def upsert_identity(self, name: str, role_attributes: Sequence[str] | None = None) -> str:
        """Create or update an identity by name; returns "created", "updated" or "unchanged".

        `role_attributes=None` leaves an existing identity's attributes alone.
        """
        now = self._clock()
        with self._tx() as db:
            current = self.identity_by_name(name)
            roles = json.dumps(list(role_attributes or ()))
            if current is None:
                db.execute("INSERT INTO identities VALUES (?, ?, ?, ?, ?)",
                           (new_id(), name, roles, now, now))
                self._mark_changed()
                return "created"
            if role_attributes is None or tuple(role_attributes) == current.role_attributes:
                return "unchanged"
            db.execute("UPDATE identities SET role_attributes = ?, updated_at = ? WHERE id = ?",
                       (roles, now, current.id))
            self._mark_changed()
            return "updated"

    # -- enrollment --------------------------------------------------------------------------

    def create_enrollment(self, identity_id: str, expires_at: float) -> str:
        """A new one-time enrollment token (the JWT `jti`) for an identity."""
        jti = str(uuid.uuid4())
        with self._tx() as db:
            db.execute("INSERT INTO enrollments VALUES (?, ?, ?, ?)",
                       (jti, identity_id, expires_at, self._clock()))
        return jti

    def consume_enrollment(self, jti: str, issue: Issuer) -> tuple[Identity, str]:
        """Atomically use an enrollment token: delete it and store the issued cert's authenticator.

        Args:
            jti: the enrollment token.
            issue: builds the client certificate for the identity; returns (fingerprint, PEM).

        Returns:
            The identity and the certificate PEM.

        Raises:
            EnrollmentError: unknown, already used or expired token.
        """
        now = self._clock()
        with self._tx() as db:
            row = db.execute("DELETE FROM enrollments WHERE jti = ? "
                             "RETURNING identity_id, expires_at", (jti,)).fetchone()
            if row is None:
                raise EnrollmentError("enrollment token is unknown or already used")
            if row["expires_at"] < now:
                raise EnrollmentError("enrollment token has expired")
            identity = self.identity_by_id(row["identity_id"])
            if identity is None:
                raise EnrollmentError("enrollment token's identity no longer exists")
            fingerprint, pem = issue(identity)
            db.execute("INSERT INTO authenticators (fingerprint, identity_id, cert_pem, "
                       "created_at, id, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                       (fingerprint, identity.id, pem, now, fingerprint, _not_after(pem)))
        return identity, pem

    # -- certificate renewal (authenticators) ------------------------------------------------

    def authenticators(self, identity_id: str) -> list[Authenticator]:
        """The identity's certificate authenticators."""
        rows = self._db.execute("SELECT * FROM authenticators WHERE identity_id = ? "
                                "ORDER BY created_at", (identity_id,)).fetchall()
        return [_authenticator(row) for row in rows]

    def set_pending_certificate(self, authenticator_id: str, fingerprint: str,
                                pem: str) -> None:
        """An extend: remember the new certificate until the client verifies it."""
        with self._tx() as db:
            db.execute("UPDATE authenticators SET pending_fingerprint = ?, pending_pem = ? "
                       "WHERE id = ?", (fingerprint, pem, authenticator_id))

    def verify_pending_certificate(self, authenticator_id: str, pem: str) -> Authenticator:
        """An extend-verify: the pending certificate becomes the current one (the old one no
        longer authenticates) and may present the identity's live API sessions.

        Raises:
            ConfigError: nothing is pending, or `pem` is not the pending certificate.
        """
        now = self._clock()
        with self._tx() as db:
            row = db.execute("SELECT * FROM authenticators WHERE id = ?",
                             (authenticator_id,)).fetchone()
            if row is None or not row["pending_pem"]:
                raise ConfigError("no extended certificate is waiting to be verified")
            if row["pending_pem"].strip() != pem.strip():
                raise ConfigError("the certificate is not the one the extend issued")
            new = row["pending_fingerprint"]
            db.execute("UPDATE authenticators SET fingerprint = ?, cert_pem = ?, expires_at = ?, "
                       "renewed_at = ?, pending_pem = NULL, pending_fingerprint = NULL "
                       "WHERE id = ?", (new, row["pending_pem"], _not_after(row["pending_pem"]),
                                        now, authenticator_id))
            for session in db.execute("SELECT id, fingerprints FROM api_sessions "
                                      "WHERE identity_id = ?", (row["identity_id"],)).fetchall():
                renewed = [*json.loads(session["fingerprints"]), new]
                db.execute("UPDATE api_sessions SET fingerprints = ? WHERE id = ?",
                           (json.dumps(list(dict.fromkeys(renewed))), session["id"]))
            updated = db.execute("SELECT * FROM authenticators WHERE id = ?",
                                 (authenticator_id,)).fetchone()
        return _authenticator(updated)

    # -- services and configs ----------------------------------------------------------------

    def _service(self, row: sqlite3.Row) -> Service:
        configs = self._db.execute("SELECT id, type_name, data FROM configs WHERE service_id = ? "
                                   "ORDER BY type_name", (row["id"],)).fetchall()
        return Service(
            id=row["id"], name=row["name"], encryption_required=bool(row["encryption_required"]),
            role_attributes=tuple(json.loads(row["role_attributes"])),
            configs={c["type_name"]: json.loads(c["data"]) for c in configs},
            config_ids={c["type_name"]: c["id"] for c in configs},
            created_at=row["created_at"], updated_at=row["updated_at"],
        )

    def services(self) -> list[Service]:
        """All services, ordered by name."""
        rows = self._db.execute("SELECT * FROM services ORDER BY name").fetchall()
        return [self._service(row) for row in rows]

    def service_by_id(self, service_id: str) -> Service | None:
        row = self._one("SELECT * FROM services WHERE id = ?", service_id)
        return self._service(row) if row else None

    def service_by_name(self, name: str) -> Service | None:
        row = self._one("SELECT * FROM services WHERE name = ?", name)
        return self._service(row) if row else None

    def upsert_service(self, name: str, *, encryption_required: bool,
                       role_attributes: Sequence[str], configs: Mapping[str, Any]) -> str:
        """Create or replace a service (and its configs) by name; returns the change made."""
        now = self._clock()
        for type_name in configs:
            if type_name not in KNOWN_CONFIG_TYPES:
                raise ConfigError(f"unknown config type {type_name!r}")
        with self._tx() as db:
            current = self.service_by_name(name)
            if current is not None and (current.encryption_required, current.role_attributes,
                                        dict(current.configs)) == (
                    encryption_required, tuple(role_attributes), dict(configs)):
                return "unchanged"
            service_id = current.id if current else new_id()
            db.execute("INSERT INTO services VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE "
                       "SET encryption_required = excluded.encryption_required, "
                       "role_attributes = excluded.role_attributes, "
                       "updated_at = excluded.updated_at",
                       (service_id, name, int(encryption_required),
                        json.dumps(list(role_attributes)), now, now))
            db.execute("DELETE FROM configs WHERE service_id = ?", (service_id,))
            for type_name, data in configs.items():
                db.execute("INSERT INTO configs VALUES (?, ?, ?, ?)",
                           (new_id(), service_id, type_name, json.dumps(data)))
            self._mark_changed()
            return "updated" if current else "created"

    # -- service policies --------------------------------------------------------------------

    def policies(self, kind: str | None = None) -> list[ServicePolicy]:
        """All service policies (optionally of one type), ordered by name."""
        rows = self._db.execute("SELECT * FROM service_policies ORDER BY name").fetchall()
        found = [ServicePolicy(r["id"], r["name"], r["type"], r["semantic"],
                               tuple(json.loads(r["identity_roles"])),
                               tuple(json.loads(r["service_roles"]))) for r in rows]
        return [p for p in found if kind is None or p.type == kind]

    def upsert_policy(self, name: str, *, kind: str, semantic: str,
                      identity_roles: Sequence[str], service_roles: Sequence[str]) -> str:
        """Create or replace a service policy by name; returns the change made."""
        now = self._clock()
        with self._tx() as db:
            current = next((p for p in self.policies() if p.name == name), None)
            wanted = (kind, semantic, tuple(identity_roles), tuple(service_roles))
            if current is not None and wanted == (current.type, current.semantic,
                                                  current.identity_roles, current.service_roles):
                return "unchanged"
            db.execute("INSERT INTO service_policies VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                       "ON CONFLICT(id) DO UPDATE SET type = excluded.type, "
                       "semantic = excluded.semantic, identity_roles = excluded.identity_roles, "
                       "service_roles = excluded.service_roles, updated_at = excluded.updated_at",
                       (current.id if current else new_id(), name, kind, semantic,
                        json.dumps(list(identity_roles)), json.dumps(list(service_roles)),
                        now, now))
            self._mark_changed()
            return "updated" if current else "created"

    def delete_policy(self, name: str) -> bool:
        """Remove a service policy (routers close the circuits it alone allowed at their next
        sweep). False if unknown."""
        with self._tx() as db:
            deleted = db.execute("DELETE FROM service_policies WHERE name = ?", (name,)).rowcount
            if deleted:
                self._mark_changed()
        return bool(deleted)

    def permissions(self, identity: Identity, service: Service) -> Permissions:
        """The policy types that currently grant `identity` access to `service`."""
        return permissions(self.policies(), identity, service)

    def is_permitted(self, identity_id: str, service_id: str, kind: str) -> bool:
        """RouterAuthority: live policy check."""
        identity = self.identity_by_id(identity_id)
        service = self.service_by_id(service_id)
        if identity is None or service is None:
            return False
        return kind in self.permissions(identity, service).kinds

    # -- API sessions and sessions -----------------------------------------------------------

    def create_api_session(self, identity: Identity, fingerprint: str,
                           config_types: Sequence[str], *, method: str = AUTH_CERT,
                           lifetime: float = API_SESSION_SECONDS) -> ApiSession:
        """A new API session for a certificate-authenticated identity (expired ones are purged).

        `method` is AUTH_CERT (legacy: `zt-session` token, extended on use) or AUTH_OIDC (the
        tokens name it by id; it lives as long as its refresh token and each refresh extends
        it by `lifetime`).
        """
        now = self._clock()
        session_id, token = new_id(), str(uuid.uuid4())
        with self._tx() as db:
            db.execute("DELETE FROM api_sessions WHERE expires_at < ?", (now,))
            db.execute("INSERT INTO api_sessions (id, token, identity_id, fingerprint, "
                       "config_types, created_at, updated_at, expires_at, auth_method) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (session_id, token, identity.id, fingerprint, json.dumps(list(config_types)),
                        now, now, now + lifetime, method))
        session = self.api_session_by_id(session_id)
        assert session is not None
        return session

    def api_session(self, token: str, *, touch: bool = True) -> ApiSession | None:
        """The live legacy API session for `token`; `touch` extends its expiry (activity)."""
        now = self._clock()
        row = self._api_session_row("a.token = ? AND a.auth_method = ?", token, AUTH_CERT)
        if row is None:
            return None
        if touch:
            with self._tx() as db:
                db.execute("UPDATE api_sessions SET updated_at = ?, expires_at = ? WHERE id = ?",
                           (now, now + API_SESSION_SECONDS, row["id"]))
            row = self._api_session_row("a.id = ?", row["id"])
            assert row is not None
        return self._api_session_of(row)

    def api_session_by_id(self, session_id: str) -> ApiSession | None:
        """The live API session with this id (OIDC tokens carry it as `z_asid`)."""
        row = self._api_session_row("a.id = ?", session_id)
        return None if row is None else self._api_session_of(row)

    def extend_api_session(self, session_id: str, lifetime: float) -> None:
        """An OIDC refresh: the session lives `lifetime` seconds from now."""
        now = self._clock()
        with self._tx() as db:
            db.execute("UPDATE api_sessions SET updated_at = ?, expires_at = ? WHERE id = ?",
                       (now, now + lifetime, session_id))

    def _api_session_row(self, condition: str, *values: object) -> sqlite3.Row | None:
        return self._one("SELECT a.*, i.name AS identity_name FROM api_sessions a JOIN "
                         f"identities i ON i.id = a.identity_id WHERE {condition} "
                         "AND a.expires_at >= ?", *values, self._clock())

    @staticmethod
    def _api_session_of(row: sqlite3.Row) -> ApiSession:
        return ApiSession(row["id"], row["token"], row["identity_id"], row["identity_name"],
                          row["fingerprint"], tuple(json.loads(row["config_types"])),
                          row["created_at"], row["updated_at"], row["expires_at"],
                          row["auth_method"], tuple(json.loads(row["fingerprints"])))

    def delete_api_session(self, session_id: str) -> None:
        """Log out: the API session and its sessions are gone."""
        with self._tx() as db:
            db.execute("DELETE FROM api_sessions WHERE id = ?", (session_id,))

    def api_session_by_token(self, token: str) -> ApiSessionInfo | None:
        """RouterAuthority: the legacy API session for a channel Hello token."""
        return self._router_view(self.api_session(token, touch=False))

    def api_session_info(self, session_id: str) -> ApiSessionInfo | None:
        """RouterAuthority: the live API session an OIDC access token names."""
        return self._router_view(self.api_session_by_id(session_id))

    @staticmethod
    def _router_view(session: ApiSession | None) -> ApiSessionInfo | None:
        if session is None:
            return None
        return ApiSessionInfo(session.id, session.token, session.identity_id,
                              session.identity_name, frozenset(session.fingerprints))

    def create_session(self, api_session: ApiSession, service: Service, kind: str) -> SessionInfo:
        """A new Dial/Bind session (the caller has checked the policy)."""
        session_id, token = new_id(), str(uuid.uuid4())
        with self._tx() as db:
            db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (session_id, token, kind, service.id, api_session.identity_id,
                        api_session.id, self._clock()))
        return SessionInfo(session_id, token, kind, service.id, service.name,
                           api_session.identity_id, api_session.id, service.encryption_required)

    def session_by_id(self, session_id: str) -> SessionInfo | None:
        """`GET /sessions/{id}`: the session with that id (its API session still live)."""
        return self._session_where("s.id = ?", session_id)

    def session_by_token(self, token: str) -> SessionInfo | None:
        """RouterAuthority: the session for an edge Connect/Bind token."""
        return self._session_where("s.token = ?", token)

    def _session_where(self, condition: str, value: str) -> SessionInfo | None:
        row = self._one("SELECT s.*, v.name AS service_name, v.encryption_required FROM sessions s "
                        "JOIN services v ON v.id = s.service_id JOIN api_sessions a "
                        f"ON a.id = s.api_session_id WHERE {condition} AND a.expires_at >= ?",
                        value, self._clock())
        if row is None:
            return None
        return SessionInfo(row["id"], row["token"], row["type"], row["service_id"],
                           row["service_name"], row["identity_id"], row["api_session_id"],
                           bool(row["encryption_required"]))

    # -- routers -----------------------------------------------------------------------------

    def add_router(self, name: str, hostname: str, port: int) -> Router:
        """Register an edge router."""
        now = self._clock()
        router = Router(new_id(), name, hostname, port, now, now)
        with self._tx() as db:
            db.execute("INSERT INTO routers VALUES (?, ?, ?, ?, ?, ?)",
                       (router.id, name, hostname, port, now, now))
        return router

    def routers(self) -> list[Router]:
        """All edge routers, ordered by name."""
        rows = self._db.execute("SELECT * FROM routers ORDER BY name").fetchall()
        return [Router(r["id"], r["name"], r["hostname"], r["port"], r["created_at"],
                       r["updated_at"]) for r in rows]
