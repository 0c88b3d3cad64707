-- How many rules each tenant stores (expired and not yet purged included), kept by the writes
-- themselves so that a quota check does not count a tenant's rules on every write.

-- Wait for the write transaction in flight, if any, and keep new ones out until this migration
-- commits: the count below is then exact, and no write can change rules between the count and
-- the commit. (Writers take this lock first and tenants after it, as this does: no deadlock.)
SELECT seq FROM feed_head WHERE id = 1 FOR UPDATE;

ALTER TABLE tenants ADD COLUMN IF NOT EXISTS rules bigint NOT NULL DEFAULT 0;

-- Sets rather than adds, so running it again gives the same counts.
UPDATE tenants SET rules = counted.n
FROM (
    SELECT t.id, (SELECT count(*) FROM rules r WHERE r.tenant_id = t.id) AS n FROM tenants t
) AS counted
WHERE tenants.id = counted.id AND tenants.rules <> counted.n;
