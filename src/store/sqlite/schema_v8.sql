-- The rule key (tenant, action, target) leaves the database: the writer keeps every stored
-- rule's key in memory (store::sqlite::rule_keys) and refuses a second rule for a key. As a
-- UNIQUE index, new keys from scattered addresses landed all over the file, and every group
-- commit wrote a leaf page per new rule. SQLite cannot drop a table's UNIQUE constraint, so the
-- table is rebuilt as in version 6, keeping ids and the AUTOINCREMENT counter.
CREATE TABLE rules_unkeyed (
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
    dataset     TEXT,
    -- JSON array of strings.
    tags        TEXT NOT NULL DEFAULT '[]',
    -- How many reports merged into this rule.
    reports     INTEGER NOT NULL DEFAULT 0
);
INSERT INTO rules_unkeyed
    (id, tenant_id, action, kind, target, expires_at, name, description, source, created_at,
     updated_at, dataset, tags, reports)
SELECT id, tenant_id, action, kind, target, expires_at, name, description, source, created_at,
       updated_at, dataset, tags, reports
FROM rules;
DELETE FROM sqlite_sequence WHERE name = 'rules_unkeyed';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'rules_unkeyed', seq FROM sqlite_sequence WHERE name = 'rules';
DROP TABLE rules;
ALTER TABLE rules_unkeyed RENAME TO rules;
CREATE INDEX rules_by_tenant ON rules (tenant_id, id);
CREATE INDEX rules_by_expiry ON rules (expires_at) WHERE expires_at IS NOT NULL;
