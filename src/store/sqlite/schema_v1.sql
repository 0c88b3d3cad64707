-- Times are Unix milliseconds. CHECKs are written with OR, not IN (...): SQLite builds a
-- temporary index for an IN list on every insert.
-- Targets are kept in their canonical text (see rules::Target).

CREATE TABLE tenants (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id         INTEGER PRIMARY KEY,
    tenant_id  INTEGER NOT NULL,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role = 'admin' OR role = 'writer' OR role = 'reader'),
    -- SHA-256 of the whole key; the key itself is never stored.
    key_hash   BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

-- The current, mutable state: one row per (tenant, action, target). AUTOINCREMENT: an id is
-- never given to a second rule, so a client holding an old id cannot delete a new rule, and a
-- change log entry names one rule for good.
CREATE TABLE rules (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   INTEGER NOT NULL,
    action      TEXT NOT NULL CHECK (action = 'block' OR action = 'allow'),
    kind        TEXT NOT NULL CHECK (kind = 'ip' OR kind = 'asn' OR kind = 'country'),
    target      TEXT NOT NULL,
    expires_at  INTEGER,
    name        TEXT,
    description TEXT,
    source      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (tenant_id, action, kind, target)
);
CREATE INDEX rules_by_tenant ON rules (tenant_id, id);
CREATE INDEX rules_by_expiry ON rules (expires_at) WHERE expires_at IS NOT NULL;

-- The change log. AUTOINCREMENT: a sequence number is never reused, even after the newest
-- rows are deleted, so "changes since N" stays meaningful for every reader.
CREATE TABLE rule_changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  INTEGER NOT NULL,
    rule_id    INTEGER NOT NULL,
    op         TEXT NOT NULL CHECK (op = 'put' OR op = 'delete' OR op = 'expire'),
    action     TEXT NOT NULL,
    kind       TEXT NOT NULL,
    target     TEXT NOT NULL,
    expires_at INTEGER,
    -- The rule's name after the change, so followers can show matches without a read back.
    name       TEXT,
    at         INTEGER NOT NULL
);

-- Every event received, valid or not, with what became of it.
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY,
    tenant_id   INTEGER NOT NULL,
    key_id      INTEGER NOT NULL,
    request_id  TEXT NOT NULL,
    at          INTEGER NOT NULL,
    entry_index INTEGER,
    event       TEXT NOT NULL,
    error       TEXT
);
CREATE INDEX audit_by_tenant ON audit (tenant_id, id);
