-- PostgreSQL form of ../schema_v2.sql. Abuse reports: what a rule was reported as, and the
-- durable queue of accepted reports.

ALTER TABLE rules ADD COLUMN dataset text;
-- JSON array of strings.
ALTER TABLE rules ADD COLUMN tags jsonb NOT NULL DEFAULT '[]';
-- How many reports merged into this rule.
ALTER TABLE rules ADD COLUMN reports bigint NOT NULL DEFAULT 0;

-- Reports answered with 202 and not yet turned into rules. A row is deleted in the same
-- transaction that applies it, so after a crash each is applied exactly once.
CREATE TABLE report_queue (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL,
    key_id      bigint NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('report', 'unban', 'false_add', 'false_remove')),
    -- The validated request, as JSON.
    payload     text NOT NULL,
    received_at bigint NOT NULL
);
