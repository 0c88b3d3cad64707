-- PostgreSQL form of ../schema_v3.sql.

-- One row, rewritten by readiness probes: a write that proves the store accepts writes.
CREATE TABLE health (
    id integer PRIMARY KEY CHECK (id = 1),
    at bigint NOT NULL
);

-- Followers read a tenant's changes after their cursor.
CREATE INDEX rule_changes_by_tenant ON rule_changes (tenant_id, seq);

-- Retention deletes by age. Entries are made in time order, so these grow at their right edge
-- only and cost little to keep up.
CREATE INDEX audit_by_at ON audit (at);
CREATE INDEX rule_changes_by_at ON rule_changes (at);
