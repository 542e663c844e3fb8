-- sutra 0.1.0 to 0.2.0: ALTER EXTENSION sutra UPDATE, after the 0.2.0 library is installed and
-- the server restarted (README, "Upgrading"). pgrx-tests/client/test_upgrade.py checks that an
-- upgraded catalog equals a fresh 0.2.0 install and that 0.1.0's data and indexes keep working.
\echo Use "ALTER EXTENSION sutra UPDATE TO '0.2.0'" to load this file. \quit

-- Functions whose signature changed (a new argument, another return type) or that are gone, and
-- the view that reads one of them (made again below).
DROP VIEW tenants_near_limits;
DROP FUNCTION _count_tenant_rows(uuid, regclass);
DROP FUNCTION _quota_forget_rows(oid, uuid, bigint, bigint, bigint);
DROP FUNCTION _register_tenant_table(regclass, name, boolean);
DROP FUNCTION _tenant_counters();
DROP FUNCTION _usage_events_partition(timestamptz);
DROP FUNCTION _vector_count_expr(regclass);
DROP FUNCTION authenticate(text, boolean);
DROP FUNCTION authenticate_jwt(text, boolean);
DROP FUNCTION metrics();
DROP FUNCTION set_tenant(text, boolean, text[]);
DROP FUNCTION set_tenant(uuid, boolean, text[]);

-- sutra_hnsw's integer keys: the operator classes int4_ops and int8_ops move from a family each
-- into one family, integer_ops, which also holds the cross-type equalities, so that a key sent as
-- int2, int4 or int8 is an index condition. No command moves an operator class to another family,
-- and dropping one would drop every index built with it, so the catalog rows move: the classes,
-- their operators and the dependencies on the old families, which are then empty and dropped.
-- Sessions that were open during the update see the change once they reconnect.
CREATE OPERATOR FAMILY integer_ops USING sutra_hnsw;
DO $$
DECLARE
    am oid := (SELECT a.oid FROM pg_catalog.pg_am a WHERE a.amname = 'sutra_hnsw');
    family oid := (SELECT f.oid FROM pg_catalog.pg_opfamily f
                   WHERE f.opfname = 'integer_ops' AND f.opfmethod = am AND f.opfnamespace = 'sutra'::regnamespace);
    old oid[] := ARRAY(SELECT f.oid FROM pg_catalog.pg_opfamily f
                       WHERE f.opfname IN ('int4_ops', 'int8_ops') AND f.opfmethod = am
                         AND f.opfnamespace = 'sutra'::regnamespace);
BEGIN
    UPDATE pg_catalog.pg_opclass SET opcfamily = family WHERE opcfamily = ANY (old);
    UPDATE pg_catalog.pg_amop SET amopfamily = family WHERE amopfamily = ANY (old);
    UPDATE pg_catalog.pg_amproc SET amprocfamily = family WHERE amprocfamily = ANY (old);
    UPDATE pg_catalog.pg_depend SET refobjid = family
    WHERE refclassid = 'pg_catalog.pg_opfamily'::regclass AND refobjid = ANY (old);
END $$;
DROP OPERATOR FAMILY int4_ops USING sutra_hnsw;
DROP OPERATOR FAMILY int8_ops USING sutra_hnsw;
ALTER OPERATOR FAMILY integer_ops USING sutra_hnsw ADD
    OPERATOR 1 pg_catalog.= (integer, smallint),
    OPERATOR 1 pg_catalog.= (integer, bigint),
    OPERATOR 1 pg_catalog.= (bigint, smallint),
    OPERATOR 1 pg_catalog.= (bigint, integer);
ALTER OPERATOR FAMILY text_ops USING sutra_hnsw ADD
    OPERATOR 1 pg_catalog.= (text, name);

-- New tables.
CREATE TABLE usage_totals (
    tenant_id uuid NOT NULL,
    key text NOT NULL,
    period text NOT NULL CHECK (period IN ('day', 'month')),
    period_start timestamptz NOT NULL,
    quantity numeric NOT NULL,
    PRIMARY KEY (tenant_id, key, period, period_start)
) WITH (fillfactor = 70);
REVOKE ALL ON usage_totals FROM PUBLIC;
COMMENT ON TABLE usage_totals IS 'running totals of events per tenant, event type (or $cost) and day or month, behind usage caps';
CREATE TABLE usage_compaction (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    hours_until timestamptz NOT NULL DEFAULT '-infinity',
    days_until timestamptz NOT NULL DEFAULT '-infinity',
    retained_from timestamptz NOT NULL DEFAULT '-infinity',
    last_run timestamptz
);
INSERT INTO usage_compaction DEFAULT VALUES;
COMMENT ON TABLE usage_compaction IS 'how far sutra.compact_usage has compacted sutra.usage_rollups';
GRANT SELECT ON usage_compaction, usage_totals TO sutra_service;

-- Tenant secrets (sql/tenancy/secrets.sql).
CREATE TABLE tenant_secrets (
    tenant_id uuid NOT NULL,
    name text NOT NULL CHECK (name ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    sealed bytea NOT NULL,
    key_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    rotated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);
COMMENT ON TABLE tenant_secrets IS 'tenant secrets, sealed (AES-256-GCM) under the master key sutra.secrets_key; read through sutra.secret';
-- No privileges for PUBLIC: sutra's functions read the rows (their owner bypasses row level
-- security). A role given SELECT by other means (pg_read_all_data: scripts/tenant-export.sh) sees
-- the sealed rows of its context's tenant only.
REVOKE ALL ON tenant_secrets FROM PUBLIC;
ALTER TABLE tenant_secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_secrets FORCE ROW LEVEL SECURITY;
CREATE POLICY own_tenant ON tenant_secrets FOR SELECT USING (tenant_id = (SELECT sutra.current_tenant('admin')));
SELECT pg_catalog.pg_extension_config_dump('tenant_secrets', '');

-- Settings and feature flags (sql/tenancy/settings.sql): plan defaults, tenant overrides, rules.
ALTER TABLE plans ADD COLUMN settings jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    ADD COLUMN features jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(features) = 'object'),
    ADD COLUMN tenant_editable text[] NOT NULL DEFAULT '{}';
COMMENT ON TABLE plans IS 'plans: their limits (null or 0: unlimited), default settings and feature flags; user editable';
ALTER TABLE tenants ADD COLUMN features jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(features) = 'object');
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

-- Members of tenants (sql/tenancy/members.sql).
CREATE TABLE tenant_members (
    tenant_id uuid NOT NULL,
    user_id text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 255),
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);
-- A user's tenants.
CREATE INDEX ON tenant_members (user_id);
COMMENT ON TABLE tenant_members IS 'users of each tenant and their roles (sutra.add_member and friends)';
REVOKE ALL ON tenant_members FROM PUBLIC;
GRANT SELECT ON tenant_members TO PUBLIC;
SELECT _own_rows_policies('tenant_members', 'tenant_id', 'read');
SELECT pg_catalog.pg_extension_config_dump('tenant_members', '');
-- Membership applies at once in every backend, as a tenant's status does.
CREATE TRIGGER member_changed AFTER INSERT OR UPDATE OR DELETE ON tenant_members
    FOR EACH STATEMENT EXECUTE FUNCTION _tenants_changed();

-- The user of the context (sutra.current_user_id()) in audit rows.
ALTER TABLE audit_log ADD COLUMN user_id text;

-- What every node of a Citus cluster checks tenant contexts against (sql/tenancy/citus.sql).
CREATE TABLE cluster_grants (
    kind text NOT NULL CHECK (kind IN ('tenant', 'key', 'member', 'limits')),
    id text NOT NULL,
    value text,
    PRIMARY KEY (kind, id)
);
COMMENT ON TABLE cluster_grants IS 'tenant status, key validity, member scopes and tenant limits every node of a Citus cluster checks against';
REVOKE ALL ON cluster_grants FROM PUBLIC;

-- Functions, as a fresh 0.2.0 install defines them.
CREATE OR REPLACE FUNCTION sutra._cap_refused(tenant uuid, "limit" text, value double precision, limit_value double precision)
 RETURNS void
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_cap_refused_wrapper$function$;

CREATE OR REPLACE FUNCTION sutra._context_user()
 RETURNS text
 LANGUAGE c
 STABLE PARALLEL SAFE STRICT
AS 'MODULE_PATHNAME', $function$context_user_wrapper$function$;

CREATE OR REPLACE FUNCTION sutra._count_tenant_rows(tenant uuid, "table" oid DEFAULT NULL::oid)
 RETURNS TABLE(table_name oid, rows bigint, bytes bigint, vectors bigint)
 LANGUAGE c
AS 'MODULE_PATHNAME', $function$count_tenant_rows_wrapper$function$;

CREATE OR REPLACE FUNCTION sutra._hide_secret_value(value text)
 RETURNS void
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_hide_secret_value_wrapper$function$;

CREATE OR REPLACE FUNCTION sutra._limit_counters()
 RETURNS TABLE(name text, limit_name text, value bigint)
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$limit_counters_wrapper$function$;

CREATE OR REPLACE FUNCTION sutra._open_secret(tenant uuid, name text, sealed bytea, key_id text)
 RETURNS text
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_open_secret_wrapper$function$;

CREATE OR REPLACE FUNCTION sutra._quota_totals()
 RETURNS TABLE(tenant_id uuid, rows bigint, bytes bigint, vectors bigint)
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$quota_totals_wrapper$function$;

CREATE OR REPLACE FUNCTION sutra._quota_truncate()
 RETURNS trigger
 LANGUAGE c
AS 'MODULE_PATHNAME', $function$sutra_quota_truncate$function$;

CREATE OR REPLACE FUNCTION sutra._seal_secret(tenant uuid, name text, value text)
 RETURNS TABLE(sealed bytea, key_id text)
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_seal_secret_wrapper$function$;

CREATE OR REPLACE FUNCTION sutra._secret_read(tenant uuid, name text)
 RETURNS void
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_secret_read_wrapper$function$;

CREATE OR REPLACE FUNCTION sutra._secrets_key_id()
 RETURNS text
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_secrets_key_id_wrapper$function$;

CREATE OR REPLACE FUNCTION sutra._server_counters()
 RETURNS TABLE(metric text, value double precision)
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$server_counters_wrapper$function$;

CREATE OR REPLACE FUNCTION sutra._shared_tables()
 RETURNS TABLE(name text, kind text, value bigint, help text)
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$shared_tables_wrapper$function$;

CREATE OR REPLACE FUNCTION sutra._tenant_counters()
 RETURNS TABLE(tenant_id uuid, statements bigint, rows_read bigint, rows_written bigint, vector_searches bigint, bytes_written bigint, connection_seconds double precision, rate_limited bigint, concurrency_refused bigint, connections_refused bigint, quota_refused bigint, active_statements integer, connections integer, recent boolean)
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$tenant_counters_wrapper$function$;

CREATE OR REPLACE FUNCTION sutra._usage_caps(tenant uuid)
 RETURNS jsonb
 LANGUAGE c
 STABLE PARALLEL RESTRICTED STRICT
AS 'MODULE_PATHNAME', $function$_usage_caps_wrapper$function$;

CREATE OR REPLACE FUNCTION sutra.authenticate(api_key text, local boolean DEFAULT NULL::boolean, session boolean DEFAULT false)
 RETURNS uuid
 LANGUAGE c
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS 'MODULE_PATHNAME', $function$authenticate_wrapper$function$;

CREATE OR REPLACE FUNCTION sutra.authenticate_jwt(token text, local boolean DEFAULT NULL::boolean, session boolean DEFAULT false)
 RETURNS uuid
 LANGUAGE c
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS 'MODULE_PATHNAME', $function$authenticate_jwt_wrapper$function$;

CREATE OR REPLACE FUNCTION sutra.current_user_id()
 RETURNS text
 LANGUAGE c
 STABLE PARALLEL SAFE STRICT
AS 'MODULE_PATHNAME', $function$current_user_id_wrapper$function$;

CREATE OR REPLACE FUNCTION sutra.feature_enabled(flag text)
 RETURNS boolean
 LANGUAGE c
 STABLE PARALLEL RESTRICTED STRICT
AS 'MODULE_PATHNAME', $function$feature_enabled_wrapper$function$;

CREATE OR REPLACE FUNCTION sutra.set_tenant(tenant text, local boolean DEFAULT NULL::boolean, scopes text[] DEFAULT '{read,write,admin}'::text[], session boolean DEFAULT false)
 RETURNS uuid
 LANGUAGE c
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS 'MODULE_PATHNAME', $function$set_tenant_wrapper$function$;

CREATE OR REPLACE FUNCTION sutra.set_tenant(tenant uuid, local boolean DEFAULT NULL::boolean, scopes text[] DEFAULT '{read,write,admin}'::text[], session boolean DEFAULT false)
 RETURNS uuid
 LANGUAGE c
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS 'MODULE_PATHNAME', $function$set_tenant_uuid_wrapper$function$;

CREATE OR REPLACE FUNCTION sutra.setting(key text)
 RETURNS jsonb
 LANGUAGE c
 STABLE PARALLEL RESTRICTED STRICT
AS 'MODULE_PATHNAME', $function$setting_wrapper$function$;

CREATE OR REPLACE FUNCTION sutra._api_key_row(key_id text)
 RETURNS sutra.api_key_store
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
END $function$;

