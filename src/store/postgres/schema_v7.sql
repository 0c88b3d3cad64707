-- PostgreSQL form of ../sqlite/schema_v4.sql. Retention finds the oldest entries by walking the
-- primary key, whose numbers grow with `at`; an index on `at` cost every audit entry and every
-- change one more index insert, inside the one write transaction all writers take turns at.
DROP INDEX IF EXISTS audit_by_at;
DROP INDEX IF EXISTS rule_changes_by_at;
