-- Rules keyed by (tenant_id, id) instead of by id, with the index on (tenant_id, id) that
-- listings read dropped: the key serves both, and a new rule costs one index entry fewer
-- (measured at 7% of a scattered rule's insert). Every statement that finds a rule by id
-- names its tenant too. Ids still come from the one identity sequence and are never reused.
ALTER TABLE rules DROP CONSTRAINT rules_pkey;
ALTER TABLE rules ADD CONSTRAINT rules_pkey PRIMARY KEY (tenant_id, id);
DROP INDEX rules_by_tenant;