CREATE OR REPLACE FUNCTION sutra._audit(action text, tenant uuid, details jsonb DEFAULT '{}'::jsonb)
 RETURNS void
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    INSERT INTO sutra.audit_log (tenant_id, action, actor, session_role, context_tenant, client_addr, details, user_id)
    VALUES (tenant, action, sutra._caller(), session_user, sutra._context_tenant(),
            inet_client_addr(), coalesce(details, '{}'), sutra._context_user());
$function$;

CREATE OR REPLACE FUNCTION sutra._cap_value(spec jsonb)
 RETURNS numeric
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT nullif(CASE jsonb_typeof(spec) WHEN 'number' THEN spec::text::numeric
                                          WHEN 'object' THEN CASE WHEN jsonb_typeof(spec -> 'cap') = 'number'
                                                                  THEN (spec ->> 'cap')::numeric END END, 0)
$function$;

CREATE OR REPLACE FUNCTION sutra._charge_caps(tenant uuid, event_type text, quantity numeric, at timestamp with time zone)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    l jsonb := sutra._usage_caps(tenant);
    monthly jsonb := l -> 'monthly' -> event_type;
    daily jsonb := l -> 'daily' -> event_type;
    monthly_cost jsonb := l -> 'monthly_cost';
    daily_cost jsonb := l -> 'daily_cost';
    threshold numeric;
    tenant_plan text;
    month timestamptz := date_trunc('month', at, 'UTC');
    day timestamptz := date_trunc('day', at, 'UTC');
    start timestamptz;
    after numeric;
    m record;
    t record;
    unit_price numeric;
    included numeric;
    cost numeric;
    -- The caps met: what (for messages), name, cap, total before and after.
    checks jsonb := '[]';
    refuse boolean;
    c jsonb;
BEGIN
    IF monthly IS NULL AND daily IS NULL AND monthly_cost IS NULL AND daily_cost IS NULL THEN
        RETURN;
    END IF;
    threshold := CASE WHEN jsonb_typeof(l -> 'soft_threshold') = 'number'
                           AND (l ->> 'soft_threshold')::numeric > 0 AND (l ->> 'soft_threshold')::numeric <= 1
                      THEN (l ->> 'soft_threshold')::numeric ELSE 0.8 END;
    IF monthly_cost IS NULL AND daily_cost IS NULL AND (monthly IS NULL) <> (daily IS NULL) THEN
        -- The common case, one cap on the event type: its total updated here, checked in one call.
        start := CASE WHEN monthly IS NOT NULL THEN month ELSE day END;
        UPDATE sutra.usage_totals u SET quantity = u.quantity + _charge_caps.quantity
        WHERE u.tenant_id = tenant AND u.key = event_type
          AND u.period = CASE WHEN monthly IS NOT NULL THEN 'month' ELSE 'day' END AND u.period_start = start
        RETURNING u.quantity INTO after;
        IF NOT FOUND THEN
            after := (sutra._usage_total_add(tenant, event_type, CASE WHEN monthly IS NOT NULL THEN 'month' ELSE 'day' END,
                                             start, NULL, _charge_caps.quantity)).after;
        END IF;
        PERFORM sutra._check_cap(tenant, format('%s cap of %s', CASE WHEN monthly IS NOT NULL THEN 'monthly' ELSE 'daily' END,
                                                event_type),
                                 CASE WHEN monthly IS NOT NULL THEN 'monthly.' ELSE 'daily.' END || event_type,
                                 coalesce(monthly, daily), threshold, after - _charge_caps.quantity, after, NULL);
        RETURN;
    END IF;
    IF monthly_cost IS NOT NULL OR daily_cost IS NOT NULL THEN
        tenant_plan := (SELECT x.plan FROM sutra.tenants x WHERE x.id = tenant);
        SELECT p.unit_price, p.included INTO unit_price, included FROM sutra.prices p
        WHERE p.metric = event_type AND (p.plan = tenant_plan OR p.plan IS NULL)
        ORDER BY p.plan NULLS LAST LIMIT 1;
    END IF;
    -- The month's total of the type: for its monthly cap, and for the cost of a priced type (its
    -- included quantity is the month's). An unpriced type costs nothing and counts for no cost cap.
    IF monthly IS NOT NULL OR unit_price IS NOT NULL THEN
        m := sutra._usage_total_add(tenant, event_type, 'month', month, tenant_plan, quantity);
        IF monthly IS NOT NULL THEN
            checks := checks || jsonb_build_array(jsonb_build_array(
                format('monthly cap of %s', event_type), 'monthly.' || event_type, monthly, m.before, m.after));
        END IF;
    END IF;
    IF daily IS NOT NULL THEN
        t := sutra._usage_total_add(tenant, event_type, 'day', day, tenant_plan, quantity);
        checks := checks || jsonb_build_array(jsonb_build_array(
            format('daily cap of %s', event_type), 'daily.' || event_type, daily, t.before, t.after));
    END IF;
    IF unit_price IS NOT NULL THEN
        -- What this event adds to the month's bill.
        cost := unit_price * (greatest(m.after - included, 0) - greatest(m.before - included, 0));
        IF monthly_cost IS NOT NULL THEN
            t := sutra._usage_total_add(tenant, '$cost', 'month', month, tenant_plan, cost);
            checks := checks || jsonb_build_array(jsonb_build_array(
                'monthly cost cap', 'monthly_cost', monthly_cost, t.before, t.after));
        END IF;
        IF daily_cost IS NOT NULL THEN
            t := sutra._usage_total_add(tenant, '$cost', 'day', day, tenant_plan, cost);
            checks := checks || jsonb_build_array(jsonb_build_array(
                'daily cost cap', 'daily_cost', daily_cost, t.before, t.after));
        END IF;
    END IF;
    -- Every cap refuses before any warns (one cap: both in one call).
    FOREACH refuse IN ARRAY CASE WHEN jsonb_array_length(checks) = 1 THEN ARRAY[NULL::boolean] ELSE ARRAY[true, false] END LOOP
        FOR c IN SELECT jsonb_array_elements(checks) LOOP
            PERFORM sutra._check_cap(tenant, c ->> 0, c ->> 1, c -> 2, threshold, (c ->> 3)::numeric,
                                     (c ->> 4)::numeric, refuse);
        END LOOP;
    END LOOP;
END $function$;

CREATE OR REPLACE FUNCTION sutra._check_cap(tenant uuid, what text, name text, spec jsonb, threshold numeric, before numeric, after numeric, refuse boolean)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    cap numeric;
    soft boolean := false;
    action text;
BEGIN
    IF jsonb_typeof(spec) = 'number' THEN
        cap := spec::text::numeric;
    ELSIF jsonb_typeof(spec) = 'object' AND jsonb_typeof(spec -> 'cap') = 'number'
          AND coalesce(jsonb_typeof(spec -> 'soft'), 'boolean') = 'boolean' THEN
        cap := (spec ->> 'cap')::numeric;
        soft := coalesce((spec ->> 'soft')::boolean, false);
    ELSE
        RAISE EXCEPTION 'invalid usage cap % for tenant %', name, tenant USING ERRCODE = '22023',
            DETAIL = format('The limits give %s.', left(spec::text, 200)),
            HINT = 'A cap is a number, or an object such as {"cap": 1000, "soft": true}.';
    END IF;
    IF cap <= 0 THEN
        RETURN;  -- unlimited, as a cap of 0 or null
    END IF;
    IF refuse IS DISTINCT FROM false THEN
        IF after > cap AND NOT soft THEN
            -- Counted, audited and notified past the abort (src/usage/refusals.rs).
            PERFORM sutra._cap_refused(tenant, name, after, cap);
            RAISE EXCEPTION '% exceeded for tenant %', what, tenant USING ERRCODE = '53100',
                DETAIL = format('The cap is %s; %s used, %s more requested.', cap, trim_scale(before),
                                trim_scale(after - before)),
                HINT = 'Raise the cap in the plan''s limits or the tenant''s quota_overrides, or wait for the next period.';
        END IF;
        IF refuse THEN
            RETURN;
        END IF;
    END IF;
    FOREACH action IN ARRAY ARRAY['usage.soft_limit', 'usage.soft_cap_exceeded'] LOOP
        CONTINUE WHEN action = 'usage.soft_limit' AND NOT (before < cap * threshold AND after >= cap * threshold);
        CONTINUE WHEN action = 'usage.soft_cap_exceeded' AND NOT (soft AND before <= cap AND after > cap);
        RAISE WARNING 'tenant % has used % of its % cap of %', tenant, after, name, cap;
        PERFORM sutra._audit(action, tenant, jsonb_build_object(
            'limit', name, 'value', after, 'limit_value', cap, 'threshold', threshold, 'soft', soft));
        PERFORM pg_notify('sutra_limits', jsonb_build_object(
            'tenant', tenant, 'limit', name, 'value', after, 'limit_value', cap, 'event', action)::text);
    END LOOP;
END $function$;

CREATE OR REPLACE FUNCTION sutra._check_secret_name(name text)
 RETURNS void
 LANGUAGE plpgsql
 IMMUTABLE
AS $function$
BEGIN
    IF name IS NULL OR name !~ '^[A-Za-z0-9_.:-]{1,64}$' THEN
        RAISE EXCEPTION 'invalid secret name "%"', left(name, 64) USING ERRCODE = '22023',
            DETAIL = 'A secret name is 1 to 64 characters: letters, digits, and _ . : or -.';
    END IF;
END $function$;

CREATE OR REPLACE FUNCTION sutra._compact_rollups(from_ts timestamp with time zone, to_ts timestamp with time zone, unit text)
 RETURNS bigint
 LANGUAGE sql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    WITH gone AS (
        DELETE FROM sutra.usage_rollups r
        WHERE r.minute >= from_ts AND r.minute < to_ts AND r.minute <> date_trunc(unit, r.minute, 'UTC')
        RETURNING r.tenant_id, r.metric, date_trunc(unit, r.minute, 'UTC') AS at, r.quantity
    ), kept AS (
        INSERT INTO sutra.usage_rollups AS r (tenant_id, metric, minute, quantity)
        SELECT g.tenant_id, g.metric, g.at, sum(g.quantity) FROM gone g GROUP BY 1, 2, 3
        ON CONFLICT (tenant_id, metric, minute) DO UPDATE SET quantity = r.quantity + EXCLUDED.quantity
        RETURNING (xmax = 0) AS added
    )
    SELECT (SELECT count(*) FROM gone) - (SELECT count(*) FILTER (WHERE added) FROM kept);
$function$;

CREATE OR REPLACE FUNCTION sutra._has_tenant_btree(tbl regclass, col smallint)
 RETURNS boolean
 LANGUAGE sql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                   WHERE i.indrelid = tbl AND i.indkey[0] = col AND i.indisvalid AND i.indpred IS NULL
                     AND ic.relam = (SELECT a.oid FROM pg_am a WHERE a.amname = 'btree'));
$function$;

CREATE OR REPLACE FUNCTION sutra._keep_an_owner(tenant uuid, user_id text)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    IF EXISTS (SELECT 1 FROM sutra.tenant_members m WHERE m.tenant_id = tenant AND m.user_id = _keep_an_owner.user_id
               AND m.role = 'owner')
       AND NOT EXISTS (SELECT 1 FROM sutra.tenant_members m WHERE m.tenant_id = tenant
                       AND m.user_id <> _keep_an_owner.user_id AND m.role = 'owner') THEN
        RAISE EXCEPTION 'user "%" is the last owner of the tenant', user_id USING ERRCODE = '55000',
            HINT = 'Make another member an owner first.';
    END IF;
END $function$;

CREATE OR REPLACE FUNCTION sutra._limit_value(plan jsonb, overrides jsonb, key text)
 RETURNS numeric
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT nullif((CASE WHEN overrides ? key THEN overrides ->> key ELSE plan ->> key END)::numeric, 0)
$function$;

CREATE OR REPLACE FUNCTION sutra._limits(tenant uuid)
 RETURNS jsonb
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    WITH t AS (
        SELECT p.limits AS plan, x.quota_overrides AS over
        FROM sutra.tenants x JOIN sutra.plans p ON p.name = x.plan WHERE x.id = tenant
    ), merged AS (
        SELECT (t.plan - '{monthly,daily}'::text[]) || (t.over - '{monthly,daily}'::text[]) AS flat,
               coalesce(t.plan -> 'monthly', '{}') || coalesce(t.over -> 'monthly', '{}') AS monthly,
               coalesce(t.plan -> 'daily', '{}') || coalesce(t.over -> 'daily', '{}') AS daily
        FROM t
    )
    SELECT coalesce((SELECT jsonb_object_agg(k, v) FROM jsonb_each(m.flat) e(k, v)
                     WHERE v <> 'null' AND v <> '0'), '{}')
           || coalesce((SELECT jsonb_object_agg(p.name, p.caps) FROM (
                  SELECT 'monthly' AS name, (SELECT jsonb_object_agg(k, v) FROM jsonb_each(m.monthly) e(k, v)
                                             WHERE v <> 'null' AND v <> '0') AS caps
                  UNION ALL
                  SELECT 'daily', (SELECT jsonb_object_agg(k, v) FROM jsonb_each(m.daily) e(k, v)
                                   WHERE v <> 'null' AND v <> '0')) p
                  WHERE p.caps IS NOT NULL), '{}')
    FROM merged m;
$function$;

CREATE OR REPLACE FUNCTION sutra._may_register(tbl regclass, tenant_column name)
 RETURNS boolean
 LANGUAGE sql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT coalesce((
        SELECT c.relkind IN ('r', 'p') AND c.relpersistence IN ('p', 'u')
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'sutra', 'pg_toast')
               AND pg_has_role(current_user, c.relowner, 'USAGE')
               AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = tenant_column
                           AND NOT a.attisdropped AND a.atttypid = 'uuid'::regtype)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = tbl), false);
