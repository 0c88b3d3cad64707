-- One row, rewritten by readiness probes: a write that proves the store accepts writes.
CREATE TABLE health (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
);

-- Followers read a tenant's changes after their cursor.
CREATE INDEX rule_changes_by_tenant ON rule_changes (tenant_id, seq);

-- Retention deletes by age. Entries are made in time order, so these grow at their right edge
-- only and cost little to keep up.
CREATE INDEX audit_by_at ON audit (at);
CREATE INDEX rule_changes_by_at ON rule_changes (at);

-- Rules stored per tenant (expired ones until purged), for the tenant's rule quota; kept by
-- every write transaction.
ALTER TABLE tenants ADD COLUMN rules INTEGER NOT NULL DEFAULT 0;
UPDATE tenants SET rules = (SELECT COUNT(*) FROM rules WHERE rules.tenant_id = tenants.id);
