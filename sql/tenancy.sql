-- Tenancy: the tenant registry, plans, API keys, the audit log and tenant tables.
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
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE plans IS 'plans and their limits (null or 0: unlimited); user editable';
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

-- Secrets (superusers only) ---------------------------------------------------------------------

CREATE TABLE secrets (
    name text PRIMARY KEY,
    value bytea NOT NULL
);
COMMENT ON TABLE secrets IS 'server-side secrets (the API key pepper); superusers only';
CREATE TRIGGER replace_seeded_row BEFORE INSERT ON secrets
    FOR EACH ROW EXECUTE FUNCTION _replace_seeded_row('name', 'api_key_pepper');
INSERT INTO secrets VALUES ('api_key_pepper', _random_bytes(32));

-- API keys --------------------------------------------------------------------------------------

CREATE TABLE api_key_store (
    key_id text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{16}$'),
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name text NOT NULL,
    scopes text[] NOT NULL CHECK (scopes <@ '{read,write,admin}' AND cardinality(scopes) > 0),
    secret_hash bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz,
    last_used_at timestamptz,
    replaced_by text
);
CREATE INDEX ON api_key_store (tenant_id);
-- Revoking a key, or moving its expiry, ends the contexts it granted, in every backend (see tenant_changed).
CREATE TRIGGER key_revoked AFTER UPDATE OF revoked_at, expires_at ON api_key_store
    FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at OR OLD.expires_at IS DISTINCT FROM NEW.expires_at)
    EXECUTE FUNCTION _tenants_changed();
CREATE TRIGGER key_deleted AFTER DELETE ON api_key_store
    FOR EACH STATEMENT EXECUTE FUNCTION _tenants_changed();
COMMENT ON TABLE api_key_store IS 'API keys: only an HMAC of each secret; read through sutra.api_keys';

CREATE VIEW api_keys WITH (security_invoker = true) AS
    SELECT key_id, tenant_id, name, scopes, created_at, expires_at, revoked_at, last_used_at,
           replaced_by,
           CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
                WHEN expires_at <= now() THEN 'expired'
                ELSE 'active' END AS status
    FROM api_key_store;

-- Audit log -------------------------------------------------------------------------------------

CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    tenant_id uuid,
    action text NOT NULL,
    actor name NOT NULL,
    session_role name NOT NULL,
    context_tenant uuid,
    client_addr inet,
    details jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX ON audit_log (tenant_id, at);
COMMENT ON TABLE audit_log IS 'who did what to which tenant, when, from where; append-only';

-- Writes one audit row. Only sutra's own functions call it.
CREATE FUNCTION _audit(action text, tenant uuid, details jsonb DEFAULT '{}') RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO sutra.audit_log (tenant_id, action, actor, session_role, context_tenant, client_addr, details)
    VALUES (tenant, action, sutra._caller(), session_user, sutra._context_tenant(),
            inet_client_addr(), coalesce(details, '{}'));
$$;

-- Tenant tables ---------------------------------------------------------------------------------