$function$;

CREATE OR REPLACE FUNCTION sutra._members_tenant(tenant text, role text)
 RETURNS uuid
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    t uuid;
BEGIN
    IF role IS NOT NULL AND role NOT IN ('owner', 'admin', 'member', 'viewer') THEN
        RAISE EXCEPTION 'invalid role "%"', role USING ERRCODE = '22023',
            DETAIL = 'Roles are owner, admin, member and viewer.';
    END IF;
    IF tenant IS NOT NULL THEN
        PERFORM sutra._require_service('manage the members of a named tenant');
        t := (sutra._tenant_row(tenant)).id;
    ELSE
        t := sutra.current_tenant('admin');
        IF role = 'owner' AND NOT sutra._caller_is_service() THEN
            RAISE EXCEPTION 'permission denied to change the owners of a tenant' USING ERRCODE = '42501',
                HINT = 'Superusers and members of sutra_service make and unmake owners.';
        END IF;
    END IF;
    PERFORM 1 FROM sutra.tenants x WHERE x.id = t FOR UPDATE;
    RETURN t;
END $function$;

CREATE OR REPLACE FUNCTION sutra._owns(tbl regclass)
 RETURNS boolean
 LANGUAGE sql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT coalesce((SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c WHERE c.oid = tbl), false);
$function$;

