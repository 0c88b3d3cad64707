-- The rule key led by the target. With the tenant, action and kind first, every comparison
-- during an insert's descent of the key index decoded three columns that are nearly always
-- equal before reaching the one that decides; led by the target, most comparisons end on
-- its first bytes. SQLite cannot change a table's UNIQUE constraint in place, so the table
-- is rebuilt, keeping ids and the AUTOINCREMENT counter (an id is never given twice, even
-- when the newest rules were deleted before this ran).
CREATE TABLE rules_keyed_by_target (
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
    reports     INTEGER NOT NULL DEFAULT 0,
    UNIQUE (target, tenant_id, action, kind)
);
INSERT INTO rules_keyed_by_target
    (id, tenant_id, action, kind, target, expires_at, name, description, source, created_at,
     updated_at, dataset, tags, reports)
SELECT id, tenant_id, action, kind, target, expires_at, name, description, source, created_at,
       updated_at, dataset, tags, reports
FROM rules;
DELETE FROM sqlite_sequence WHERE name = 'rules_keyed_by_target';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'rules_keyed_by_target', seq FROM sqlite_sequence WHERE name = 'rules';
DROP TABLE rules;
ALTER TABLE rules_keyed_by_target RENAME TO rules;
CREATE INDEX rules_by_tenant ON rules (tenant_id, id);
CREATE INDEX rules_by_expiry ON rules (expires_at) WHERE expires_at IS NOT NULL;
