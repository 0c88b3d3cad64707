-- The audit's entries compressed with LZ4 instead of pglz: a 1000-event record is about 155 KB
-- of JSON, and pglz took about a twentieth of the database's CPU time under ingest. Servers
-- built without LZ4 (or older than 14, without SET COMPRESSION) keep pglz; the statement is
-- run by EXECUTE so that either refusal can be caught.
DO $$
BEGIN
    EXECUTE 'ALTER TABLE audit_records ALTER COLUMN entries SET COMPRESSION lz4';
EXCEPTION
    WHEN feature_not_supported OR syntax_error THEN
        RAISE NOTICE 'audit entries stay compressed with pglz: %', SQLERRM;
END
$$;
