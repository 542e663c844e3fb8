-- Tenancy: the tenant registry (plans, tenants) and the tenant lifecycle.
--
-- Privileges: superusers and members of sutra_service manage tenants and keys; a tenant session
-- whose context holds the admin scope manages its own tenant's keys; everyone may authenticate.
-- Functions that touch sutra's tables run as the extension's owner (SECURITY DEFINER with a fixed
-- search_path) and check the caller themselves, through sutra._caller_is_service(), which looks
-- at the role the session acts as (SET ROLE), not at the definer.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'sutra_service') THEN
        CREATE ROLE sutra_service NOLOGIN NOBYPASSRLS;
    END IF;
END $$;
COMMENT ON ROLE sutra_service IS
    'members may set any tenant context (sutra.set_tenant) and manage tenants and API keys';

-- Rows that CREATE EXTENSION seeds (plans, the default tenant, the key pepper) are also in a
-- whole-database dump; restoring the dump would insert them a second time. This trigger turns
-- the insert of a seeded key that is present into an update of the seeded row, so a restore keeps
-- the dumped version (with the user's edits) instead of failing.
CREATE FUNCTION _replace_seeded_row() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key text := TG_ARGV[0];
    value text := to_jsonb(NEW) ->> key;
    cols text;
    found boolean;
BEGIN
    IF NOT value = ANY (TG_ARGV[1:]) THEN
        RETURN NEW;
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.%I WHERE %I::text = $1)', TG_TABLE_SCHEMA, TG_TABLE_NAME, key)
        INTO found USING value;
    IF NOT found THEN
        RETURN NEW;
    END IF;
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols
    FROM pg_attribute a WHERE a.attrelid = TG_RELID AND a.attnum > 0 AND NOT a.attisdropped;
    EXECUTE format('UPDATE %I.%I SET (%s) = (SELECT %s FROM jsonb_populate_record(NULL::%I.%I, $1)) WHERE %I::text = $2',
                   TG_TABLE_SCHEMA, TG_TABLE_NAME, cols, cols, TG_TABLE_SCHEMA, TG_TABLE_NAME, key)
        USING to_jsonb(NEW), value;
    RETURN NULL;
END $$;

CREATE FUNCTION _tenants_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM sutra._invalidate_tenant_cache();
    RETURN NULL;
END $$;

-- Plans -----------------------------------------------------------------------------------------

CREATE TABLE plans (
    name text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    description text NOT NULL DEFAULT '',
    limits jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(limits) = 'object'),
    retention interval NOT NULL DEFAULT '30 days',
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Defaults of the tenants' settings and feature flags, and the keys of either that a tenant
    -- session with the admin scope may change for its own tenant (sql/tenancy/settings.sql).
    settings jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    features jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(features) = 'object'),
    tenant_editable text[] NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE plans IS 'plans: their limits (null or 0: unlimited), default settings and feature flags; user editable';
CREATE TRIGGER replace_seeded_row BEFORE INSERT ON plans
    FOR EACH ROW EXECUTE FUNCTION _replace_seeded_row('name', 'free', 'pro', 'enterprise');
-- A plan's limits apply at once in every backend (see tenant_changed below).
CREATE TRIGGER plan_changed AFTER UPDATE OR DELETE ON plans
    FOR EACH STATEMENT EXECUTE FUNCTION _tenants_changed();
INSERT INTO plans (name, description, limits, retention) VALUES
    ('free', 'Free plan', '{"rows_total": 100000, "vectors": 100000, "storage_bytes": 1073741824,
      "ops_per_second": 100, "burst": 1000, "concurrent_statements": 10, "connections": 50}', '7 days'),
    ('pro', 'Pro plan', '{"rows_total": 10000000, "vectors": 5000000, "storage_bytes": 53687091200,
      "ops_per_second": 2000, "burst": 10000, "concurrent_statements": 50, "connections": 500}', '30 days'),
    ('enterprise', 'Enterprise plan: no limits', '{}', '90 days');

-- Tenants ---------------------------------------------------------------------------------------

CREATE TABLE tenants (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    name text NOT NULL,
    plan text NOT NULL REFERENCES plans (name) ON UPDATE CASCADE,
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'deleted')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    purge_after timestamptz,
    settings jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    quota_overrides jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(quota_overrides) = 'object'),
    -- Overrides of the plan's feature flags (settings overrides the plan's settings).
    features jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(features) = 'object'),
    CHECK ((status = 'deleted') = (deleted_at IS NOT NULL))
);
COMMENT ON TABLE tenants IS 'the tenant registry; change it through sutra.create_tenant and friends';
CREATE TRIGGER replace_seeded_row BEFORE INSERT ON tenants
    FOR EACH ROW EXECUTE FUNCTION _replace_seeded_row('id', '00000000-0000-0000-0000-000000000000');
