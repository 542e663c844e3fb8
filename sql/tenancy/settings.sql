-- Tenancy: settings and feature flags. A plan carries defaults (plans.settings, plans.features);
-- a tenant overrides them key by key (tenants.settings, tenants.features). sutra.setting(key) and
-- sutra.feature_enabled(flag) read the current tenant's effective value from a per-backend cache
-- (src/tenancy/settings.rs), dropped when tenants or plans change, as limits are.

-- Optional rules for setting values: a type and, optionally, the allowed values. set_setting
-- refuses a value that breaks its key's rule (SQLSTATE 22023).
CREATE TABLE setting_rules (
    key text PRIMARY KEY CHECK (key ~ '^[A-Za-z0-9_.:-]{1,100}$'),
    type text NOT NULL CHECK (type IN ('string', 'number', 'boolean', 'object', 'array')),
    allowed jsonb CHECK (allowed IS NULL OR jsonb_typeof(allowed) = 'array'),
    description text NOT NULL DEFAULT ''
);
COMMENT ON TABLE setting_rules IS 'types and allowed values of tenant settings, checked by sutra.set_setting';
GRANT SELECT ON setting_rules TO PUBLIC;
GRANT INSERT, UPDATE, DELETE ON setting_rules TO sutra_service;
SELECT pg_catalog.pg_extension_config_dump('setting_rules', '');

-- A tenant's effective settings and flags, as one jsonb object {"settings": ..., "features": ...}:
-- what the per-backend cache holds.
CREATE FUNCTION _tenant_settings(tenant uuid) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object('settings', p.settings || t.settings, 'features', p.features || t.features)
    FROM sutra.tenants t JOIN sutra.plans p ON p.name = t.plan WHERE t.id = tenant;
$$;
REVOKE ALL ON FUNCTION _tenant_settings(uuid) FROM PUBLIC;

-- Each setting and flag of a tenant: the plan's value, the tenant's override and the value in force.
CREATE FUNCTION effective_settings(tenant text)
RETURNS TABLE (key text, kind text, plan_value jsonb, override_value jsonb, effective_value jsonb,
               tenant_editable boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r sutra.tenants := sutra._tenant_row(tenant);
    p sutra.plans := (SELECT x FROM sutra.plans x WHERE x.name = r.plan);
BEGIN
    IF NOT sutra._caller_is_service() AND sutra.current_tenant('read') IS DISTINCT FROM r.id THEN
        RAISE EXCEPTION 'permission denied to read the settings of another tenant' USING ERRCODE = '42501';
    END IF;
    RETURN QUERY
    SELECT k.key, k.kind, k.plan_value, k.override_value, coalesce(k.override_value, k.plan_value),
           k.key = ANY (p.tenant_editable)
    FROM (SELECT coalesce(a.key, b.key) AS key, 'setting'::text AS kind, a.value AS plan_value, b.value AS override_value
          FROM jsonb_each(p.settings) a FULL JOIN jsonb_each(r.settings) b ON b.key = a.key
          UNION ALL
          SELECT coalesce(a.key, b.key), 'feature', a.value, b.value
          FROM jsonb_each(p.features) a FULL JOIN jsonb_each(r.features) b ON b.key = a.key) k
    ORDER BY k.kind DESC, k.key;
END $$;
CREATE FUNCTION effective_settings(tenant uuid)
RETURNS TABLE (key text, kind text, plan_value jsonb, override_value jsonb, effective_value jsonb,
               tenant_editable boolean)
LANGUAGE sql STABLE AS $$ SELECT * FROM sutra.effective_settings(tenant::text) $$;

-- The tenant whose setting or flag `key` is to change: the named one for superusers and members of
-- sutra_service; the session's otherwise, with the admin scope, and only for the keys its plan
-- marks tenant-editable.
CREATE FUNCTION _settings_tenant(tenant text, key text, what text) RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t uuid;
BEGIN
    IF key IS NULL OR key !~ '^[A-Za-z0-9_.:-]{1,100}$' THEN
        RAISE EXCEPTION 'invalid % name "%"', what, left(key, 100) USING ERRCODE = '22023',
            DETAIL = 'A name is 1 to 100 characters: letters, digits, and _ . : or -.';
    END IF;
    IF tenant IS NOT NULL THEN
        PERFORM sutra._require_service('change the ' || what || 's of a named tenant');
        RETURN (sutra._tenant_row(tenant)).id;
    END IF;
    IF sutra._caller_is_service() AND sutra._context_tenant() IS NULL THEN
        RAISE EXCEPTION 'no tenant named' USING ERRCODE = '22023', HINT = 'Pass tenant => ''<uuid or slug>''.';
    END IF;
    t := sutra.current_tenant('admin');
    IF NOT sutra._caller_is_service() AND NOT EXISTS (
        SELECT 1 FROM sutra.tenants x JOIN sutra.plans p ON p.name = x.plan
        WHERE x.id = t AND key = ANY (p.tenant_editable)) THEN
        RAISE EXCEPTION 'permission denied to change % "%"', what, key USING ERRCODE = '42501',
            HINT = 'A tenant changes only the keys its plan lists in tenant_editable; sutra_service changes any.';
    END IF;
    RETURN t;
END $$;
REVOKE ALL ON FUNCTION _settings_tenant(text, text, text) FROM PUBLIC;

-- Sets one setting of a tenant, leaving the others as they are.
CREATE FUNCTION set_setting(key text, value jsonb, tenant text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t uuid := sutra._settings_tenant(tenant, key, 'setting');
    rule sutra.setting_rules;
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION 'a setting''s value must not be null' USING ERRCODE = '22023',
            HINT = 'sutra.unset_setting(key) goes back to the plan''s value.';
    END IF;
    SELECT * INTO rule FROM sutra.setting_rules x WHERE x.key = set_setting.key;
    IF FOUND AND (jsonb_typeof(value) <> rule.type
                  OR (rule.allowed IS NOT NULL AND NOT rule.allowed @> jsonb_build_array(value))) THEN
        RAISE EXCEPTION 'invalid value for setting "%"', key USING ERRCODE = '22023',
            DETAIL = format('%s takes a %s%s; the value given is %s.', key, rule.type,
                            coalesce(' among ' || rule.allowed::text, ''), left(value::text, 200));
    END IF;
    UPDATE sutra.tenants x SET settings = x.settings || jsonb_build_object(set_setting.key, value), updated_at = now()
    WHERE x.id = t;
    PERFORM sutra._audit('setting.set', t, jsonb_build_object('key', key, 'value', value));
END $$;

-- Removes a tenant's override of a setting: the plan's value applies again.
CREATE FUNCTION unset_setting(key text, tenant text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t uuid := sutra._settings_tenant(tenant, key, 'setting');
BEGIN
    UPDATE sutra.tenants x SET settings = x.settings - unset_setting.key, updated_at = now() WHERE x.id = t;
    PERFORM sutra._audit('setting.unset', t, jsonb_build_object('key', key));
END $$;

-- Turns a feature flag of a tenant on or off; null removes the override (the plan's value applies).
CREATE FUNCTION set_feature(flag text, enabled boolean, tenant text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t uuid := sutra._settings_tenant(tenant, flag, 'feature');
BEGIN
    UPDATE sutra.tenants x
    SET features = CASE WHEN enabled IS NULL THEN x.features - flag
                        ELSE x.features || jsonb_build_object(flag, enabled) END,
        updated_at = now()
    WHERE x.id = t;
    PERFORM sutra._audit('feature.set', t, jsonb_build_object('flag', flag, 'enabled', enabled));
END $$;
