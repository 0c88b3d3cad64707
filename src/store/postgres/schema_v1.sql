-- PostgreSQL form of ../schema_v1.sql: the same tables and columns. Times are Unix
-- milliseconds (bigint). Targets are kept in their canonical text (see rules::Target).
-- Nothing here names a schema: every object lands in the connection's search_path, so one
-- database can hold several independent stores (one per test, say).

CREATE TABLE tenants (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    created_at bigint NOT NULL
);

CREATE TABLE api_keys (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  bigint NOT NULL,
    name       text NOT NULL,
    role       text NOT NULL CHECK (role IN ('admin', 'writer', 'reader')),
    -- SHA-256 of the whole key; the key itself is never stored.
    key_hash   bytea NOT NULL UNIQUE,
    created_at bigint NOT NULL,
    revoked_at bigint
);

-- The current, mutable state: one row per (tenant, action, target). Ids come from an identity
-- sequence, which never hands out a number twice (rolled-back inserts only leave gaps), so a
-- client holding an old id cannot delete a new rule, and a change log entry names one rule for
-- good.
CREATE TABLE rules (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL,
    action      text NOT NULL CHECK (action IN ('block', 'allow')),
    kind        text NOT NULL CHECK (kind IN ('ip', 'asn', 'country')),
    target      text NOT NULL,
    expires_at  bigint,
    name        text,
    description text,
    source      text NOT NULL,
    created_at  bigint NOT NULL,
    updated_at  bigint NOT NULL,
    UNIQUE (tenant_id, action, kind, target)
);
CREATE INDEX rules_by_tenant ON rules (tenant_id, id);
CREATE INDEX rules_by_expiry ON rules (expires_at) WHERE expires_at IS NOT NULL;

-- The change log. Sequence numbers are not taken from a sequence: a sequence hands numbers out
-- in the order transactions ask, not the order they commit, so a follower reading "after N"
-- could pass over a smaller number committed a moment later. They come from feed_head instead.
CREATE TABLE rule_changes (
    seq        bigint PRIMARY KEY,
    tenant_id  bigint NOT NULL,
    rule_id    bigint NOT NULL,
    op         text NOT NULL CHECK (op IN ('put', 'delete', 'expire')),
    action     text NOT NULL,
    kind       text NOT NULL,
    target     text NOT NULL,
    expires_at bigint,
    -- The rule's name after the change, so followers can show matches without a read back.
    name       text,
    at         bigint NOT NULL
);

-- The last change number handed out. Every write transaction locks this row first and holds the
-- lock until it commits, so write transactions run one at a time and change numbers follow
-- commit order without gaps. It only grows: purging the log never lowers it, so a number is
-- never reused.
CREATE TABLE feed_head (
    id  integer PRIMARY KEY CHECK (id = 1),
    seq bigint NOT NULL
);
INSERT INTO feed_head (id, seq) VALUES (1, 0);

-- Every event received, valid or not, with what became of it.
CREATE TABLE audit (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL,
    key_id      bigint NOT NULL,
    request_id  text NOT NULL,
    at          bigint NOT NULL,
    entry_index bigint,
    event       text NOT NULL,
    error       text
);
CREATE INDEX audit_by_tenant ON audit (tenant_id, id);