CREATE OR REPLACE FUNCTION sutra._prometheus_label(v text)
 RETURNS text
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT replace(replace(replace(v, '\', '\\'), '"', '\"'), E'\n', '\n')
$function$;

CREATE OR REPLACE FUNCTION sutra._purge_tenant(tenant uuid)
 RETURNS jsonb
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
END $function$;

CREATE OR REPLACE FUNCTION sutra._secret_tenant(tenant text, what text)
 RETURNS uuid
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    IF tenant IS NOT NULL THEN
        PERFORM sutra._require_service(what || ' of a named tenant');
        RETURN (sutra._tenant_row(tenant)).id;
    END IF;
    RETURN sutra.current_tenant('admin');
END $function$;

CREATE OR REPLACE FUNCTION sutra._settings_tenant(tenant text, key text, what text)
 RETURNS uuid
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
END $function$;

CREATE OR REPLACE FUNCTION sutra._tenant_row(tenant text, lock boolean DEFAULT false)
 RETURNS sutra.tenants
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
END $function$;

CREATE OR REPLACE FUNCTION sutra._tenant_settings(tenant uuid)
 RETURNS jsonb
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT jsonb_build_object('settings', p.settings || t.settings, 'features', p.features || t.features)
    FROM sutra.tenants t JOIN sutra.plans p ON p.name = t.plan WHERE t.id = tenant;
$function$;

CREATE OR REPLACE FUNCTION sutra._tenant_table_audit()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
END $function$;

CREATE OR REPLACE FUNCTION sutra._worker_answers(command text, what text)
 RETURNS SETOF jsonb
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    answers jsonb := (SELECT jsonb_agg(jsonb_build_object('node', r.nodename || ':' || r.nodeport,
                                                          'success', r.success, 'result', r.result))
                      FROM run_command_on_workers(command) r);
    failed text;
BEGIN
    SELECT string_agg((a ->> 'node') || ': ' || (a ->> 'result'), '; ') INTO failed
    FROM jsonb_array_elements(coalesce(answers, '[]')) a WHERE NOT (a ->> 'success')::boolean;
    IF failed IS NOT NULL THEN
        RAISE EXCEPTION 'could not read % on every node', what USING ERRCODE = '08000', DETAIL = failed;
    END IF;
    RETURN QUERY SELECT e FROM jsonb_array_elements(coalesce(answers, '[]')) a,
                               jsonb_array_elements((a ->> 'result')::jsonb) e;
END $function$;

CREATE OR REPLACE FUNCTION sutra._stored_totals()
 RETURNS TABLE(tenant_id uuid, rows bigint, bytes bigint, vectors bigint)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    IF NOT sutra._citus_coordinator() THEN
        RETURN QUERY SELECT * FROM sutra._quota_totals();
        RETURN;
    END IF;
    RETURN QUERY
    SELECT a.t, sum(a.r)::bigint, sum(a.b)::bigint, sum(a.v)::bigint
    FROM (SELECT q.tenant_id AS t, q.rows AS r, q.bytes AS b, q.vectors AS v FROM sutra._quota_totals() q
          UNION ALL
          SELECT (e ->> 0)::uuid, (e ->> 1)::bigint, (e ->> 2)::bigint, (e ->> 3)::bigint
          FROM sutra._worker_answers(
                   $q$SELECT coalesce(json_agg(json_build_array(q.tenant_id, q.rows, q.bytes, q.vectors)), '[]')
                      FROM sutra._quota_totals() q$q$, 'the quota counts') e) a
    GROUP BY a.t;
END $function$;

CREATE OR REPLACE FUNCTION sutra._tenants_near_limits()
 RETURNS TABLE(tenant_id uuid, slug text, limit_name text, limit_value numeric, used numeric, ratio numeric)
 LANGUAGE sql
 SET jit TO 'off'
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    WITH live_counts AS (
        SELECT * FROM sutra._tenant_counters()
    ), quota_totals AS (
        SELECT * FROM sutra._stored_totals()
    ), with_caps AS (
        SELECT t.id FROM sutra.tenants t
        WHERE t.plan IN (SELECT p.name FROM sutra.plans p WHERE p.limits ?| '{monthly,daily,monthly_cost,daily_cost}')
        UNION
        SELECT t.id FROM sutra.tenants t WHERE t.quota_overrides ?| '{monthly,daily,monthly_cost,daily_cost}'
    ), caps AS (
        SELECT t.id, t.slug, p.limits AS pl, t.quota_overrides AS ov,
               coalesce(sutra._limit_value(p.limits, t.quota_overrides, 'soft_threshold'), 0.8) AS threshold
        FROM (SELECT n.tenant_id AS id FROM live_counts n UNION SELECT w.id FROM with_caps w) c
        JOIN sutra.tenants t ON t.id = c.id JOIN sutra.plans p ON p.name = t.plan
        WHERE t.status = 'active'
    ), capped AS (
        SELECT c.*, sutra._limits(c.id) AS l FROM caps c JOIN with_caps w ON w.id = c.id
    ), monthly AS (
        -- Monthly caps also cover metered metrics, read from the rollups.
        SELECT c.id, c.slug, 'monthly.' || k AS limit_name, sutra._cap_value(v) AS limit_value, c.threshold,
               coalesce((SELECT sum(r.quantity) FROM sutra.usage_rollups r
                         WHERE r.tenant_id = c.id AND r.metric = k AND r.minute >= date_trunc('month', now(), 'UTC')), 0)
             + coalesce((SELECT sum(e.quantity) FROM sutra.usage_events e
                         WHERE e.tenant_id = c.id AND e.event_type = k AND e.occurred_at >= date_trunc('month', now(), 'UTC')), 0)
               AS used
        FROM capped c, jsonb_each(coalesce(c.l -> 'monthly', '{}')) m(k, v)
    ), running AS (
        -- Daily and cost caps, as their running totals (sutra.usage_totals) have them.
        SELECT c.id, c.slug, x.limit_name, sutra._cap_value(x.spec) AS limit_value, c.threshold,
               coalesce((SELECT u.quantity FROM sutra.usage_totals u
                         WHERE u.tenant_id = c.id AND u.key = x.key AND u.period = x.period
                           AND u.period_start = date_trunc(x.period, now(), 'UTC')), 0) AS used
        FROM capped c
        CROSS JOIN LATERAL (
            SELECT 'daily.' || d.k, d.k, 'day', d.v FROM jsonb_each(coalesce(c.l -> 'daily', '{}')) d(k, v)
            UNION ALL SELECT 'monthly_cost', '$cost', 'month', c.l -> 'monthly_cost' WHERE c.l ? 'monthly_cost'
            UNION ALL SELECT 'daily_cost', '$cost', 'day', c.l -> 'daily_cost' WHERE c.l ? 'daily_cost'
        ) x(limit_name, key, period, spec)
    ), live AS (
        SELECT c.id, c.slug, x.limit_name, x.limit_value, c.threshold, x.used
        FROM caps c JOIN live_counts n ON n.tenant_id = c.id
        CROSS JOIN LATERAL (VALUES ('connections', sutra._limit_value(c.pl, c.ov, 'connections'), n.connections::numeric),
                                   ('concurrent_statements', sutra._limit_value(c.pl, c.ov, 'concurrent_statements'),
                                    n.active_statements::numeric))
                   x(limit_name, limit_value, used)
        WHERE x.limit_value IS NOT NULL
    )
    , quotas AS (
        SELECT c.id, c.slug, x.limit_name, x.limit_value, c.threshold, x.used
        FROM caps c JOIN quota_totals q ON q.tenant_id = c.id
        CROSS JOIN LATERAL (VALUES ('rows_total', sutra._limit_value(c.pl, c.ov, 'rows_total'), q.rows::numeric),
                                   ('storage_bytes', sutra._limit_value(c.pl, c.ov, 'storage_bytes'), q.bytes::numeric),
                                   ('vectors', sutra._limit_value(c.pl, c.ov, 'vectors'), q.vectors::numeric))
                   x(limit_name, limit_value, used)
        WHERE x.limit_value IS NOT NULL
    )
    SELECT id AS tenant_id, slug, limit_name, limit_value, used, round(used / limit_value, 4) AS ratio
    FROM (SELECT * FROM monthly UNION ALL SELECT * FROM running UNION ALL SELECT * FROM live
          UNION ALL SELECT * FROM quotas) a
    WHERE used >= threshold * limit_value;
$function$;

CREATE OR REPLACE FUNCTION sutra._usage_events_partition(ts timestamp with time zone, wait boolean DEFAULT true)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    lo timestamptz := date_trunc('month', ts, 'UTC');
    name text := 'usage_events_' || to_char(lo AT TIME ZONE 'UTC', 'YYYYMM');
BEGIN
    IF to_regclass('sutra.' || name) IS NOT NULL THEN
        RETURN;
    END IF;
    -- Makers of partitions take turns on SHARE UPDATE EXCLUSIVE on sutra.usage_events, a lock
    -- only sutra's own code can take: the mode conflicts with itself but not with the ACCESS
    -- SHARE and ROW EXCLUSIVE locks of reads and inserts, so events are read and recorded
    -- meanwhile; and LOCK TABLE in this mode needs UPDATE, DELETE or TRUNCATE on the table, which
    -- no role but its owner has (PUBLIC may only SELECT it). An advisory lock would not do: any
    -- role can take any advisory lock, and hold it. It is also the lock ATTACH PARTITION takes on
    -- the partitioned table, where CREATE TABLE ... PARTITION OF takes ACCESS EXCLUSIVE, which a
    -- session that merely keeps a read of usage_events open in its transaction would hold up
    -- (and every reader and writer would then queue behind it). ATTACH would also lock a default
    -- partition exclusively: there is none.
    IF wait THEN
        LOCK TABLE sutra.usage_events IN SHARE UPDATE EXCLUSIVE MODE;
    ELSE
        BEGIN
            LOCK TABLE sutra.usage_events IN SHARE UPDATE EXCLUSIVE MODE NOWAIT;
        EXCEPTION WHEN lock_not_available THEN
            RETURN;
        END;
    END IF;
    IF to_regclass('sutra.' || name) IS NOT NULL THEN
        RETURN;  -- made by the transaction that held the lock before
    END IF;
    EXECUTE format('CREATE TABLE sutra.%I (LIKE sutra.usage_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
    -- Each partition has its own index (no partitioned index: a dump of the month partitions,
    -- which are not part of the extension, restores them with their indexes).
    EXECUTE format('CREATE INDEX ON sutra.%I (tenant_id, occurred_at)', name);
    EXECUTE format('ALTER TABLE sutra.usage_events ATTACH PARTITION sutra.%I FOR VALUES FROM (%L) TO (%L)', name,
                   to_char(lo AT TIME ZONE 'UTC', 'YYYY-MM-DD') || ' 00:00:00+00',
                   to_char((lo + interval '1 month') AT TIME ZONE 'UTC', 'YYYY-MM-DD') || ' 00:00:00+00');
END $function$;

CREATE OR REPLACE FUNCTION sutra._usage_ingest_row()
 RETURNS trigger
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    PERFORM sutra.record_usage(NEW.event_type, coalesce(NEW.quantity, 1), coalesce(NEW.properties, '{}'),
                               NEW.idempotency_key, NEW.occurred_at, NEW.tenant);
    RETURN NEW;
END $function$;

CREATE OR REPLACE FUNCTION sutra._usage_total_add(tenant uuid, key text, period text, start timestamp with time zone, plan text, amount numeric, OUT before numeric, OUT after numeric)
 RETURNS record
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    FOR i IN 1 .. 2 LOOP
        UPDATE sutra.usage_totals u SET quantity = u.quantity + amount
        WHERE u.tenant_id = tenant AND u.key = _usage_total_add.key AND u.period = _usage_total_add.period
          AND u.period_start = start
        RETURNING u.quantity INTO after;
        IF FOUND THEN
            before := after - amount;
            RETURN;
        END IF;
        -- Made once: a concurrent maker's row wins (this one waits for it), and is then updated.
        INSERT INTO sutra.usage_totals
        VALUES (tenant, key, period, start, sutra._usage_total_from_events(tenant, key, period, start, plan))
        ON CONFLICT DO NOTHING;
    END LOOP;
    RAISE EXCEPTION 'could not make the usage total of % for tenant %', key, tenant USING ERRCODE = 'XX000';
END $function$;

CREATE OR REPLACE FUNCTION sutra._usage_total_from_events(tenant uuid, key text, period text, start timestamp with time zone, plan text)
 RETURNS numeric
 LANGUAGE sql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT CASE WHEN key <> '$cost' THEN
        (SELECT coalesce(sum(e.quantity), 0) FROM sutra.usage_events e
         WHERE e.tenant_id = tenant AND e.event_type = key
           AND e.occurred_at >= start AND e.occurred_at < start + ('1 ' || period)::interval)
    ELSE
        (SELECT coalesce(sum(pr.unit_price * (greatest(u.upto - pr.included, 0) - greatest(u.before - pr.included, 0))), 0)
         FROM (SELECT e.event_type AS metric,
                      coalesce(sum(e.quantity) FILTER (WHERE e.occurred_at < start), 0) AS before,
                      sum(e.quantity) AS upto
               FROM sutra.usage_events e
               WHERE e.tenant_id = tenant AND e.occurred_at >= date_trunc('month', start, 'UTC')
                 AND e.occurred_at < start + ('1 ' || period)::interval
               GROUP BY 1) u
         CROSS JOIN LATERAL (SELECT p.unit_price, p.included FROM sutra.prices p
                             WHERE p.metric = u.metric AND (p.plan = _usage_total_from_events.plan OR p.plan IS NULL)
                             ORDER BY p.plan NULLS LAST LIMIT 1) pr)
    END;
$function$;

CREATE OR REPLACE FUNCTION sutra._usage_totals_reset()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    IF TG_TABLE_NAME = 'tenants' THEN
        DELETE FROM sutra.usage_totals u WHERE u.tenant_id = OLD.id;
    ELSIF TG_TABLE_NAME = 'plans' THEN
        DELETE FROM sutra.usage_totals u WHERE u.tenant_id IN (SELECT x.id FROM sutra.tenants x WHERE x.plan = OLD.name);
    ELSE
        DELETE FROM sutra.usage_totals u WHERE u.key = '$cost';
    END IF;
    RETURN NULL;
END $function$;

CREATE OR REPLACE FUNCTION sutra.add_member(user_id text, role text DEFAULT 'member'::text, tenant text DEFAULT NULL::text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    t uuid := sutra._members_tenant(tenant, coalesce(role, 'member'));
BEGIN
    IF user_id IS NULL OR length(user_id) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'invalid user id' USING ERRCODE = '22023', DETAIL = 'A user id is 1 to 255 characters.';
    END IF;
    INSERT INTO sutra.tenant_members (tenant_id, user_id, role) VALUES (t, add_member.user_id, coalesce(role, 'member'));
    PERFORM sutra._audit('member.add', t, jsonb_build_object('user_id', user_id, 'role', coalesce(role, 'member')));
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'user "%" is a member of the tenant already', user_id USING ERRCODE = '42710',
        HINT = 'sutra.update_member changes a member''s role.';
END $function$;

CREATE OR REPLACE FUNCTION sutra.check_tenancy(tbl regclass)
 RETURNS TABLE(severity text, object text, problem text)
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
    -- A distributed table's shards carry the quota triggers (added on the workers).
    IF NOT EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = tbl AND g.tgname = 'sutra_quota_row')
       AND sutra._citus_distribution_column(tbl) IS NULL THEN
        RETURN QUERY SELECT 'warning', tbl::text, 'row quotas do not count this table (a table of a Citus database that is not distributed)';
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
END $function$;

CREATE OR REPLACE FUNCTION sutra.compact_usage()
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    c sutra.usage_compaction;
    hour_cut timestamptz := date_trunc('hour', now() - current_setting('sutra.usage_minutes_kept')::interval, 'UTC');
    day_cut timestamptz := date_trunc('day', now() - current_setting('sutra.usage_hours_kept')::interval, 'UTC');
    retention interval := current_setting('sutra.usage_retention')::interval;
    removed bigint := 0;
    n bigint;
BEGIN
    PERFORM sutra._require_service('compact usage');
    -- One compaction at a time; a second caller waits, then finds the work done.
    SELECT * INTO c FROM sutra.usage_compaction FOR UPDATE;
    IF hour_cut > c.hours_until THEN
        removed := removed + sutra._compact_rollups(c.hours_until, hour_cut, 'hour');
        c.hours_until := hour_cut;
    END IF;
    IF day_cut > c.days_until THEN
        removed := removed + sutra._compact_rollups(c.days_until, day_cut, 'day');
        c.days_until := day_cut;
    END IF;
    IF retention > interval '0' AND date_trunc('day', now() - retention, 'UTC') > c.retained_from THEN
        c.retained_from := date_trunc('day', now() - retention, 'UTC');
        DELETE FROM sutra.usage_rollups r WHERE r.minute < c.retained_from;
        GET DIAGNOSTICS n = ROW_COUNT;
        removed := removed + n;
    END IF;
    UPDATE sutra.usage_compaction SET hours_until = c.hours_until, days_until = c.days_until,
                                      retained_from = c.retained_from, last_run = now();
    RETURN removed;
END $function$;

CREATE OR REPLACE FUNCTION sutra.delete_secret(name text, tenant text DEFAULT NULL::text)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    t uuid := sutra._secret_tenant(tenant, 'delete a secret');
BEGIN
    DELETE FROM sutra.tenant_secrets x WHERE x.tenant_id = t AND x.name = delete_secret.name;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM sutra._audit('secret.delete', t, jsonb_build_object('name', delete_secret.name));
    RETURN true;
END $function$;

CREATE OR REPLACE FUNCTION sutra.disable_tenancy(tbl regclass)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
END $function$;

CREATE OR REPLACE FUNCTION sutra.effective_limits(tenant text)
 RETURNS TABLE(limit_name text, plan_value jsonb, override_value jsonb, effective_value jsonb)
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    r sutra.tenants := sutra._tenant_row(tenant);
    plan jsonb := (SELECT p.limits FROM sutra.plans p WHERE p.name = r.plan);
    eff jsonb := sutra._limits(r.id);
BEGIN
    PERFORM sutra._require_usage_reader(r.id);
    RETURN QUERY
    WITH names AS (
        SELECT k FROM jsonb_object_keys(plan - '{monthly,daily}'::text[]) k
        UNION SELECT k FROM jsonb_object_keys(r.quota_overrides - '{monthly,daily}'::text[]) k
        UNION SELECT unnest(ARRAY['rows_per_table', 'rows_total', 'vectors', 'storage_bytes', 'ops_per_second',
                                  'burst', 'concurrent_statements', 'connections'])
        UNION SELECT p || '.' || k FROM unnest(ARRAY['monthly', 'daily']) p,
                                        jsonb_object_keys(coalesce(plan -> p, '{}')) k
        UNION SELECT p || '.' || k FROM unnest(ARRAY['monthly', 'daily']) p,
                                        jsonb_object_keys(coalesce(r.quota_overrides -> p, '{}')) k
    )
    -- "monthly.<event type>" and "daily.<event type>" name a cap inside "monthly" and "daily".
    SELECT n.k, plan #> n.path, r.quota_overrides #> n.path, eff #> n.path
    FROM (SELECT names.k, CASE WHEN names.k ~ '^(monthly|daily)\.'
                               THEN ARRAY[split_part(names.k, '.', 1), substr(names.k, strpos(names.k, '.') + 1)]
                               ELSE ARRAY[names.k] END AS path
          FROM names) n
    ORDER BY n.k;
END $function$;

CREATE OR REPLACE FUNCTION sutra.effective_settings(tenant text)
 RETURNS TABLE(key text, kind text, plan_value jsonb, override_value jsonb, effective_value jsonb, tenant_editable boolean)
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
END $function$;

CREATE OR REPLACE FUNCTION sutra.effective_settings(tenant uuid)
 RETURNS TABLE(key text, kind text, plan_value jsonb, override_value jsonb, effective_value jsonb, tenant_editable boolean)
 LANGUAGE sql
 STABLE
AS $function$ SELECT * FROM sutra.effective_settings(tenant::text) $function$;

CREATE OR REPLACE FUNCTION sutra.enable_tenancy(tbl regclass, tenant_column name DEFAULT 'tenant_id'::name)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    col_type regtype;
    col_num int2;
    indexed boolean;
    missing boolean;
    prior text;
    citus boolean := sutra._citus_installed();
    -- The column Citus distributes the table by, if it does.
    distributed_by name := sutra._citus_distribution_column(tbl);
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
        -- Only when there is something to fill: Citus refuses any UPDATE of the column a table is
        -- distributed by, even one that changes no row.
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE %I IS NULL)', tbl, tenant_column) INTO missing;
        IF missing THEN
            EXECUTE format('UPDATE %s SET %I = %L WHERE %I IS NULL', tbl, tenant_column,
                           '00000000-0000-0000-0000-000000000000', tenant_column);
        END IF;
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', tbl, tenant_column);
    END IF;
    IF distributed_by <> tenant_column THEN
        RAISE EXCEPTION 'table % is distributed by column %, not by its tenant column %', tbl,
            distributed_by, tenant_column USING ERRCODE = '0A000',
            HINT = 'A tenant table of a Citus cluster is distributed by its tenant column: create_distributed_table(table, tenant column).';
    END IF;
    IF distributed_by = tenant_column THEN
        -- Citus refuses to change the distribution column of a distributed table. The default
        -- matters where inserts are planned: here, on the coordinator (inserts planned on a
        -- worker name the tenant column, or fail on its NOT NULL).
        prior := current_setting('citus.enable_ddl_propagation');
        PERFORM set_config('citus.enable_ddl_propagation', 'off', true);
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT sutra.current_tenant()', tbl, tenant_column);
        PERFORM set_config('citus.enable_ddl_propagation', prior, true);
    ELSE
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT sutra.current_tenant()', tbl, tenant_column);
    END IF;
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
    -- Quota accounting (sql/usage.sql): AFTER ROW, so that COPY keeps its batched inserts. Not in
    -- a Citus database: Citus refuses to distribute a table with triggers; sutra adds them to each
    -- shard on the workers as Citus creates it (_citus_shard_quota_triggers).
    IF NOT citus AND NOT EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = tbl AND g.tgname = 'sutra_quota_row') THEN
        EXECUTE format('CREATE TRIGGER sutra_quota_row AFTER INSERT OR UPDATE OR DELETE ON %s '
                       'FOR EACH ROW EXECUTE FUNCTION sutra._quota_row(%L)', tbl, tenant_column);
        EXECUTE format('CREATE TRIGGER sutra_quota_truncate BEFORE TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION sutra._quota_truncate(%L)', tbl, tenant_column);
    END IF;
    INSERT INTO sutra.tenant_tables AS t (table_name, tenant_column) VALUES (tbl, tenant_column)
    ON CONFLICT (table_name) DO UPDATE SET tenant_column = EXCLUDED.tenant_column;
    -- On a Citus coordinator, every node checks contexts against the coordinator's tenants.
    IF citus AND sutra._citus_coordinator() AND NOT sutra._cluster_grants_distributed() THEN
        RAISE WARNING 'the workers of this Citus cluster cannot check tenant contexts yet'
            USING DETAIL = 'sutra.cluster_grants is not a reference table: every worker refuses every tenant context.',
                  HINT = 'A superuser runs SELECT sutra.citus_setup() on the coordinator.';
    END IF;
END $function$;

CREATE OR REPLACE FUNCTION sutra.members(tenant text DEFAULT NULL::text)
 RETURNS TABLE(user_id text, role text, scopes text[], created_at timestamp with time zone, updated_at timestamp with time zone)
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    t uuid;
BEGIN
    IF tenant IS NOT NULL THEN
        PERFORM sutra._require_service('list the members of a named tenant');
        t := (sutra._tenant_row(tenant)).id;
    ELSE
        t := sutra.current_tenant('read');
    END IF;
    RETURN QUERY SELECT m.user_id, m.role, sutra.role_scopes(m.role), m.created_at, m.updated_at
    FROM sutra.tenant_members m WHERE m.tenant_id = t ORDER BY m.user_id;
END $function$;

CREATE OR REPLACE FUNCTION sutra.metrics(top integer DEFAULT 100, recent boolean DEFAULT false)
 RETURNS text
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET jit TO 'off'
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    PERFORM sutra._require_service('read metrics');
    RETURN (
        WITH counters AS (
            SELECT c.*, row_number() OVER (ORDER BY c.statements DESC, c.tenant_id) AS rank
            FROM sutra._tenant_counters() c
        ), storage AS (
            SELECT q.tenant_id, q.rows AS stored_rows, q.bytes AS storage_bytes, q.vectors AS stored_vectors
            FROM sutra._stored_totals() q
        ), rows AS (
            -- Label values escaped as the text format wants (backslash, double quote, newline).
            SELECT to_jsonb(c) || coalesce(to_jsonb(s), '{}')
                   || jsonb_build_object('labels', format('tenant_id="%s",tenant="%s",plan="%s"', c.tenant_id,
                                                          sutra._prometheus_label(coalesce(t.slug, '')),
                                                          sutra._prometheus_label(coalesce(t.plan, '')))) AS r,
                   coalesce(t.slug, '') AS slug
            FROM counters c LEFT JOIN sutra.tenants t ON t.id = c.tenant_id
            LEFT JOIN storage s ON s.tenant_id = c.tenant_id
            WHERE c.rank <= top OR (metrics.recent AND c.recent)
        ), defs (ord, col, name, kind, help) AS (VALUES
            (1, 'statements', 'statements', 'counter', 'Statements run by tenant sessions.'),
            (2, 'rows_read', 'rows_read', 'counter', 'Rows returned to tenant sessions.'),
            (3, 'rows_written', 'rows_written', 'counter', 'Rows inserted, updated or deleted by tenant sessions.'),
            (4, 'vector_searches', 'vector_searches', 'counter', 'Vector index searches of tenant sessions.'),
            (5, 'bytes_written', 'written_bytes', 'counter', 'Bytes written by tenant sessions.'),
            (6, 'connection_seconds', 'connection_seconds', 'counter', 'Seconds sessions held the tenant''s context.'),
            (7, 'rate_limited', 'rate_limited', 'counter', 'Statements refused by the rate limit.'),
            (8, 'concurrency_refused', 'concurrency_refused', 'counter', 'Statements refused by the concurrent statement limit.'),
            (9, 'connections_refused', 'connections_refused', 'counter', 'Contexts refused by the connection limit.'),
            (10, 'quota_refused', 'quota_refused', 'counter', 'Statements refused by a quota or a usage cap.'),
            (11, 'active_statements', 'active_statements', 'gauge', 'Statements running now.'),
            (12, 'connections', 'connections', 'gauge', 'Sessions holding the tenant''s context now.'),
            (13, 'stored_rows', 'stored_rows', 'gauge', 'Rows of the tenant in its tenant tables (quota counts).'),
            (14, 'storage_bytes', 'storage_bytes', 'gauge', 'Bytes of those rows (quota counts).'),
            (15, 'stored_vectors', 'stored_vectors', 'gauge', 'Vectors in those rows (quota counts).')
        ), named AS (
            SELECT d.*, CASE WHEN d.kind = 'counter' THEN '_total' ELSE '' END AS suffix, s.value AS server_value
            FROM defs d LEFT JOIN sutra._server_counters() s ON s.metric = d.col
        )
        SELECT string_agg(
                   -- Every tenant together (counters only), then the selected tenants.
                   CASE WHEN n.kind = 'counter' THEN
                       format(E'# HELP sutra_%s%s %s (all tenants, since server start)\n# TYPE sutra_%s%s counter\nsutra_%s%s %s\n',
                              n.name, n.suffix, n.help, n.name, n.suffix, n.name, n.suffix,
                              n.server_value)
                   ELSE '' END
                   || format(E'# HELP sutra_tenant_%s%s %s\n# TYPE sutra_tenant_%s%s %s\n',
                             n.name, n.suffix, n.help, n.name, n.suffix, n.kind)
                   || coalesce((SELECT string_agg(format(E'sutra_tenant_%s%s{%s} %s\n', n.name, n.suffix,
                                                         x.r ->> 'labels', coalesce(x.r ->> n.col, '0')),
                                                  '' ORDER BY x.slug, x.r ->> 'tenant_id') FROM rows x), ''),
                   '' ORDER BY n.ord)
        FROM named n)
    || (SELECT E'# HELP sutra_auth_failures_total Failed authentications since server start.\n'
               || E'# TYPE sutra_auth_failures_total counter\n'
               || format(E'sutra_auth_failures_total %s\n', max(l.value) FILTER (WHERE l.name = 'auth_failures'))
               || E'# HELP sutra_quota_refusals_total Statements refused over a limit since server start, by limit (usage_cap: every usage cap).\n'
               || E'# TYPE sutra_quota_refusals_total counter\n'
               || string_agg(format(E'sutra_quota_refusals_total{limit="%s"} %s\n', l.limit_name, l.value), ''
                             ORDER BY l.limit_name) FILTER (WHERE l.name = 'refusals')
               || E'# HELP sutra_audit_events_dropped_total Audit events of failed authentications and refusals lost to a full queue.\n'
               || E'# TYPE sutra_audit_events_dropped_total counter\n'
               || format(E'sutra_audit_events_dropped_total %s\n', max(l.value) FILTER (WHERE l.name = 'audit_events_dropped'))
        FROM sutra._limit_counters() l)
    || (SELECT string_agg(format(E'# HELP sutra_%s %s\n# TYPE sutra_%s %s\nsutra_%s %s\n',
                                 s.name, s.help, s.name, s.kind, s.name, s.value), '')
        FROM sutra._shared_tables() s);
END $function$;

CREATE OR REPLACE FUNCTION sutra.reconcile_usage(tenant text)
 RETURNS TABLE(table_name regclass, rows bigint, bytes bigint, vectors bigint)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    t uuid := (sutra._tenant_row(tenant)).id;
BEGIN
    PERFORM sutra._require_service('reconcile usage');
    CREATE TEMP TABLE sutra_recount ON COMMIT DROP AS
        SELECT c.table_name::regclass AS table_name, c.rows, c.bytes, c.vectors FROM sutra._count_tenant_rows(t) c;
    PERFORM sutra._quota_set(c.table_name::oid, t, c.rows, c.bytes, c.vectors) FROM sutra_recount c;
    PERFORM sutra._quota_set(NULL, t, coalesce(sum(c.rows), 0)::bigint, coalesce(sum(c.bytes), 0)::bigint,
                             coalesce(sum(c.vectors), 0)::bigint) FROM sutra_recount c;
    PERFORM sutra._audit('quota.reconcile', t, coalesce((SELECT jsonb_object_agg(c.table_name::text, c.rows) FROM sutra_recount c), '{}'));
    RETURN QUERY SELECT * FROM sutra_recount c ORDER BY 1;
    DROP TABLE sutra_recount;
END $function$;

CREATE OR REPLACE FUNCTION sutra.record_usage(event_type text, quantity numeric DEFAULT 1, properties jsonb DEFAULT '{}'::jsonb, idempotency_key text DEFAULT NULL::text, occurred_at timestamp with time zone DEFAULT NULL::timestamp with time zone, tenant text DEFAULT NULL::text)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    t uuid;
    id uuid := gen_random_uuid();
    at timestamptz := coalesce(occurred_at, now());
    clock timestamptz := clock_timestamp();
    max_age interval := current_setting('sutra.usage_event_max_age')::interval;
    max_future interval := current_setting('sutra.usage_event_max_future')::interval;
BEGIN
    IF tenant IS NOT NULL THEN
        PERFORM sutra._require_service('record usage for a tenant');
        t := (sutra._tenant_row(tenant)).id;
    ELSE
        t := sutra.current_tenant('write');
    END IF;
    IF event_type IS NULL OR event_type !~ '^[A-Za-z0-9_.:-]{1,100}$' THEN
        RAISE EXCEPTION 'invalid event type "%"',
            left(event_type, 100) || CASE WHEN length(event_type) > 100 THEN '...' ELSE '' END
            USING ERRCODE = '22023',
            DETAIL = 'An event type is 1 to 100 characters: letters, digits, and _ . : or -.';
    END IF;
    -- NaN sorts above every number, and Infinity above 10^15: neither is in range.
    IF quantity IS NULL OR NOT quantity BETWEEN 0 AND 1e15 THEN
        RAISE EXCEPTION 'invalid quantity %', coalesce('"' || left(quantity::text, 40) || '"', 'NULL')
            USING ERRCODE = '22023', DETAIL = 'A quantity is a finite number from 0 to 10^15.';
    END IF;
    IF length(idempotency_key) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'invalid idempotency key' USING ERRCODE = '22023',
            DETAIL = format('An idempotency key is 1 to 255 characters; this one has %s.', length(idempotency_key));
    END IF;
    properties := coalesce(properties, '{}');
    IF jsonb_typeof(properties) <> 'object' THEN
        RAISE EXCEPTION 'event properties must be a JSON object' USING ERRCODE = '22023',
            DETAIL = format('The properties given are a JSON %s.', jsonb_typeof(properties));
    END IF;
    IF pg_column_size(properties) > 8192 THEN
        RAISE EXCEPTION 'event properties are too large' USING ERRCODE = '22023',
            DETAIL = format('Properties take at most 8192 bytes as jsonb; these take %s.', pg_column_size(properties));
    END IF;
    -- An event without a time happens now (at the start of the transaction): always in the window.
    IF occurred_at IS NOT NULL THEN
        IF sutra._caller_is_service() THEN
            IF NOT at BETWEEN '2000-01-01 00:00:00+00' AND clock + max_future THEN
                RAISE EXCEPTION 'occurred_at must be from 2000-01-01 to % after the current time',
                    current_setting('sutra.usage_event_max_future')
                    USING ERRCODE = '22008',
                    DETAIL = 'Superusers and members of sutra_service date events from 2000-01-01 00:00 UTC to sutra.usage_event_max_future ahead.';
            END IF;
        ELSIF NOT at BETWEEN greatest(clock - max_age, '2000-01-01 00:00:00+00') AND clock + max_future THEN
            RAISE EXCEPTION 'occurred_at must be from % before to % after the current time',
                current_setting('sutra.usage_event_max_age'), current_setting('sutra.usage_event_max_future')
                USING ERRCODE = '22008',
                DETAIL = 'A tenant session dates events within sutra.usage_event_max_age back and sutra.usage_event_max_future ahead; superusers and members of sutra_service may backfill to 2000-01-01.';
        END IF;
    END IF;
    IF idempotency_key IS NOT NULL THEN
        INSERT INTO sutra.usage_event_keys VALUES (t, idempotency_key, id) ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
    END IF;
    PERFORM sutra._charge_caps(t, event_type, quantity, at);
    PERFORM sutra._usage_events_partition(at);
    INSERT INTO sutra.usage_events (tenant_id, event_type, quantity, properties, idempotency_key, occurred_at, event_id)
    VALUES (t, event_type, quantity, properties, idempotency_key, at, id);
    -- Next month's partition is made ahead, unless another transaction is making a partition, so
    -- that the first events of a month seldom wait for one (nor for a transaction that made it
    -- and has not ended).
    PERFORM sutra._usage_events_partition(date_trunc('month', clock, 'UTC') + interval '1 month', false);
    RETURN true;
END $function$;

CREATE OR REPLACE FUNCTION sutra.record_usage_batch(events jsonb, tenant text DEFAULT NULL::text)
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    t uuid;
    clock timestamptz := clock_timestamp();
    lo timestamptz;
    hi timestamptz;
    bad record;
    l jsonb;
    g record;
    month timestamptz;
    types text[];
    quantities numeric[];
    props jsonb[];
    keys text[];
    ats timestamptz[];
    ids uuid[];
BEGIN
    IF tenant IS NOT NULL THEN
        PERFORM sutra._require_service('record usage for a tenant');
        t := (sutra._tenant_row(tenant)).id;
    ELSE
        t := sutra.current_tenant('write');
    END IF;
    IF jsonb_typeof(events) IS DISTINCT FROM 'array' OR jsonb_array_length(events) > 10000 THEN
        RAISE EXCEPTION 'events must be a JSON array of at most 10000 objects' USING ERRCODE = '22023',
            DETAIL = format('The value given is a JSON %s%s.', coalesce(jsonb_typeof(events), 'null'),
                            CASE WHEN jsonb_typeof(events) = 'array'
                                 THEN ' of ' || jsonb_array_length(events) || ' elements' ELSE '' END);
    END IF;
    lo := CASE WHEN sutra._caller_is_service() THEN '2000-01-01 00:00:00+00'
               ELSE greatest(clock - current_setting('sutra.usage_event_max_age')::interval, '2000-01-01 00:00:00+00') END;
    hi := clock + current_setting('sutra.usage_event_max_future')::interval;
    -- The first event that record_usage would refuse, and why.
    SELECT x.i, x.why INTO bad FROM (
        SELECT i, CASE
            WHEN jsonb_typeof(e) <> 'object' THEN 'is not a JSON object'
            WHEN jsonb_typeof(e -> 'event_type') IS DISTINCT FROM 'string'
                 OR NOT (e ->> 'event_type') ~ '^[A-Za-z0-9_.:-]{1,100}$'
                THEN 'has no valid event_type (1 to 100 characters: letters, digits, and _ . : or -)'
            WHEN e ? 'quantity' AND (jsonb_typeof(e -> 'quantity') <> 'number'
                                     OR NOT (e ->> 'quantity')::numeric BETWEEN 0 AND 1e15)
                THEN 'has a quantity that is not a number from 0 to 10^15'
            WHEN e ? 'properties' AND jsonb_typeof(e -> 'properties') <> 'object'
                THEN 'has properties that are not a JSON object'
            WHEN pg_column_size(e -> 'properties') > 8192 THEN 'has properties of more than 8192 bytes'
            WHEN e ? 'idempotency_key' AND (jsonb_typeof(e -> 'idempotency_key') <> 'string'
                                            OR length(e ->> 'idempotency_key') NOT BETWEEN 1 AND 255)
                THEN 'has an idempotency_key that is not a string of 1 to 255 characters'
            WHEN e ? 'occurred_at' AND jsonb_typeof(e -> 'occurred_at') <> 'string'
                THEN 'has an occurred_at that is not a timestamp string'
            WHEN e ? 'occurred_at' AND NOT (e ->> 'occurred_at')::timestamptz BETWEEN lo AND hi
                THEN 'has an occurred_at outside the window record_usage takes (sutra.usage_event_max_age back, sutra.usage_event_max_future ahead)'
            WHEN (SELECT count(*) FROM jsonb_object_keys(e) k
                  WHERE k NOT IN ('event_type', 'quantity', 'properties', 'idempotency_key', 'occurred_at')) > 0
                THEN 'has a key other than event_type, quantity, properties, idempotency_key and occurred_at'
            END AS why
        FROM jsonb_array_elements(events) WITH ORDINALITY x(e, i)) x
    WHERE x.why IS NOT NULL ORDER BY x.i LIMIT 1;
    IF bad.i IS NOT NULL THEN
        RAISE EXCEPTION 'invalid usage event at position %', bad.i USING ERRCODE = '22023',
            DETAIL = format('Event %s %s.', bad.i, bad.why);
    END IF;
    -- The events not seen before (by idempotency key, in the batch and before it).
    WITH ev AS (
        SELECT x.i, x.e ->> 'event_type' AS event_type, coalesce((x.e ->> 'quantity')::numeric, 1) AS quantity,
               coalesce(x.e -> 'properties', '{}') AS properties, x.e ->> 'idempotency_key' AS key,
               coalesce((x.e ->> 'occurred_at')::timestamptz, now()) AS at, gen_random_uuid() AS id
        FROM jsonb_array_elements(events) WITH ORDINALITY x(e, i)
    ), first AS (
        SELECT DISTINCT ON (ev.key) ev.key, ev.id FROM ev WHERE ev.key IS NOT NULL ORDER BY ev.key, ev.i
    ), new_keys AS (
        INSERT INTO sutra.usage_event_keys SELECT t, f.key, f.id FROM first f
        ON CONFLICT DO NOTHING RETURNING event_id
    )
    SELECT array_agg(ev.event_type ORDER BY ev.i), array_agg(ev.quantity ORDER BY ev.i),
           array_agg(ev.properties ORDER BY ev.i), array_agg(ev.key ORDER BY ev.i), array_agg(ev.at ORDER BY ev.i),
           array_agg(ev.id ORDER BY ev.i)
    INTO types, quantities, props, keys, ats, ids
    FROM ev WHERE ev.key IS NULL OR ev.id IN (SELECT n.event_id FROM new_keys n);
    IF types IS NULL THEN
        RETURN 0;
    END IF;
    -- Caps: the events of one type and day are charged together.
    l := sutra._usage_caps(t);
    IF l ?| '{monthly,daily,monthly_cost,daily_cost}' THEN
        FOR g IN SELECT u.ty, date_trunc('day', u.at, 'UTC') AS day, sum(u.q) AS q
                 FROM unnest(types, quantities, ats) u(ty, q, at) GROUP BY 1, 2 ORDER BY 1, 2 LOOP
            PERFORM sutra._charge_caps(t, g.ty, g.q, g.day);
        END LOOP;
    END IF;
    FOR month IN SELECT DISTINCT date_trunc('month', u.at, 'UTC') FROM unnest(ats) u(at) LOOP
        PERFORM sutra._usage_events_partition(month);
    END LOOP;
    INSERT INTO sutra.usage_events (tenant_id, event_type, quantity, properties, idempotency_key, occurred_at, event_id)
    SELECT t, u.ty, u.q, u.p, u.k, u.at, u.id FROM unnest(types, quantities, props, keys, ats, ids) u(ty, q, p, k, at, id);
    PERFORM sutra._usage_events_partition(date_trunc('month', clock, 'UTC') + interval '1 month', false);
    RETURN cardinality(types);
END $function$;

CREATE OR REPLACE FUNCTION sutra.remove_member(user_id text, tenant text DEFAULT NULL::text)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    t uuid := sutra._members_tenant(tenant, NULL);
    old text;
BEGIN
    SELECT m.role INTO old FROM sutra.tenant_members m WHERE m.tenant_id = t AND m.user_id = remove_member.user_id;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF old = 'owner' AND NOT sutra._caller_is_service() THEN
        RAISE EXCEPTION 'permission denied to change the owners of a tenant' USING ERRCODE = '42501',
            HINT = 'Superusers and members of sutra_service make and unmake owners.';
    END IF;
    PERFORM sutra._keep_an_owner(t, user_id);
    DELETE FROM sutra.tenant_members m WHERE m.tenant_id = t AND m.user_id = remove_member.user_id;
    PERFORM sutra._audit('member.remove', t, jsonb_build_object('user_id', user_id, 'role', old));
    RETURN true;
END $function$;

CREATE OR REPLACE FUNCTION sutra.role_scopes(role text)
 RETURNS text[]
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT CASE role WHEN 'owner' THEN '{read,write,admin}'::text[] WHEN 'admin' THEN '{read,write,admin}'
                     WHEN 'member' THEN '{read,write}' WHEN 'viewer' THEN '{read}' END
$function$;

CREATE OR REPLACE FUNCTION sutra.rotate_secrets_key()
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    current text;
    r record;
    s record;
    n integer := 0;
BEGIN
    PERFORM sutra._require_service('rotate the secrets key');
    current := sutra._secrets_key_id();
    IF current IS NULL THEN
        RAISE EXCEPTION 'tenant secrets are off: sutra.secrets_key is not set' USING ERRCODE = '55000';
    END IF;
    FOR r IN SELECT * FROM sutra.tenant_secrets x WHERE x.key_id <> current FOR UPDATE LOOP
        BEGIN
            SELECT * INTO s FROM sutra._seal_secret(r.tenant_id, r.name,
                                                    sutra._open_secret(r.tenant_id, r.name, r.sealed, r.key_id));
        EXCEPTION WHEN data_corrupted OR object_not_in_prerequisite_state THEN
            -- A value that does not open (changed, or sealed with a key not configured) stays as
            -- it is; the others are sealed again.
            RAISE WARNING 'secret "%" of tenant % does not open; it is left as it is', r.name, r.tenant_id;
            CONTINUE;
        END;
        UPDATE sutra.tenant_secrets x SET sealed = s.sealed, key_id = s.key_id
        WHERE x.tenant_id = r.tenant_id AND x.name = r.name;
        n := n + 1;
    END LOOP;
    PERFORM sutra._audit('secret.rotate_key', NULL, jsonb_build_object('sealed_again', n, 'key_id', current));
    RETURN n;
END $function$;

CREATE OR REPLACE FUNCTION sutra.secret(name text, tenant text DEFAULT NULL::text)
 RETURNS text
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    t uuid := sutra._secret_tenant(tenant, 'read a secret');
    r sutra.tenant_secrets;
BEGIN
    SELECT * INTO r FROM sutra.tenant_secrets x WHERE x.tenant_id = t AND x.name = secret.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'secret "%" does not exist', left(secret.name, 64) USING ERRCODE = '42704';
    END IF;
    PERFORM sutra._secret_read(t, r.name);
    RETURN sutra._open_secret(t, r.name, r.sealed, r.key_id);
END $function$;

CREATE OR REPLACE FUNCTION sutra.secrets_list(tenant text DEFAULT NULL::text)
 RETURNS TABLE(name text, created_at timestamp with time zone, rotated_at timestamp with time zone)
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT x.name, x.created_at, x.rotated_at FROM sutra.tenant_secrets x
    WHERE x.tenant_id = sutra._secret_tenant(tenant, 'list the secrets') ORDER BY x.name;
$function$;

CREATE OR REPLACE FUNCTION sutra.set_feature(flag text, enabled boolean, tenant text DEFAULT NULL::text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    t uuid := sutra._settings_tenant(tenant, flag, 'feature');
BEGIN
    UPDATE sutra.tenants x
    SET features = CASE WHEN enabled IS NULL THEN x.features - flag
                        ELSE x.features || jsonb_build_object(flag, enabled) END,
        updated_at = now()
    WHERE x.id = t;
    PERFORM sutra._audit('feature.set', t, jsonb_build_object('flag', flag, 'enabled', enabled));
END $function$;

CREATE OR REPLACE FUNCTION sutra.set_secret(name text, value text, tenant text DEFAULT NULL::text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    t uuid;
    s record;
BEGIN
    PERFORM sutra._hide_secret_value(value);
    t := sutra._secret_tenant(tenant, 'set a secret');
    PERFORM sutra._check_secret_name(set_secret.name);
    IF value IS NULL OR value = '' THEN
        RAISE EXCEPTION 'a secret''s value must not be empty' USING ERRCODE = '22023',
            HINT = 'sutra.delete_secret(name) removes a secret.';
    END IF;
    SELECT * INTO s FROM sutra._seal_secret(t, name, value);
    INSERT INTO sutra.tenant_secrets AS x (tenant_id, name, sealed, key_id) VALUES (t, set_secret.name, s.sealed, s.key_id)
    ON CONFLICT ON CONSTRAINT tenant_secrets_pkey
    DO UPDATE SET sealed = EXCLUDED.sealed, key_id = EXCLUDED.key_id, rotated_at = now();
    PERFORM sutra._audit('secret.set', t, jsonb_build_object('name', set_secret.name));
END $function$;

CREATE OR REPLACE FUNCTION sutra.set_setting(key text, value jsonb, tenant text DEFAULT NULL::text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
END $function$;

CREATE OR REPLACE FUNCTION sutra.tenant_checksum(tenant text)
 RETURNS text
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
END $function$;

CREATE OR REPLACE FUNCTION sutra.trim_audit_log()
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    retention interval := current_setting('sutra.audit_retention')::interval;
    n bigint;
BEGIN
    PERFORM sutra._require_service('trim the audit log');
    IF retention <= interval '0' THEN
        RETURN 0;
    END IF;
    DELETE FROM sutra.audit_log a WHERE a.at < now() - retention;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM sutra._audit('audit.trim', NULL, jsonb_build_object('deleted', n, 'retention', retention::text));
    END IF;
    RETURN n;
END $function$;

CREATE OR REPLACE FUNCTION sutra.unset_setting(key text, tenant text DEFAULT NULL::text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    t uuid := sutra._settings_tenant(tenant, key, 'setting');
BEGIN
    UPDATE sutra.tenants x SET settings = x.settings - unset_setting.key, updated_at = now() WHERE x.id = t;
    PERFORM sutra._audit('setting.unset', t, jsonb_build_object('key', key));
END $function$;

CREATE OR REPLACE FUNCTION sutra.update_member(user_id text, role text, tenant text DEFAULT NULL::text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    t uuid := sutra._members_tenant(tenant, role);
    old text;
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'invalid role "%"', role USING ERRCODE = '22023';
    END IF;
    SELECT m.role INTO old FROM sutra.tenant_members m WHERE m.tenant_id = t AND m.user_id = update_member.user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user "%" is not a member of the tenant', user_id USING ERRCODE = '42704';
    END IF;
    IF old = 'owner' AND NOT sutra._caller_is_service() THEN
        RAISE EXCEPTION 'permission denied to change the owners of a tenant' USING ERRCODE = '42501',
            HINT = 'Superusers and members of sutra_service make and unmake owners.';
    END IF;
    IF role <> 'owner' THEN
        PERFORM sutra._keep_an_owner(t, user_id);
    END IF;
    UPDATE sutra.tenant_members m SET role = update_member.role, updated_at = now()
    WHERE m.tenant_id = t AND m.user_id = update_member.user_id;
    PERFORM sutra._audit('member.update', t, jsonb_build_object('user_id', user_id, 'role', role, 'was', old));
END $function$;

CREATE OR REPLACE FUNCTION sutra.usage_summary(tenant text, from_ts timestamp with time zone, to_ts timestamp with time zone, granularity text, group_by text)
 RETURNS TABLE(bucket timestamp with time zone, metric text, group_value text, quantity numeric)
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    t uuid := (sutra._tenant_row(tenant)).id;
BEGIN
    PERFORM sutra._require_usage_reader(t);
    IF granularity IS NULL OR granularity NOT IN ('minute', 'hour', 'day', 'month') THEN
        RAISE EXCEPTION 'invalid granularity "%"', granularity USING ERRCODE = '22023',
            HINT = 'Use minute, hour, day or month.';
    END IF;
    RETURN QUERY
    SELECT date_trunc(granularity, u.at, 'UTC') AS b, u.m, u.g, sum(u.q)
    FROM (SELECT r.minute AS at, r.metric AS m, NULL::text AS g, r.quantity AS q FROM sutra.usage_rollups r
          WHERE r.tenant_id = t AND r.minute >= from_ts AND r.minute < to_ts
          UNION ALL
          SELECT e.occurred_at, e.event_type, e.properties ->> group_by, e.quantity FROM sutra.usage_events e
          WHERE e.tenant_id = t AND e.occurred_at >= from_ts AND e.occurred_at < to_ts) u
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;
END $function$;

CREATE OR REPLACE FUNCTION sutra.usage_summary(tenant uuid, from_ts timestamp with time zone, to_ts timestamp with time zone, granularity text, group_by text)
 RETURNS TABLE(bucket timestamp with time zone, metric text, group_value text, quantity numeric)
 LANGUAGE sql
 STABLE
AS $function$ SELECT * FROM sutra.usage_summary(tenant::text, from_ts, to_ts, granularity, group_by) $function$;

CREATE OR REPLACE FUNCTION sutra._apply_tenant_policies(tbl regclass, tenant_column name)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    -- The tenant of the context, looked up once per query (an InitPlan). Citus refuses subqueries
    -- in the policies of distributed tables: in a Citus database the policies call
    -- current_tenant_checked directly (parallel restricted: the process that runs the query checks
    -- the context in full), and sutra's planner hook adds the tenant as a constant, which routes
    -- the query to the tenant's shard.
    fmt text := CASE WHEN sutra._citus_installed()
                     THEN 'sutra.current_tenant_checked(%L)' ELSE '(SELECT sutra.current_tenant(%L))' END;
    rd text := format(fmt, 'read');
    wr text := format(fmt, 'write');
BEGIN
    PERFORM sutra._drop_tenant_policies(tbl);
    EXECUTE format('CREATE POLICY sutra_tenant_select ON %s FOR SELECT USING (%I = %s)', tbl, tenant_column, rd);
    EXECUTE format('CREATE POLICY sutra_tenant_insert ON %s FOR INSERT WITH CHECK (%I = %s)', tbl, tenant_column, wr);
    EXECUTE format('CREATE POLICY sutra_tenant_update ON %s FOR UPDATE USING (%I = %s) WITH CHECK (%I = %s)',
                   tbl, tenant_column, wr, tenant_column, wr);
    EXECUTE format('CREATE POLICY sutra_tenant_delete ON %s FOR DELETE USING (%I = %s)', tbl, tenant_column, wr);
    -- Last and in one statement: the partition event trigger sees the table complete and stops.
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', tbl);
END $function$;

CREATE OR REPLACE FUNCTION sutra._citus_coordinator()
 RETURNS boolean
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    -- citus_is_coordinator exists only where the citus extension does: looked up only then.
    IF NOT sutra._citus_installed() THEN
        RETURN false;
    END IF;
    RETURN citus_is_coordinator();
END $function$;

CREATE OR REPLACE FUNCTION sutra._cluster_grants_distributed()
 RETURNS boolean
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    IF NOT sutra._citus_installed() THEN
        RETURN false;
    END IF;
    RETURN EXISTS (SELECT 1 FROM pg_dist_partition p WHERE p.logicalrelid = 'sutra.cluster_grants'::regclass);
END $function$;

CREATE OR REPLACE FUNCTION sutra._cluster_grant_rows()
 RETURNS TABLE(kind text, id text, value text)
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    RETURN QUERY
    SELECT 'tenant', t.id::text, t.status FROM sutra.tenants t
    UNION ALL
    SELECT 'limits', t.id::text, sutra._limits(t.id)::text FROM sutra.tenants t
    UNION ALL
    SELECT 'key', k.key_id, CASE WHEN k.revoked_at IS NOT NULL THEN '0'
                                 ELSE coalesce(extract(epoch FROM k.expires_at)::int8, 9223372036854775807)::text END
    FROM sutra.api_key_store k
    UNION ALL
    SELECT 'member', m.tenant_id::text || '/' || m.user_id, array_to_string(sutra.role_scopes(m.role), ',')
    FROM sutra.tenant_members m;
END $function$;

CREATE OR REPLACE FUNCTION sutra._cluster_grants_sync()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    old_id text;
    new_id text;
BEGIN
    IF TG_RELID NOT IN ('sutra.tenants'::regclass, 'sutra.plans'::regclass, 'sutra.api_key_store'::regclass,
                        'sutra.tenant_members'::regclass) THEN
        RAISE EXCEPTION 'sutra._cluster_grants_sync is a trigger of sutra''s own tables only'
            USING ERRCODE = '42501';
    END IF;
    IF NOT sutra._cluster_grants_distributed() THEN
        RETURN NULL;
    END IF;
    -- The coordinator holds the cluster's tenants, keys and members; a worker's own would be
    -- known to it alone.
    IF NOT sutra._citus_coordinator() THEN
        RAISE EXCEPTION 'tenants, plans, API keys and members of a Citus cluster change on its coordinator only'
            USING ERRCODE = '0A000', HINT = 'Connect to the coordinator to run this.';
    END IF;
    IF TG_RELID = 'sutra.tenants'::regclass THEN
        IF TG_OP <> 'INSERT' THEN old_id := OLD.id::text; END IF;
        IF TG_OP <> 'DELETE' THEN new_id := NEW.id::text; END IF;
        PERFORM sutra._cluster_grant_put('tenant', old_id, new_id, NEW.status);
        PERFORM sutra._cluster_grant_put('limits', old_id, new_id, sutra._limits(NEW.id)::text);
    ELSIF TG_RELID = 'sutra.plans'::regclass THEN
        PERFORM sutra._cluster_grant_put('limits', t.id::text, t.id::text, sutra._limits(t.id)::text)
        FROM sutra.tenants t WHERE t.plan = NEW.name;
    ELSIF TG_RELID = 'sutra.api_key_store'::regclass THEN
        IF TG_OP <> 'INSERT' THEN old_id := OLD.key_id; END IF;
        IF TG_OP <> 'DELETE' THEN new_id := NEW.key_id; END IF;
        PERFORM sutra._cluster_grant_put('key', old_id, new_id,
            CASE WHEN NEW.revoked_at IS NOT NULL THEN '0'
                 ELSE coalesce(extract(epoch FROM NEW.expires_at)::int8, 9223372036854775807)::text END);
    ELSE
        IF TG_OP <> 'INSERT' THEN old_id := OLD.tenant_id::text || '/' || OLD.user_id; END IF;
        IF TG_OP <> 'DELETE' THEN new_id := NEW.tenant_id::text || '/' || NEW.user_id; END IF;
        PERFORM sutra._cluster_grant_put('member', old_id, new_id, array_to_string(sutra.role_scopes(NEW.role), ','));
    END IF;
    RETURN NULL;
END $function$;
CREATE OR REPLACE FUNCTION sutra._citus_distribution_column(tbl regclass)
 RETURNS name
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    IF NOT sutra._citus_installed() THEN
        RETURN NULL;
    END IF;
    RETURN (SELECT column_to_column_name(p.logicalrelid, p.partkey) FROM pg_dist_partition p
            WHERE p.logicalrelid = tbl AND p.partkey IS NOT NULL);
END $function$;
CREATE OR REPLACE FUNCTION sutra.citus_setup()
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
 SET client_min_messages TO 'warning'
AS $function$
BEGIN
    IF NOT sutra._citus_coordinator() OR sutra._cluster_grants_distributed() THEN
        RETURN;
    END IF;
    DELETE FROM sutra.cluster_grants;
    INSERT INTO sutra.cluster_grants SELECT * FROM sutra._cluster_grant_rows();
    PERFORM create_reference_table('sutra.cluster_grants');
    -- The coordinator's own rows moved into the shards.
    PERFORM truncate_local_data_after_distributing_table('sutra.cluster_grants');
END $function$;
CREATE OR REPLACE FUNCTION sutra._hnsw_placements(index regclass, fn text)
 RETURNS TABLE(node text, shard text, result json)
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    tbl regclass := (SELECT i.indrelid FROM pg_index i WHERE i.indexrelid = index);
    schema_name text := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = index);
    index_name text := (SELECT c.relname FROM pg_class c WHERE c.oid = index);
    r record;
    ran record;
BEGIN
    IF fn NOT IN ('hnsw_stats', 'hnsw_check') THEN
        RAISE EXCEPTION 'unknown function "%"', fn USING ERRCODE = '22023';
    END IF;
    IF tbl IS NULL OR (SELECT a.amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam WHERE c.oid = index) <> 'sutra_hnsw' THEN
        RAISE EXCEPTION '"%" is not a sutra_hnsw index', index USING ERRCODE = '42809';
    END IF;
    IF sutra._citus_distribution_column(tbl) IS NULL THEN
        RAISE EXCEPTION 'index % is not on a table distributed by Citus', index USING ERRCODE = '42809',
            HINT = format('sutra.%s reports an index of this server.', fn);
    END IF;
    FOR r IN SELECT s.shardid, p.nodename, p.nodeport
             FROM pg_dist_shard s JOIN pg_dist_shard_placement p USING (shardid)
             WHERE s.logicalrelid = tbl ORDER BY s.shardid, p.nodename, p.nodeport LOOP
        -- Citus names a shard's index <index>_<shard id>, in the schema of the index.
        SELECT * INTO ran FROM master_run_on_worker(ARRAY[r.nodename], ARRAY[r.nodeport],
            ARRAY[format('SELECT coalesce(json_agg(s), %L) FROM sutra.%I(%L::regclass) s', '[]', fn,
                         format('%I.%I', schema_name, index_name || '_' || r.shardid))], false);
        IF NOT ran.success THEN
            RAISE EXCEPTION 'sutra.% failed on %:%: %', fn, r.nodename, r.nodeport, ran.result;
        END IF;
        node := r.nodename || ':' || r.nodeport;
        shard := shard_name(tbl, r.shardid);
        result := ran.result::json;
        RETURN NEXT;
    END LOOP;
END $function$;
CREATE OR REPLACE FUNCTION sutra.cluster_hnsw_stats(index regclass)
 RETURNS TABLE(node text, shard text, partition text, elements bigint, pages bigint, levels integer, kind text)
 LANGUAGE sql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT p.node, p.shard, s.partition, s.elements, s.pages, s.levels, s.kind
    FROM sutra._hnsw_placements(index, 'hnsw_stats') p,
         json_to_recordset(p.result) AS s(partition text, elements bigint, pages bigint, levels integer, kind text)
    ORDER BY 2, 3
$function$;
CREATE OR REPLACE FUNCTION sutra.cluster_hnsw_check(index regclass)
 RETURNS TABLE(node text, shard text, partitions bigint, elements bigint, heap_rows bigint, unreachable bigint, problems text[])
 LANGUAGE sql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT p.node, p.shard, s.partitions, s.elements, s.heap_rows, s.unreachable, s.problems
    FROM sutra._hnsw_placements(index, 'hnsw_check') p,
         json_to_recordset(p.result) AS s(partitions bigint, elements bigint, heap_rows bigint, unreachable bigint, problems text[])
    ORDER BY 2
$function$;
CREATE OR REPLACE FUNCTION sutra._citus_installed()
 RETURNS boolean
 LANGUAGE sql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT EXISTS (SELECT 1 FROM pg_extension e WHERE e.extname = 'citus')
$function$;
CREATE OR REPLACE FUNCTION sutra.current_tenant_checked(scope text)
 RETURNS uuid
 LANGUAGE c
 STABLE PARALLEL RESTRICTED STRICT
AS 'MODULE_PATHNAME', $function$current_tenant_checked_wrapper$function$;
CREATE OR REPLACE FUNCTION sutra._cluster_grant_put(k text, old_id text, new_id text, v text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- PL/pgSQL: Citus plans the statements of SQL functions without their parameters.
    IF old_id IS NOT NULL AND old_id IS DISTINCT FROM new_id THEN
        DELETE FROM sutra.cluster_grants g WHERE g.kind = k AND g.id = old_id;
    END IF;
    IF new_id IS NOT NULL THEN
        INSERT INTO sutra.cluster_grants AS g (kind, id, value) VALUES (k, new_id, v)
        ON CONFLICT (kind, id) DO UPDATE SET value = EXCLUDED.value WHERE g.value IS DISTINCT FROM EXCLUDED.value;
    END IF;
END $$;
CREATE OR REPLACE FUNCTION sutra._citus_shard_quota_triggers(shard regclass)
 RETURNS boolean
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    col name := (SELECT a.attname FROM pg_attribute a JOIN pg_policy y ON y.polrelid = a.attrelid
                 WHERE a.attrelid = shard AND a.attnum > 0 AND NOT a.attisdropped AND y.polname = 'sutra_tenant_insert'
                   AND pg_get_expr(y.polwithcheck, y.polrelid)
                       = format('(%s = sutra.current_tenant_checked(''write''::text))', quote_ident(a.attname)));
    o record := pg_identify_object('pg_class'::regclass, shard, 0);
    part regclass;
BEGIN
    -- A shard is named after its table with the shard's number (Citus's catalog does not know
    -- it yet as it is made); the shell table of a distributed table is not.
    IF col IS NULL OR o.name !~ '_[0-9]+$'
       OR coalesce(pg_partition_root(shard), shard) <> shard
       OR EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = shard AND g.tgname = 'sutra_quota_row') THEN
        RETURN false;
    END IF;
    FOR part IN SELECT t.relid FROM pg_partition_tree(shard) t WHERE t.relid <> shard LOOP
        PERFORM sutra._citus_shard_attach(shard, part, true);
    END LOOP;
    EXECUTE format('CREATE TRIGGER sutra_quota_row AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION sutra._quota_row(%L)', shard, col);
    EXECUTE format('CREATE TRIGGER sutra_quota_truncate BEFORE TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION sutra._quota_truncate(%L)', shard, col);
    RETURN true;
END $function$;
CREATE OR REPLACE FUNCTION sutra._cluster_quota_counts(t uuid)
 RETURNS TABLE(table_name oid, rows bigint, bytes bigint, vectors bigint)
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    -- PL/pgSQL: Citus's catalog exists only where Citus does.
    RETURN QUERY
    WITH counts AS (
        SELECT e ->> 0 AS shard, (e ->> 1)::bigint AS r, (e ->> 2)::bigint AS b, (e ->> 3)::bigint AS v
        FROM sutra._worker_answers(
                 format($q$SELECT coalesce(json_agg(json_build_array(q.table_name::regclass::text, q.rows, q.bytes,
                                                                     q.vectors)), '[]')
                           FROM sutra._quota_counts(%L) q$q$, t),
                 format('the quota counts of tenant %s', t)) e
    )
    -- A shard's table: the one Citus's catalog numbers it for.
    SELECT s.logicalrelid::oid, sum(c.r)::bigint, sum(c.b)::bigint, sum(c.v)::bigint
    FROM counts c LEFT JOIN pg_dist_shard s ON s.shardid = substring(c.shard FROM '_([0-9]+)$')::int8
    WHERE c.shard IS NULL OR s.logicalrelid IS NOT NULL
    GROUP BY s.logicalrelid;
END $function$;
CREATE OR REPLACE FUNCTION sutra.quota_usage(tenant text)
RETURNS TABLE (limit_name text, used bigint, limit_value bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t uuid := (sutra._tenant_row(tenant)).id;
    l jsonb := sutra._limits(t);
    counts jsonb;
    c record;
BEGIN
    PERFORM sutra._require_usage_reader(t);
    IF sutra._citus_coordinator() THEN
        counts := (SELECT coalesce(jsonb_agg(to_jsonb(q)), '[]') FROM sutra._cluster_quota_counts(t) q);
    ELSE
        counts := (SELECT coalesce(jsonb_agg(to_jsonb(q)), '[]') FROM sutra._quota_counts(t) q);
    END IF;
    SELECT * INTO c FROM jsonb_to_recordset(counts) q(table_name oid, rows bigint, bytes bigint, vectors bigint)
    WHERE q.table_name IS NULL;
    RETURN QUERY VALUES ('rows_total', c.rows, (l ->> 'rows_total')::bigint),
                        ('storage_bytes', c.bytes, (l ->> 'storage_bytes')::bigint),
                        ('vectors', c.vectors, (l ->> 'vectors')::bigint);
    RETURN QUERY SELECT 'rows_per_table:' || q.table_name::regclass::text, q.rows, (l ->> 'rows_per_table')::bigint
                 FROM jsonb_to_recordset(counts) q(table_name oid, rows bigint, bytes bigint, vectors bigint)
                 WHERE q.table_name IS NOT NULL ORDER BY 1;
END $$;

CREATE OR REPLACE FUNCTION sutra._citus_shard_attach(parent regclass, part regclass, parent_has_trigger boolean DEFAULT false)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    IF (parent_has_trigger OR EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = parent AND g.tgname = 'sutra_quota_row'))
       AND EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = part AND g.tgname = 'sutra_quota_row'
                   AND g.tgparentid = 0 AND g.tgfoid = 'sutra._quota_row()'::regprocedure) THEN
        EXECUTE format('DROP TRIGGER sutra_quota_row ON %s', part);
    END IF;
END $function$;
-- Usage events: quantities and idempotency keys within range (record_usage refused others since
-- 0.2.0), and no default partition: its events move to their month's partition.
DO $$
DECLARE
    bad bigint := (SELECT count(*) FROM sutra.usage_events
                   WHERE NOT quantity BETWEEN 0 AND 1e15 OR length(idempotency_key) NOT BETWEEN 1 AND 255);
BEGIN
    IF bad > 0 THEN
        RAISE EXCEPTION 'sutra.usage_events has % events out of range', bad USING ERRCODE = '23514',
            DETAIL = 'sutra 0.2.0 takes quantities from 0 to 10^15 and idempotency keys of 1 to 255 characters.',
            HINT = 'Correct or delete those events, then run ALTER EXTENSION sutra UPDATE again.';
    END IF;
END $$;
ALTER TABLE usage_events DROP CONSTRAINT usage_events_quantity_check,
    ADD CONSTRAINT usage_events_quantity_check CHECK (quantity BETWEEN 0 AND 1e15),
    ADD CONSTRAINT usage_events_idempotency_key_check CHECK (length(idempotency_key) BETWEEN 1 AND 255);
ALTER TABLE usage_events DETACH PARTITION usage_events_default;
DO $$
DECLARE
    month timestamptz;
    part regclass;
BEGIN
    FOR month IN SELECT DISTINCT date_trunc('month', d.occurred_at, 'UTC') FROM sutra.usage_events_default d LOOP
        PERFORM sutra._usage_events_partition(month);
        -- A month partition is the application's data, not part of the extension (as those that
        -- record_usage makes).
        part := ('sutra.usage_events_' || to_char(month AT TIME ZONE 'UTC', 'YYYYMM'))::regclass;
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                   WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = part AND d.deptype = 'e') THEN
            EXECUTE format('ALTER EXTENSION sutra DROP TABLE %s', part);
        END IF;
    END LOOP;
    INSERT INTO sutra.usage_events SELECT * FROM sutra.usage_events_default;
END $$;
DROP TABLE usage_events_default;

-- Tenant tables are registered by their owners, under row level security; each registration and
-- its end is audited.
ALTER TABLE tenant_tables ENABLE ROW LEVEL SECURITY;
CREATE POLICY everyone_reads ON tenant_tables FOR SELECT USING (true);
CREATE POLICY owner_registers ON tenant_tables FOR INSERT
    WITH CHECK (sutra._may_register(table_name, tenant_column));
CREATE POLICY owner_changes ON tenant_tables FOR UPDATE USING (sutra._owns(table_name))
    WITH CHECK (sutra._may_register(table_name, tenant_column));
CREATE POLICY owner_unregisters ON tenant_tables FOR DELETE USING (sutra._owns(table_name));
GRANT INSERT, UPDATE (tenant_column), DELETE ON tenant_tables TO PUBLIC;
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON tenant_tables
    FOR EACH ROW EXECUTE FUNCTION _tenant_table_audit();

-- Usage caps' running totals are dropped when what they were kept for changes.
CREATE TRIGGER usage_totals_reset AFTER UPDATE OF plan, quota_overrides ON tenants
    FOR EACH ROW WHEN (OLD.plan IS DISTINCT FROM NEW.plan OR OLD.quota_overrides IS DISTINCT FROM NEW.quota_overrides)
    EXECUTE FUNCTION _usage_totals_reset();
CREATE TRIGGER usage_totals_reset AFTER UPDATE OF limits ON plans
    FOR EACH ROW WHEN (OLD.limits IS DISTINCT FROM NEW.limits) EXECUTE FUNCTION _usage_totals_reset();
CREATE TRIGGER usage_totals_reset AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON prices
    FOR EACH STATEMENT EXECUTE FUNCTION _usage_totals_reset();

CREATE VIEW tenants_near_limits AS SELECT * FROM sutra._tenants_near_limits();
GRANT SELECT ON tenants_near_limits TO sutra_service;

-- Metered usage in the billing exports (minute rows once their minute is over, with stable
-- identifiers), and COPY into usage events through a view.
CREATE VIEW _metered_events WITH (security_invoker = true) AS
    SELECT r.tenant_id, 'sutra.' || r.metric AS event_type,
           format('sutra.%s:%s:%s', r.metric, r.tenant_id, to_char(r.minute AT TIME ZONE 'UTC', 'YYYYMMDDHH24MI'))
               AS identifier,
           r.minute AS occurred_at, r.quantity
    FROM sutra.usage_rollups r
    WHERE r.minute < date_trunc('minute', now()) - interval '1 minute'
      AND r.minute >= (SELECT c.hours_until FROM sutra.usage_compaction c);
CREATE OR REPLACE VIEW usage_events_stripe WITH (security_invoker = true) AS
    SELECT e.event_type AS event_name,
           coalesce(e.idempotency_key, e.event_id::text) AS identifier,
           extract(epoch FROM e.occurred_at)::bigint AS "timestamp",
           jsonb_build_object('stripe_customer_id', t.settings ->> 'stripe_customer_id',
                              'value', e.quantity::text) AS payload,
           e.tenant_id, e.ingested_at
    FROM sutra.usage_events e JOIN sutra.tenants t ON t.id = e.tenant_id
    UNION ALL
    SELECT m.event_type, m.identifier, extract(epoch FROM m.occurred_at)::bigint,
           jsonb_build_object('stripe_customer_id', t.settings ->> 'stripe_customer_id', 'value', m.quantity::text),
           m.tenant_id, m.occurred_at + interval '1 minute'
    FROM sutra._metered_events m JOIN sutra.tenants t ON t.id = m.tenant_id;
CREATE OR REPLACE VIEW usage_events_cloudevents WITH (security_invoker = true) AS
    SELECT '1.0'::text AS specversion,
           e.event_type AS type,
           'sutra/' || current_database() AS source,
           coalesce(e.idempotency_key, e.event_id::text) AS id,
           e.tenant_id::text AS subject,
           e.occurred_at AS time,
           'application/json'::text AS datacontenttype,
           e.properties || jsonb_build_object('quantity', e.quantity) AS data,
           e.ingested_at
    FROM sutra.usage_events e
    UNION ALL
    SELECT '1.0', m.event_type, 'sutra/' || current_database(), m.identifier, m.tenant_id::text, m.occurred_at,
           'application/json', jsonb_build_object('quantity', m.quantity), m.occurred_at + interval '1 minute'
    FROM sutra._metered_events m;
CREATE VIEW usage_ingest AS
    SELECT NULL::text AS event_type, NULL::numeric AS quantity, NULL::jsonb AS properties,
           NULL::text AS idempotency_key, NULL::timestamptz AS occurred_at, NULL::text AS tenant
    WHERE false;
CREATE TRIGGER record INSTEAD OF INSERT ON usage_ingest FOR EACH ROW EXECUTE FUNCTION _usage_ingest_row();
GRANT SELECT ON _metered_events, usage_compaction TO PUBLIC;
GRANT INSERT ON usage_ingest TO PUBLIC;

-- Indexes for the reports, retention and compaction.
CREATE INDEX ON audit_log (at);
CREATE INDEX ON tenants (plan);
CREATE INDEX tenants_with_usage_caps ON tenants (id) WHERE quota_overrides ?| '{monthly,daily,monthly_cost,daily_cost}';
CREATE INDEX ON usage_rollups (minute);
COMMENT ON TABLE audit_log IS 'who did what to which tenant, when, from where; append-only, kept for sutra.audit_retention';
COMMENT ON TABLE usage_rollups IS 'metered usage per tenant, metric and minute; older rows hold an hour or a day (sutra.compact_usage)';

-- Privileges.
REVOKE ALL ON FUNCTION _check_plan(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION _compact_rollups(timestamptz, timestamptz, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION _count_tenant_rows(uuid, oid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _limits(uuid) TO sutra_service;
GRANT EXECUTE ON FUNCTION _quota_counts(uuid, boolean) TO sutra_service;
REVOKE ALL ON FUNCTION _quota_totals() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _quota_totals() TO sutra_service;
REVOKE ALL ON FUNCTION _server_counters() FROM PUBLIC;
REVOKE ALL ON FUNCTION _shared_tables() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _tenant_counters() TO sutra_service;
REVOKE ALL ON FUNCTION _tenant_table_audit() FROM PUBLIC;
REVOKE ALL ON FUNCTION _tenants_near_limits() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _tenants_near_limits() TO sutra_service;
REVOKE ALL ON FUNCTION _usage_events_partition(timestamptz, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION compact_usage() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION compact_usage() TO sutra_service;
REVOKE ALL ON FUNCTION metrics(integer, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION metrics(integer, boolean) TO sutra_service;
REVOKE ALL ON FUNCTION trim_audit_log() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION trim_audit_log() TO sutra_service;
GRANT INSERT, UPDATE, DELETE ON prices TO sutra_service;
REVOKE ALL ON FUNCTION _tenant_counters() FROM PUBLIC;
REVOKE ALL ON FUNCTION _usage_total_from_events(uuid, text, text, timestamptz, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION _usage_total_add(uuid, text, text, timestamptz, text, numeric) FROM PUBLIC;
REVOKE ALL ON FUNCTION _check_cap(uuid, text, text, jsonb, numeric, numeric, numeric, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION _charge_caps(uuid, text, numeric, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION _usage_totals_reset() FROM PUBLIC;
REVOKE ALL ON FUNCTION _cap_refused(uuid, text, double precision, double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION _limit_counters() FROM PUBLIC;
REVOKE ALL ON FUNCTION _seal_secret(uuid, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION _open_secret(uuid, text, bytea, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION _secrets_key_id() FROM PUBLIC;
REVOKE ALL ON FUNCTION _hide_secret_value(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION _secret_read(uuid, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION _secret_tenant(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION rotate_secrets_key() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rotate_secrets_key() TO sutra_service;
REVOKE ALL ON FUNCTION _usage_caps(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION _tenant_settings(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION _settings_tenant(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION _members_tenant(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION _keep_an_owner(uuid, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION _cluster_grants_sync() FROM PUBLIC;
REVOKE ALL ON FUNCTION citus_setup() FROM PUBLIC;
REVOKE ALL ON FUNCTION cluster_hnsw_check(regclass) FROM PUBLIC;
CREATE TRIGGER cluster_grants AFTER INSERT OR DELETE OR UPDATE OF id, status, plan, quota_overrides ON tenants
    FOR EACH ROW EXECUTE FUNCTION _cluster_grants_sync();
CREATE TRIGGER cluster_grants AFTER UPDATE OF limits ON plans
    FOR EACH ROW EXECUTE FUNCTION _cluster_grants_sync();
CREATE TRIGGER cluster_grants AFTER INSERT OR DELETE OR UPDATE OF key_id, revoked_at, expires_at ON api_key_store
    FOR EACH ROW EXECUTE FUNCTION _cluster_grants_sync();
CREATE TRIGGER cluster_grants AFTER INSERT OR DELETE OR UPDATE ON tenant_members
    FOR EACH ROW EXECUTE FUNCTION _cluster_grants_sync();

-- sutra's own helpers on a Citus cluster: not for PUBLIC.
REVOKE ALL ON FUNCTION sutra._cluster_grant_put(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION sutra._citus_shard_quota_triggers(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION sutra._citus_shard_attach(regclass, regclass, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION sutra._cluster_quota_counts(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION sutra._worker_answers(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION sutra._stored_totals() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sutra._stored_totals() TO sutra_service;
