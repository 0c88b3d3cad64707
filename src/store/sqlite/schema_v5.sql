-- Bouncers (CrowdSec's enforcement points) and what their decisions need from the change log.

-- What made the rule and what it says, as of the change: a decision carries its origin (signal,
-- or the report's dataset) and its scenario (name or description), and followers of the log
-- must not read the rule back for them. NULL on changes logged before this version: a signal,
-- without description.
ALTER TABLE rule_changes ADD COLUMN source TEXT;
ALTER TABLE rule_changes ADD COLUMN dataset TEXT;
ALTER TABLE rule_changes ADD COLUMN description TEXT;

-- One row per key that pulled decisions: what it said about itself, and where its stream
-- stands. The cursor (the last change it was sent, and the instant it was computed at) lives
-- here, not in a node's memory, so a restart or another node carries on from it.
CREATE TABLE bouncers (
    key_id     INTEGER PRIMARY KEY,
    tenant_id  INTEGER NOT NULL,
    last_pull  INTEGER NOT NULL,
    user_agent TEXT,
    address    TEXT,
    version    TEXT,
    cursor_seq INTEGER,
    cursor_at  INTEGER
);