INSERT INTO tenants (id, slug, name, plan)
    VALUES ('00000000-0000-0000-0000-000000000000', 'default', 'Default tenant', 'enterprise');
-- Every backend caches tenant status (a suspended or deleted tenant's context stops working at
-- once): a change of status or plan invalidates those caches.
CREATE TRIGGER tenant_changed AFTER UPDATE OR DELETE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION _tenants_changed();
-- Reports find the tenants of a plan, and those with monthly caps of their own, without reading
-- every tenant (sutra.tenants_near_limits).
CREATE INDEX ON tenants (plan);
CREATE INDEX tenants_with_usage_caps ON tenants (id) WHERE quota_overrides ?| '{monthly,daily,monthly_cost,daily_cost}';

-- Privileges and row level security ------------------------------------------------------------

GRANT USAGE ON SCHEMA sutra TO PUBLIC;
REVOKE ALL ON plans, tenants FROM PUBLIC;
GRANT SELECT ON plans, tenants TO PUBLIC;

-- sutra's own per-tenant tables: sutra_service reads every row, a tenant session its own rows
-- when its context holds `scope`. Writes go through sutra's functions only.
CREATE FUNCTION _own_rows_policies(tbl regclass, tenant_column name, scope text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    EXECUTE format('CREATE POLICY service ON %s FOR SELECT TO sutra_service USING (true)', tbl);
    EXECUTE format('CREATE POLICY own_tenant ON %s FOR SELECT USING (%I = (SELECT sutra.current_tenant(%L)))',
                   tbl, tenant_column, scope);
END $$;
SELECT _own_rows_policies('tenants', 'id', 'read');

SELECT pg_catalog.pg_extension_config_dump('plans', '');
SELECT pg_catalog.pg_extension_config_dump('tenants', '');

-- Helpers ---------------------------------------------------------------------------------------

-- Fails unless the caller (the role the session acts as) is a superuser or a member of
-- sutra_service.
CREATE FUNCTION _require_service(what text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT sutra._caller_is_service() THEN
        RAISE EXCEPTION 'permission denied to %', what USING ERRCODE = '42501',
            HINT = 'Only superusers and members of sutra_service may do this.';
    END IF;
END $$;

-- The tenant a uuid or slug names, with its row locked against concurrent lifecycle changes when
-- lock is true.
CREATE FUNCTION _tenant_row(tenant text, lock boolean DEFAULT false) RETURNS tenants
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r sutra.tenants;
BEGIN
    IF tenant ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$' THEN
        IF lock THEN
            SELECT * INTO r FROM sutra.tenants t WHERE t.id = tenant::uuid FOR UPDATE;
        ELSE
            SELECT * INTO r FROM sutra.tenants t WHERE t.id = tenant::uuid;
        END IF;
    ELSIF lock THEN
        SELECT * INTO r FROM sutra.tenants t WHERE t.slug = tenant FOR UPDATE;
    ELSE
        SELECT * INTO r FROM sutra.tenants t WHERE t.slug = tenant;
    END IF;
    -- A tenant session sees its own tenant only: another tenant is reported exactly as one that
    -- does not exist, so that the error tells nothing about other tenants.
    IF r.id IS NULL OR NOT (sutra._caller_is_service() OR r.id = sutra._context_tenant()) THEN
        RAISE EXCEPTION 'tenant "%" does not exist', tenant USING ERRCODE = '42704',
            HINT = 'Name a tenant by its uuid or its slug.';
    END IF;
    RETURN r;
END $$;
REVOKE ALL ON FUNCTION _tenant_row(text, boolean) FROM PUBLIC;

-- The uuid of a tenant named by uuid or slug; an error for an unknown tenant.
CREATE FUNCTION tenant_id(tenant text) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT (sutra._tenant_row(tenant)).id;
$$;
REVOKE ALL ON FUNCTION tenant_id(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenant_id(text) TO sutra_service;

CREATE FUNCTION _check_slug(slug text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF slug IS NULL OR slug !~ '^[a-z0-9][a-z0-9-]{1,62}$' THEN
        RAISE EXCEPTION 'invalid tenant slug "%"', slug USING ERRCODE = '22023',
            DETAIL = 'A slug is 2 to 63 lower-case letters, digits and hyphens, starting with a letter or a digit.';
    END IF;
END $$;

CREATE FUNCTION _check_plan(plan text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM sutra.plans p WHERE p.name = plan) THEN
        RAISE EXCEPTION 'plan "%" does not exist', plan USING ERRCODE = '42704',
            HINT = 'The plans are listed in sutra.plans.';
    END IF;
END $$;

-- Tenant lifecycle ------------------------------------------------------------------------------

CREATE FUNCTION create_tenant(slug text, name text DEFAULT NULL, plan text DEFAULT 'free',
                              settings jsonb DEFAULT '{}', quota_overrides jsonb DEFAULT '{}',
                              id uuid DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id uuid;
BEGIN
    PERFORM sutra._require_service('create a tenant');
    PERFORM sutra._check_slug(slug);
    PERFORM sutra._check_plan(plan);
    BEGIN
        INSERT INTO sutra.tenants (id, slug, name, plan, settings, quota_overrides)
        VALUES (coalesce(create_tenant.id, gen_random_uuid()), slug, coalesce(name, slug), plan,
                coalesce(settings, '{}'), coalesce(quota_overrides, '{}'))
        RETURNING tenants.id INTO new_id;
    EXCEPTION WHEN unique_violation THEN
        IF EXISTS (SELECT 1 FROM sutra.tenants t WHERE t.slug = create_tenant.slug) THEN
            RAISE EXCEPTION 'tenant "%" already exists', slug USING ERRCODE = '23505',
                DETAIL = 'Tenant slugs are unique.';
        END IF;
        RAISE EXCEPTION 'a tenant with id % already exists', create_tenant.id USING ERRCODE = '23505';
    END;
    PERFORM sutra._audit('tenant.create', new_id,
        jsonb_build_object('slug', slug, 'plan', plan));
    RETURN new_id;
END $$;

CREATE FUNCTION update_tenant(tenant text, name text DEFAULT NULL, plan text DEFAULT NULL,
                              settings jsonb DEFAULT NULL, quota_overrides jsonb DEFAULT NULL,
                              slug text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r sutra.tenants;
BEGIN
    PERFORM sutra._require_service('update a tenant');
    r := sutra._tenant_row(tenant, true);
    IF slug IS NOT NULL THEN
        PERFORM sutra._check_slug(slug);
        IF EXISTS (SELECT 1 FROM sutra.tenants t WHERE t.slug = update_tenant.slug AND t.id <> r.id) THEN
            RAISE EXCEPTION 'tenant "%" already exists', slug USING ERRCODE = '23505',
                DETAIL = 'Tenant slugs are unique.';
        END IF;
    END IF;
    IF plan IS NOT NULL THEN
        PERFORM sutra._check_plan(plan);
    END IF;
    UPDATE sutra.tenants t SET
        name = coalesce(update_tenant.name, t.name),
        plan = coalesce(update_tenant.plan, t.plan),
        settings = coalesce(update_tenant.settings, t.settings),
        quota_overrides = coalesce(update_tenant.quota_overrides, t.quota_overrides),
        slug = coalesce(update_tenant.slug, t.slug),
        updated_at = now()
    WHERE t.id = r.id;
    PERFORM sutra._audit('tenant.update', r.id, jsonb_strip_nulls(jsonb_build_object(
        'name', name, 'plan', plan, 'settings', settings, 'quota_overrides', quota_overrides,
        'slug', slug)));
    RETURN r.id;
END $$;

CREATE FUNCTION _set_status(tenant text, new_status text, action text) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r sutra.tenants;
BEGIN
    PERFORM sutra._require_service(replace(action, 'tenant.', '') || ' a tenant');
    r := sutra._tenant_row(tenant, true);
    IF r.id = '00000000-0000-0000-0000-000000000000' AND new_status <> 'active' THEN
        RAISE EXCEPTION 'the default tenant cannot be suspended or dropped' USING ERRCODE = '55000';
    END IF;
    IF r.status = 'deleted' AND new_status = 'suspended' THEN
        RAISE EXCEPTION 'tenant "%" is deleted', r.slug USING ERRCODE = '55000',
            HINT = 'Resume it first with sutra.resume_tenant.';
    END IF;
    UPDATE sutra.tenants t SET status = new_status, updated_at = now(),
        deleted_at = CASE WHEN new_status = 'deleted' THEN coalesce(t.deleted_at, now()) END,
        purge_after = CASE WHEN new_status = 'deleted'
            THEN coalesce(t.deleted_at, now()) + (SELECT p.retention FROM sutra.plans p WHERE p.name = t.plan) END
    WHERE t.id = r.id;
    PERFORM sutra._audit(action, r.id, jsonb_build_object('from', r.status, 'to', new_status));
    RETURN r.id;
END $$;
REVOKE ALL ON FUNCTION _set_status(text, text, text) FROM PUBLIC;

CREATE FUNCTION suspend_tenant(tenant text) RETURNS uuid
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT sutra._set_status(tenant, 'suspended', 'tenant.suspend');
$$;

CREATE FUNCTION resume_tenant(tenant text) RETURNS uuid
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT sutra._set_status(tenant, 'active', 'tenant.resume');
$$;

-- Deletes every row of a tenant from every tenant table, its keys and its registry row.
CREATE FUNCTION _purge_tenant(tenant uuid) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t record;
    n bigint;
    removed jsonb := '{}';
BEGIN
    FOR t IN SELECT table_name, tenant_column FROM sutra.tenant_tables
             WHERE table_name IN (SELECT c.oid FROM pg_class c) ORDER BY table_name::text LOOP
        n := sutra._purge_rows(t.table_name::oid, t.tenant_column, tenant);
        removed := removed || jsonb_build_object(t.table_name::text, n);
    END LOOP;
    DELETE FROM sutra.api_key_store k WHERE k.tenant_id = tenant;
    -- Usage (sql/usage.sql) goes with the tenant.
    DELETE FROM sutra.usage_events e WHERE e.tenant_id = tenant;
    DELETE FROM sutra.usage_event_keys e WHERE e.tenant_id = tenant;
    DELETE FROM sutra.usage_rollups r WHERE r.tenant_id = tenant;
    DELETE FROM sutra.usage_totals u WHERE u.tenant_id = tenant;
    DELETE FROM sutra.tenant_secrets s WHERE s.tenant_id = tenant;
    DELETE FROM sutra.tenant_members m WHERE m.tenant_id = tenant;
    DELETE FROM sutra.tenants x WHERE x.id = tenant;
    RETURN removed;
END $$;
REVOKE ALL ON FUNCTION _purge_tenant(uuid) FROM PUBLIC;

CREATE FUNCTION drop_tenant(tenant text, purge boolean DEFAULT false) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r sutra.tenants;
    removed jsonb;
BEGIN
    PERFORM sutra._require_service('drop a tenant');
    r := sutra._tenant_row(tenant, true);
    IF r.id = '00000000-0000-0000-0000-000000000000' THEN
        RAISE EXCEPTION 'the default tenant cannot be suspended or dropped' USING ERRCODE = '55000';
    END IF;
    IF NOT purge THEN
        RETURN sutra._set_status(r.id::text, 'deleted', 'tenant.drop');
    END IF;
    removed := sutra._purge_tenant(r.id);
    PERFORM sutra._audit('tenant.purge', r.id,
        jsonb_build_object('slug', r.slug, 'rows_removed', removed));
    RETURN r.id;
END $$;

-- Purges the soft-deleted tenants whose retention has run out; run it from a scheduler.
CREATE FUNCTION purge_expired_tenants() RETURNS SETOF uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    PERFORM sutra._require_service('purge tenants');
    FOR r IN SELECT t.id, t.slug FROM sutra.tenants t
             WHERE t.status = 'deleted' AND t.purge_after <= now() FOR UPDATE LOOP
        PERFORM sutra._audit('tenant.purge', r.id, jsonb_build_object('slug', r.slug,
            'rows_removed', sutra._purge_tenant(r.id), 'reason', 'retention'));
        RETURN NEXT r.id;
    END LOOP;
END $$;

-- uuid forms of the functions that take a tenant.
CREATE FUNCTION update_tenant(tenant uuid, name text DEFAULT NULL, plan text DEFAULT NULL,
                              settings jsonb DEFAULT NULL, quota_overrides jsonb DEFAULT NULL,
                              slug text DEFAULT NULL)
RETURNS uuid LANGUAGE sql AS $$
    SELECT sutra.update_tenant(tenant::text, name, plan, settings, quota_overrides, slug);
$$;
CREATE FUNCTION suspend_tenant(tenant uuid) RETURNS uuid LANGUAGE sql AS $$
    SELECT sutra.suspend_tenant(tenant::text);
$$;
CREATE FUNCTION resume_tenant(tenant uuid) RETURNS uuid LANGUAGE sql AS $$
    SELECT sutra.resume_tenant(tenant::text);
$$;
CREATE FUNCTION drop_tenant(tenant uuid, purge boolean DEFAULT false) RETURNS uuid LANGUAGE sql AS $$
    SELECT sutra.drop_tenant(tenant::text, purge);
$$;
CREATE FUNCTION tenant_id(tenant uuid) RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT sutra.tenant_id(tenant::text);
$$;

-- Who may call what -----------------------------------------------------------------------------

REVOKE ALL ON FUNCTION _check_plan(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION _replace_seeded_row() FROM PUBLIC;
REVOKE ALL ON FUNCTION _own_rows_policies(regclass, name, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION _tenants_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION _invalidate_tenant_cache() FROM PUBLIC;
REVOKE ALL ON FUNCTION _purge_rows(oid, text, uuid) FROM PUBLIC;
