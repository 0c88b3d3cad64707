-- The rule key led by the target. With the tenant, action and kind first, every comparison
-- in a descent of the key index called three comparison functions on columns that are nearly
-- always equal before reaching the one that decides. Measured on 600,000 scattered /32 rules,
-- inserts with ON CONFLICT ran 25-35% faster with the target first.
ALTER TABLE rules ADD CONSTRAINT rules_target_tenant_id_action_kind_key
    UNIQUE (target, tenant_id, action, kind);
ALTER TABLE rules DROP CONSTRAINT rules_tenant_id_action_kind_target_key;
