-- PostgreSQL form of ../sqlite/schema_v5.sql: bouncers, and what their decisions need from the
-- change log.

ALTER TABLE rule_changes ADD COLUMN IF NOT EXISTS source text;
ALTER TABLE rule_changes ADD COLUMN IF NOT EXISTS dataset text;
ALTER TABLE rule_changes ADD COLUMN IF NOT EXISTS description text;

CREATE TABLE IF NOT EXISTS bouncers (
    key_id     bigint PRIMARY KEY,
    tenant_id  bigint NOT NULL,
    last_pull  bigint NOT NULL,
    user_agent text,
    address    text,
    version    text,
    cursor_seq bigint,
    cursor_at  bigint
);
