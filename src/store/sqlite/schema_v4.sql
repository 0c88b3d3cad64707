-- Retention finds the oldest entries by their row id, which grows with `at`; an index on `at`
-- cost every audit entry and every change one more insert.
DROP INDEX audit_by_at;
DROP INDEX rule_changes_by_at;
