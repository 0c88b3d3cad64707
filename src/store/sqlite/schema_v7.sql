-- The audit log as one row per request (an audit record) instead of one per event: a
-- 1000-event batch then costs one row and one entry in each index, where it cost a thousand.
-- `entries` is a JSON array of [index in the batch, event as received, error] (see
-- src/store/audit.rs) and `entry_count` its length, so that a page of the log reads only the
-- records it shows. Every entry stored so far becomes a record of its own, keeping its id.
CREATE TABLE audit_records (
    id          INTEGER PRIMARY KEY,
    tenant_id   INTEGER NOT NULL,
    key_id      INTEGER NOT NULL,
    request_id  TEXT NOT NULL,
    at          INTEGER NOT NULL,
    entry_count INTEGER NOT NULL,
    entries     TEXT NOT NULL
);
INSERT INTO audit_records (id, tenant_id, key_id, request_id, at, entry_count, entries)
SELECT id, tenant_id, key_id, request_id, at, 1,
       json_array(json_array(entry_index, event, error))
FROM audit;
DROP TABLE audit;
CREATE INDEX audit_records_by_tenant ON audit_records (tenant_id, id);