CREATE TABLE tenant_tables (
    table_name regclass PRIMARY KEY,
    tenant_column name NOT NULL,
    enabled_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE tenant_tables IS 'tables whose rows belong to tenants (sutra.enable_tenancy)';

-- A dropped table stops being a tenant table.
CREATE FUNCTION _tenant_table_dropped() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF to_regclass('sutra.tenant_tables') IS NULL THEN
        RETURN;
    END IF;
    DELETE FROM sutra.tenant_tables t
    WHERE t.table_name::oid IN (SELECT d.objid FROM pg_event_trigger_dropped_objects() d
                                WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0);
END $$;
CREATE EVENT TRIGGER sutra_tenant_table_dropped ON sql_drop
    EXECUTE FUNCTION _tenant_table_dropped();

-- A partition created in or attached to a tenant table gets the table's policies.
CREATE FUNCTION _tenant_partition_added() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    IF to_regclass('sutra.tenant_tables') IS NULL THEN
        RETURN;
    END IF;
    FOR r IN SELECT DISTINCT pc.oid::regclass AS part, t.tenant_column
             FROM pg_event_trigger_ddl_commands() d
             CROSS JOIN LATERAL pg_partition_tree(d.objid) p
             JOIN pg_class pc ON pc.oid = p.relid
             JOIN sutra.tenant_tables t ON t.table_name = pg_partition_root(pc.oid)
             WHERE d.classid = 'pg_class'::regclass AND pc.relispartition
               AND NOT (pc.relrowsecurity AND pc.relforcerowsecurity
                        AND (SELECT count(*) FROM pg_policy x WHERE x.polrelid = pc.oid
                             AND x.polname LIKE 'sutra\_tenant\_%') = 4) LOOP
        PERFORM sutra._apply_tenant_policies(r.part, r.tenant_column);
    END LOOP;
END $$;
CREATE EVENT TRIGGER sutra_tenant_partition_added ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
    EXECUTE FUNCTION _tenant_partition_added();

-- Privileges and row level security on sutra's own tables --------------------------------------

GRANT USAGE ON SCHEMA sutra TO PUBLIC;

REVOKE ALL ON plans, tenants, secrets, api_key_store, audit_log, tenant_tables FROM PUBLIC;
GRANT SELECT ON plans, tenant_tables TO PUBLIC;
GRANT SELECT ON tenants, audit_log, api_keys TO PUBLIC;
GRANT SELECT (key_id, tenant_id, name, scopes, created_at, expires_at, revoked_at, last_used_at,
              replaced_by) ON api_key_store TO PUBLIC;

ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE secrets FORCE ROW LEVEL SECURITY;

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
SELECT _own_rows_policies('api_key_store', 'tenant_id', 'admin');
SELECT _own_rows_policies('audit_log', 'tenant_id', 'admin');

SELECT pg_catalog.pg_extension_config_dump('plans', '');
SELECT pg_catalog.pg_extension_config_dump('tenants', '');
SELECT pg_catalog.pg_extension_config_dump('secrets', '');
SELECT pg_catalog.pg_extension_config_dump('api_key_store', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('tenant_tables', '');

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
    DELETE FROM sutra.usage_cap_locks c WHERE c.tenant_id = tenant;
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

-- API key management ----------------------------------------------------------------------------

-- Fails unless the caller may act on the tenant's own affairs (`what`): sutra_service, or a
-- session of that tenant holding the admin scope.
CREATE FUNCTION _require_tenant_admin(tenant uuid, what text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF sutra._caller_is_service() THEN
        RETURN;
    END IF;
    IF sutra.current_tenant('admin') IS DISTINCT FROM tenant THEN
        RAISE EXCEPTION 'permission denied to % of another tenant', what USING ERRCODE = '42501';
    END IF;
END $$;

CREATE FUNCTION _require_key_admin(tenant uuid) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT sutra._require_tenant_admin(tenant, 'manage the API keys');
$$;

CREATE FUNCTION _check_scopes(scopes text[]) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF scopes IS NULL OR cardinality(scopes) = 0 OR NOT scopes <@ '{read,write,admin}'::text[]
       OR array_position(scopes, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'invalid scopes %', coalesce(scopes::text, 'NULL') USING ERRCODE = '22023',
            DETAIL = 'Scopes are read, write and admin; a key has at least one.';
    END IF;
END $$;

CREATE FUNCTION _insert_api_key(tenant uuid, name text, scopes text[], expires_at timestamptz)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k record;
BEGIN
    SELECT * INTO k FROM sutra._mint_api_key(
        (SELECT s.value FROM sutra.secrets s WHERE s.name = 'api_key_pepper'));
    INSERT INTO sutra.api_key_store (key_id, tenant_id, name, scopes, secret_hash, expires_at)
    VALUES (k.key_id, tenant, name, ARRAY(SELECT DISTINCT unnest(scopes) ORDER BY 1), k.secret_hash,
            expires_at);
    RETURN k.api_key;
END $$;
REVOKE ALL ON FUNCTION _insert_api_key(uuid, text, text[], timestamptz) FROM PUBLIC;

-- Returns the full key, once; only an HMAC of its secret is stored.
CREATE FUNCTION create_api_key(tenant text, name text DEFAULT 'default',
                               scopes text[] DEFAULT '{read,write}', expires_at timestamptz DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r sutra.tenants;
    key text;
BEGIN
    r := sutra._tenant_row(tenant);
    PERFORM sutra._require_key_admin(r.id);
    PERFORM sutra._check_scopes(scopes);
    IF r.status <> 'active' THEN
        RAISE EXCEPTION 'tenant "%" is %', r.slug, r.status USING ERRCODE = '55000';
    END IF;
    IF expires_at <= now() THEN
        RAISE EXCEPTION 'expires_at is in the past' USING ERRCODE = '22023';
    END IF;
    key := sutra._insert_api_key(r.id, coalesce(name, 'default'), scopes, expires_at);
    PERFORM sutra._audit('api_key.create', r.id, jsonb_build_object(
        'key_id', sutra._key_id_of(key), 'name', name, 'scopes', scopes, 'expires_at', expires_at));
    RETURN key;
END $$;
CREATE FUNCTION create_api_key(tenant uuid, name text DEFAULT 'default',
                               scopes text[] DEFAULT '{read,write}', expires_at timestamptz DEFAULT NULL)
RETURNS text LANGUAGE sql AS $$
    SELECT sutra.create_api_key(tenant::text, name, scopes, expires_at);
$$;

CREATE FUNCTION _api_key_row(key_id text) RETURNS api_key_store
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k sutra.api_key_store;
BEGIN
    SELECT * INTO k FROM sutra.api_key_store s WHERE s.key_id = _api_key_row.key_id FOR UPDATE;
    -- Another tenant's key is reported exactly as a key that does not exist.
    IF k.key_id IS NULL OR NOT (sutra._caller_is_service() OR k.tenant_id = sutra._context_tenant()) THEN
        RAISE EXCEPTION 'API key "%" does not exist', key_id USING ERRCODE = '42704';
    END IF;
    PERFORM sutra._require_key_admin(k.tenant_id);
    RETURN k;
END $$;
REVOKE ALL ON FUNCTION _api_key_row(text) FROM PUBLIC;

CREATE FUNCTION revoke_api_key(key_id text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k sutra.api_key_store := sutra._api_key_row(key_id);
BEGIN
    UPDATE sutra.api_key_store s SET revoked_at = coalesce(s.revoked_at, now())
    WHERE s.key_id = k.key_id;
    PERFORM sutra._audit('api_key.revoke', k.tenant_id, jsonb_build_object('key_id', k.key_id));
END $$;

-- Issues a new key with the same tenant, name, scopes and expiry, and retires the old one: at
-- once, or after grace (so running clients can switch over).
CREATE FUNCTION rotate_api_key(key_id text, grace interval DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k sutra.api_key_store := sutra._api_key_row(key_id);
    key text;
BEGIN
    IF k.revoked_at IS NOT NULL THEN
        RAISE EXCEPTION 'API key "%" is revoked', k.key_id USING ERRCODE = '55000';
    END IF;
    key := sutra._insert_api_key(k.tenant_id, k.name, k.scopes, k.expires_at);
    UPDATE sutra.api_key_store s SET
        replaced_by = sutra._key_id_of(key),
        revoked_at = CASE WHEN grace IS NULL THEN now() END,
        expires_at = CASE WHEN grace IS NULL THEN s.expires_at
                          ELSE least(s.expires_at, now() + grace) END
    WHERE s.key_id = k.key_id;
    PERFORM sutra._audit('api_key.rotate', k.tenant_id, jsonb_build_object(
        'key_id', k.key_id, 'new_key_id', sutra._key_id_of(key), 'grace', grace));
    RETURN key;
END $$;

-- Tenant tables ---------------------------------------------------------------------------------

-- Registration of tenant tables. sutra.enable_tenancy runs as its caller, the table's owner, and
-- registers the table with a plain INSERT into sutra.tenant_tables, which row level security allows
-- only for an ordinary or partitioned, permanent or unlogged table outside the system schemas and
-- sutra's, with a uuid tenant column, owned by the caller (or a role the caller is a member of).
-- No privileged function is
-- involved, and nothing registered is ever read with more rights than its owner's: sutra counts
-- rows of registered tables without running their code (src/usage/count.rs).
CREATE FUNCTION _may_register(tbl regclass, tenant_column name) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((
        SELECT c.relkind IN ('r', 'p') AND c.relpersistence IN ('p', 'u')
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'sutra', 'pg_toast')
               AND pg_has_role(current_user, c.relowner, 'USAGE')
               AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = tenant_column
                           AND NOT a.attisdropped AND a.atttypid = 'uuid'::regtype)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = tbl), false);
$$;

CREATE FUNCTION _owns(tbl regclass) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c WHERE c.oid = tbl), false);
$$;

ALTER TABLE tenant_tables ENABLE ROW LEVEL SECURITY;
CREATE POLICY everyone_reads ON tenant_tables FOR SELECT USING (true);
CREATE POLICY owner_registers ON tenant_tables FOR INSERT
    WITH CHECK (sutra._may_register(table_name, tenant_column));
CREATE POLICY owner_changes ON tenant_tables FOR UPDATE USING (sutra._owns(table_name))
    WITH CHECK (sutra._may_register(table_name, tenant_column));
CREATE POLICY owner_unregisters ON tenant_tables FOR DELETE USING (sutra._owns(table_name));
GRANT INSERT, UPDATE (tenant_column), DELETE ON tenant_tables TO PUBLIC;

-- Every registration and its end is audited (a trigger: nobody can call it). A restore of a dump
-- (pg_restore and pg_dump's scripts run with row_security = off) brings back the audit log it
-- dumped, so the registrations it restores are not audited a second time.
CREATE FUNCTION _tenant_table_audit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- Every backend's cache of which tables are registered (the quota triggers consult it).
    PERFORM sutra._invalidate_tenant_cache();
    IF current_setting('row_security') = 'off' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        PERFORM sutra._audit('tenancy.disable', NULL, jsonb_build_object('table', OLD.table_name::text));
    ELSE
        PERFORM sutra._audit('tenancy.enable', NULL,
            jsonb_build_object('table', NEW.table_name::text, 'tenant_column', NEW.tenant_column));
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON tenant_tables
    FOR EACH ROW EXECUTE FUNCTION _tenant_table_audit();

CREATE FUNCTION _drop_tenant_policies(tbl regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p name;
BEGIN
    FOR p IN SELECT polname FROM pg_policy WHERE polrelid = tbl AND polname LIKE 'sutra\_tenant\_%' LOOP
        EXECUTE format('DROP POLICY %I ON %s', p, tbl);
    END LOOP;
END $$;

-- A table and, if it is partitioned, all its partitions at every level.
CREATE FUNCTION _table_and_partitions(tbl regclass) RETURNS SETOF regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT tbl UNION SELECT p.relid FROM pg_partition_tree(tbl) p;
$$;

-- Row level security, forced, and sutra's four policies on one table (or partition).
CREATE FUNCTION _apply_tenant_policies(tbl regclass, tenant_column name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM sutra._drop_tenant_policies(tbl);
    EXECUTE format('CREATE POLICY sutra_tenant_select ON %s FOR SELECT USING (%I = (SELECT sutra.current_tenant(''read'')))',
                   tbl, tenant_column);
    EXECUTE format('CREATE POLICY sutra_tenant_insert ON %s FOR INSERT WITH CHECK (%I = (SELECT sutra.current_tenant(''write'')))',
                   tbl, tenant_column);
    EXECUTE format('CREATE POLICY sutra_tenant_update ON %s FOR UPDATE USING (%I = (SELECT sutra.current_tenant(''write'')))'
                   ' WITH CHECK (%I = (SELECT sutra.current_tenant(''write'')))', tbl, tenant_column, tenant_column);
    EXECUTE format('CREATE POLICY sutra_tenant_delete ON %s FOR DELETE USING (%I = (SELECT sutra.current_tenant(''write'')))',
                   tbl, tenant_column);
    -- Last and in one statement: the partition event trigger sees the table complete and stops.
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', tbl);
END $$;

-- Whether a valid, non-partial btree index of the table is led by column `col`.
CREATE FUNCTION _has_tenant_btree(tbl regclass, col int2) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                   WHERE i.indrelid = tbl AND i.indkey[0] = col AND i.indisvalid AND i.indpred IS NULL
                     AND ic.relam = (SELECT a.oid FROM pg_am a WHERE a.amname = 'btree'));
$$;

-- Turns a table into a tenant table. Runs as the caller, who must own the table.
CREATE FUNCTION enable_tenancy(tbl regclass, tenant_column name DEFAULT 'tenant_id') RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col_type regtype;
    col_num int2;
    indexed boolean;
    short_name text := (SELECT c.relname FROM pg_class c WHERE c.oid = tbl);
BEGIN
    IF (SELECT c.relkind FROM pg_class c WHERE c.oid = tbl) NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '"%" is not a table', tbl USING ERRCODE = '42809',
            DETAIL = 'Only ordinary and partitioned tables can be tenant tables.';
    END IF;
    IF (SELECT c.relpersistence FROM pg_class c WHERE c.oid = tbl) = 't' THEN
        RAISE EXCEPTION 'temporary table % cannot be a tenant table', tbl USING ERRCODE = '42809',
            DETAIL = 'A temporary table belongs to one session.';
    END IF;
    IF tbl::oid IN (SELECT d.objid FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
                    WHERE e.extname = 'sutra' AND d.classid = 'pg_class'::regclass) THEN
        RAISE EXCEPTION 'table % belongs to sutra', tbl USING ERRCODE = '42809';
    END IF;
    SELECT a.atttypid, a.attnum INTO col_type, col_num FROM pg_attribute a
    WHERE a.attrelid = tbl AND a.attname = tenant_column AND NOT a.attisdropped;
    IF col_type IS NULL THEN
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I uuid NOT NULL DEFAULT %L::uuid',
                       tbl, tenant_column, '00000000-0000-0000-0000-000000000000');
    ELSIF col_type <> 'uuid'::regtype THEN
        RAISE EXCEPTION 'column "%" of % is of type %, not uuid', tenant_column, tbl, col_type
            USING ERRCODE = '42804';
    ELSE
        EXECUTE format('UPDATE %s SET %I = %L WHERE %I IS NULL', tbl, tenant_column,
                       '00000000-0000-0000-0000-000000000000', tenant_column);
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', tbl, tenant_column);
    END IF;
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT sutra.current_tenant()', tbl, tenant_column);
    -- The table and each of its partitions: a partition read or written directly applies its
    -- own policies, not its parent's.
    PERFORM sutra._apply_tenant_policies(m, tenant_column) FROM sutra._table_and_partitions(tbl) m;
    SELECT a.attnum INTO col_num FROM pg_attribute a
    WHERE a.attrelid = tbl AND a.attname = tenant_column;
    -- A btree led by the tenant column serves every query under the policies; another index led by
    -- it (a sutra_hnsw index, say) serves vector searches only.
    indexed := sutra._has_tenant_btree(tbl, col_num);
    IF NOT indexed THEN
        EXECUTE format('CREATE INDEX %I ON %s (%I)',
                       left(short_name || '_' || tenant_column, 53) || '_sutra_idx', tbl, tenant_column);
    END IF;
    -- Quota accounting (sql/usage.sql): AFTER ROW, so that COPY keeps its batched inserts.
    IF NOT EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = tbl AND g.tgname = 'sutra_quota_row') THEN
        EXECUTE format('CREATE TRIGGER sutra_quota_row AFTER INSERT OR UPDATE OR DELETE ON %s '
                       'FOR EACH ROW EXECUTE FUNCTION sutra._quota_row(%L)', tbl, tenant_column);
        EXECUTE format('CREATE TRIGGER sutra_quota_truncate BEFORE TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION sutra._quota_truncate(%L)', tbl, tenant_column);
    END IF;
    INSERT INTO sutra.tenant_tables AS t (table_name, tenant_column) VALUES (tbl, tenant_column)
    ON CONFLICT (table_name) DO UPDATE SET tenant_column = EXCLUDED.tenant_column;
END $$;

-- Undoes enable_tenancy's security: policies, row level security and the registration. The
-- tenant column, its data and its index stay.
CREATE FUNCTION disable_tenancy(tbl regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col name := (SELECT t.tenant_column FROM sutra.tenant_tables t WHERE t.table_name = tbl);
    part regclass;
BEGIN
    IF col IS NULL THEN
        RAISE EXCEPTION 'table % is not a tenant table', tbl USING ERRCODE = '42809',
            HINT = 'Tenant tables are listed in sutra.tenant_tables.';
    END IF;
    FOR part IN SELECT m FROM sutra._table_and_partitions(tbl) m LOOP
        PERFORM sutra._drop_tenant_policies(part);
        EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', part);
        EXECUTE format('ALTER TABLE %s DISABLE ROW LEVEL SECURITY', part);
    END LOOP;
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT', tbl, col);
    IF EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = tbl AND g.tgname = 'sutra_quota_row') THEN
        EXECUTE format('DROP TRIGGER sutra_quota_row ON %s', tbl);
        EXECUTE format('DROP TRIGGER sutra_quota_truncate ON %s', tbl);
    END IF;
    DELETE FROM sutra.tenant_tables t WHERE t.table_name = tbl;
END $$;

-- What row level security cannot fix about a tenant table, one row per finding.
CREATE FUNCTION check_tenancy(tbl regclass)
RETURNS TABLE (severity text, object text, problem text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col name := (SELECT t.tenant_column FROM sutra.tenant_tables t WHERE t.table_name = tbl);
    col_num int2;
    owner oid := (SELECT c.relowner FROM pg_class c WHERE c.oid = tbl);
    r record;
BEGIN
    IF col IS NULL THEN
        RETURN QUERY SELECT 'error', tbl::text, 'not a tenant table: run sutra.enable_tenancy on it';
        RETURN;
    END IF;
    SELECT a.attnum INTO col_num FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = col;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = col
                   AND NOT a.attisdropped AND a.atttypid = 'uuid'::regtype) THEN
        RETURN QUERY SELECT 'error', format('column %I', col),
            'the tenant column is not of type uuid: quotas do not count this table';
    END IF;
    IF NOT (SELECT c.relrowsecurity AND c.relforcerowsecurity FROM pg_class c WHERE c.oid = tbl) THEN
        RETURN QUERY SELECT 'error', tbl::text, 'row level security is not enabled and forced';
    END IF;
    IF (SELECT count(*) FROM pg_policy p WHERE p.polrelid = tbl AND p.polname LIKE 'sutra_tenant_%') < 4 THEN
        RETURN QUERY SELECT 'error', tbl::text, 'a sutra_tenant_* policy is missing';
    END IF;
    IF NOT sutra._has_tenant_btree(tbl, col_num) THEN
        RETURN QUERY SELECT 'warning', tbl::text,
            format('no btree index led by %I: every query under row level security reads the whole table', col);
    END IF;
    FOR r IN SELECT p.relid AS part FROM pg_partition_tree(tbl) p JOIN pg_class c ON c.oid = p.relid
             WHERE p.relid <> tbl AND NOT (c.relrowsecurity AND c.relforcerowsecurity
                   AND (SELECT count(*) FROM pg_policy x WHERE x.polrelid = c.oid
                        AND x.polname LIKE 'sutra_tenant_%') = 4) LOOP
        RETURN QUERY SELECT 'error', format('partition %s', r.part),
            'partition without forced row level security and sutra''s policies: read directly, it shows every tenant';
    END LOOP;
    FOR r IN SELECT p.polname FROM pg_policy p
             WHERE p.polrelid = tbl AND p.polname NOT LIKE 'sutra_tenant_%' AND p.polpermissive LOOP
        RETURN QUERY SELECT 'warning', format('policy %I', r.polname),
            'a permissive policy besides sutra''s widens what a tenant sees';
    END LOOP;
    -- Unique indexes (primary keys and unique constraints included) not led by the tenant column:
    -- a tenant learns that another tenant's value exists from the unique violation.
    FOR r IN SELECT i.indexrelid::regclass AS idx FROM pg_index i
             WHERE i.indrelid = tbl AND i.indisunique AND i.indkey[0] <> col_num LOOP
        RETURN QUERY SELECT 'warning', format('index %s', r.idx),
            format('unique index not led by %I: its violations reveal other tenants'' values', col);
    END LOOP;
    FOR r IN SELECT c.conname, c.conrelid::regclass AS src, c.confrelid::regclass AS dst
             FROM pg_constraint c
             WHERE c.contype = 'f' AND (c.conrelid = tbl OR c.confrelid = tbl)
               AND ((c.conrelid = tbl AND c.conkey[1] <> col_num)
                    OR (c.confrelid = tbl AND c.confkey[1] <> col_num)) LOOP
        RETURN QUERY SELECT 'warning', format('foreign key %I on %s', r.conname, r.src),
            format('foreign key not led by %I: rows can reference or reveal another tenant''s rows', col);
    END LOOP;
    FOR r IN SELECT DISTINCT v.oid::regclass AS view FROM pg_depend d
             JOIN pg_rewrite w ON w.oid = d.objid
             JOIN pg_class v ON v.oid = w.ev_class
             WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = tbl AND v.oid <> tbl
               AND v.relkind IN ('v', 'm')
               AND (v.relkind = 'm' OR NOT coalesce('security_invoker=true' = ANY (v.reloptions)
                                                   OR 'security_invoker=on' = ANY (v.reloptions), false)) LOOP
        RETURN QUERY SELECT 'warning', format('view %s', r.view),
            'view without security_invoker reads the table with its owner''s rights';
    END LOOP;
    FOR r IN SELECT p.oid::regprocedure AS fn FROM pg_proc p
             WHERE p.prosecdef
               AND p.pronamespace <> 'sutra'::regnamespace
               AND p.prosrc ~* ('\m' || regexp_replace((SELECT c.relname FROM pg_class c WHERE c.oid = tbl),
                                                      '([^a-zA-Z0-9_])', '\\\1', 'g') || '\M') LOOP
        RETURN QUERY SELECT 'warning', format('function %s', r.fn),
            'SECURITY DEFINER function that mentions the table runs with its owner''s rights';
    END LOOP;
    IF (SELECT a.rolbypassrls OR a.rolsuper FROM pg_roles a WHERE a.oid = owner) THEN
        RETURN QUERY SELECT 'warning', format('role %I', (SELECT a.rolname FROM pg_roles a WHERE a.oid = owner)),
            'the table''s owner bypasses row level security';
    END IF;
END $$;

-- A checksum of a tenant's rows in every tenant table (in table name order, rows in any order):
-- equal in two databases that hold the same rows for the tenant under the same schema.
CREATE FUNCTION tenant_checksum(tenant text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t record;
    -- Read as the caller: a tenant session sees its own row of sutra.tenants only, superusers
    -- and sutra_service every row.
    id uuid := (SELECT x.id FROM sutra.tenants x
                WHERE CASE WHEN tenant ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                           THEN x.id = tenant::uuid ELSE x.slug = tenant END);
    part text;
    parts text := '';
BEGIN
    IF id IS NULL THEN
        RAISE EXCEPTION 'tenant "%" does not exist', tenant USING ERRCODE = '42704',
            HINT = 'Name a tenant by its uuid or its slug.';
    END IF;
    -- Tables only (a registered table turned into a view is skipped), by a uuid tenant column.
    FOR t IN SELECT x.table_name, x.tenant_column FROM sutra.tenant_tables x
             WHERE x.table_name IN (SELECT c.oid FROM pg_class c WHERE c.relkind IN ('r', 'p'))
               AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = x.table_name
                           AND a.attname = x.tenant_column AND a.atttypid = 'uuid'::regtype)
             ORDER BY x.table_name::text LOOP
        EXECUTE format('SELECT count(*) || '':'' || coalesce(md5(string_agg(h, '''' ORDER BY h)), '''') '
                       'FROM (SELECT md5(x::text) AS h FROM %s x WHERE %I = $1) s',
                       t.table_name, t.tenant_column)
            INTO part USING id;
        parts := parts || t.table_name::text || '=' || part || ';';
    END LOOP;
    RETURN md5(parts);
END $$;
CREATE FUNCTION tenant_checksum(tenant uuid) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT sutra.tenant_checksum(tenant::text);
$$;

-- Who may call what -----------------------------------------------------------------------------

REVOKE ALL ON FUNCTION _audit(text, uuid, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION _tenant_table_audit() FROM PUBLIC;
REVOKE ALL ON FUNCTION _check_plan(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION _replace_seeded_row() FROM PUBLIC;
REVOKE ALL ON FUNCTION _own_rows_policies(regclass, name, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION _tenants_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION _tenant_table_dropped() FROM PUBLIC;
REVOKE ALL ON FUNCTION _tenant_partition_added() FROM PUBLIC;
REVOKE ALL ON FUNCTION reset_auth_failures() FROM PUBLIC;
REVOKE ALL ON FUNCTION _mint_api_key(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION _random_bytes(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION _invalidate_tenant_cache() FROM PUBLIC;
REVOKE ALL ON FUNCTION _purge_rows(oid, text, uuid) FROM PUBLIC;

