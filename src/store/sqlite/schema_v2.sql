-- Abuse reports: what a rule was reported as, and the durable queue of accepted reports.

ALTER TABLE rules ADD COLUMN dataset TEXT;
-- JSON array of strings.
ALTER TABLE rules ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
-- How many reports merged into this rule.
ALTER TABLE rules ADD COLUMN reports INTEGER NOT NULL DEFAULT 0;

-- Reports answered with 202 and not yet turned into rules. A row is deleted in the same
-- transaction that applies it, so after a crash each is applied exactly once.
CREATE TABLE report_queue (
    id          INTEGER PRIMARY KEY,
    tenant_id   INTEGER NOT NULL,
    key_id      INTEGER NOT NULL,
    kind        TEXT NOT NULL CHECK (kind = 'report' OR kind = 'unban' OR kind = 'false_add' OR kind = 'false_remove'),
    -- The validated request, as JSON.
    payload     TEXT NOT NULL,
    received_at INTEGER NOT NULL
);
