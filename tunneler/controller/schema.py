"""SQLite schema of the controller state database (`DIR/state.db`)."""

from __future__ import annotations

SCHEMA_VERSION = 3

# Statements that bring a database of version N-1 to version N (run once, in order).
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: ("ALTER TABLE api_sessions ADD COLUMN auth_method TEXT NOT NULL DEFAULT 'cert'",),
    3: ("ALTER TABLE authenticators ADD COLUMN id TEXT",
        "ALTER TABLE authenticators ADD COLUMN pending_pem TEXT",
        "ALTER TABLE authenticators ADD COLUMN pending_fingerprint TEXT",
        "ALTER TABLE authenticators ADD COLUMN expires_at REAL",
        "ALTER TABLE authenticators ADD COLUMN renewed_at REAL",
        "UPDATE authenticators SET id = fingerprint WHERE id IS NULL",
        "ALTER TABLE api_sessions ADD COLUMN fingerprints TEXT NOT NULL DEFAULT '[]'"),
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS identities (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role_attributes TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS authenticators (
    fingerprint TEXT PRIMARY KEY,          -- of the current certificate
    identity_id TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    cert_pem TEXT NOT NULL,
    created_at REAL NOT NULL,
    id TEXT,                               -- stable authenticator id (the first fingerprint)
    pending_pem TEXT,                      -- an extended certificate waiting for extend-verify
    pending_fingerprint TEXT,
    expires_at REAL,                       -- of the current certificate
    renewed_at REAL
);
CREATE TABLE IF NOT EXISTS enrollments (
    jti TEXT PRIMARY KEY,
    identity_id TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    expires_at REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS config_types (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS services (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    encryption_required INTEGER NOT NULL,
    role_attributes TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS configs (
    id TEXT PRIMARY KEY,
    service_id TEXT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    type_name TEXT NOT NULL REFERENCES config_types(name),
    data TEXT NOT NULL,
    UNIQUE (service_id, type_name)
);
CREATE TABLE IF NOT EXISTS service_policies (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL CHECK (type IN ('Dial', 'Bind')),
    semantic TEXT NOT NULL CHECK (semantic IN ('AnyOf', 'AllOf')),
    identity_roles TEXT NOT NULL,
    service_roles TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_sessions (
    id TEXT PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    identity_id TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    config_types TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    auth_method TEXT NOT NULL DEFAULT 'cert',
    fingerprints TEXT NOT NULL DEFAULT '[]'  -- certificates that may present it (renewals)
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL CHECK (type IN ('Dial', 'Bind')),
    service_id TEXT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    identity_id TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    api_session_id TEXT NOT NULL REFERENCES api_sessions(id) ON DELETE CASCADE,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS routers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    hostname TEXT NOT NULL,
    port INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
"""
