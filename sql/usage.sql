-- Limits, usage events, usage rollups, prices and the reports built on them.
--
-- Limits live in sutra.plans.limits and sutra.tenants.quota_overrides (jsonb). Keys:
--   rows_per_table, rows_total, vectors, storage_bytes    quotas, counted per tenant
--   ops_per_second, burst                                  statement rate (GCRA)
--   concurrent_statements, connections                     concurrency
--   monthly: {"<event type>": cap, ...}                    caps on an event type's calendar month
--   daily: {"<event type>": cap, ...}                      and day (UTC)
--   monthly_cost, daily_cost                               caps on the priced cost of all events
--   soft_threshold                                         fraction that warns (default 0.8)
-- A cap is a number, or {"cap": N, "soft": true} for a cap that warns instead of refusing.
-- A missing key, null or 0 means unlimited. An override key replaces the plan's value, so an
-- override of null lifts a limit; "monthly" and "daily" merge key by key.

-- The limits in force for a tenant (uuid), as one jsonb object without unlimited entries.
CREATE FUNCTION _limits(tenant uuid) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
$$;
REVOKE ALL ON FUNCTION _limits(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _limits(uuid) TO sutra_service;

-- Fails unless the caller may read the tenant's limits and usage.
CREATE FUNCTION _require_usage_reader(tenant uuid) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT sutra._require_tenant_admin(tenant, 'read the usage');
$$;

-- Each limit of a tenant: the plan's value, the tenant's override, and the one in force.
CREATE FUNCTION effective_limits(tenant text)
RETURNS TABLE (limit_name text, plan_value jsonb, override_value jsonb, effective_value jsonb)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
END $$;
CREATE FUNCTION effective_limits(tenant uuid)
RETURNS TABLE (limit_name text, plan_value jsonb, override_value jsonb, effective_value jsonb)
LANGUAGE sql STABLE AS $$ SELECT * FROM sutra.effective_limits(tenant::text) $$;

-- Quotas on tenant tables --------------------------------------------------------------------

-- The trigger that counts every row written (src/usage/quota.rs).
CREATE FUNCTION _quota_row() RETURNS trigger AS 'MODULE_PATHNAME', 'sutra_quota_row' LANGUAGE C;

-- A tenant's rows, bytes and non-null vectors in each tenant table (or in one), counted from the
-- tables: the start of the counts after a server start, and what reconcile_usage checks against.
-- _count_tenant_rows(tenant, table) is sutra's own (src/usage/count.rs): it reads the tables
-- directly, so that no policy, view or operator of a table's owner runs while it counts.
REVOKE ALL ON FUNCTION _count_tenant_rows(uuid, oid) FROM PUBLIC;

-- BEFORE TRUNCATE: the rows about to go leave every tenant's counts (src/usage/quota.rs).
CREATE FUNCTION _quota_truncate() RETURNS trigger AS 'MODULE_PATHNAME', 'sutra_quota_truncate' LANGUAGE C;

-- On a Citus worker: gives a shard of a tenant table the quota triggers of its table, counting
-- the tenant column that sutra's insert policy there checks. sutra runs it as Citus creates that
-- policy on a shard (src/usage/quota.rs); the shell table on the coordinator has no rows and no
-- triggers. The shard of a partition has its parent's (cloned): one made before the parent's
-- policies, with a row trigger of its own, gives that up (_citus_shard_attach does so on ATTACH).
-- Reads no pg_class: Citus hides shards there from sessions other than its own.
CREATE FUNCTION _citus_shard_quota_triggers(shard regclass) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
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
END $$;

-- On a Citus worker, before shard part becomes a partition of shard parent: part gives up a row
-- quota trigger of its own when parent has one (PostgreSQL clones the parent's, of the same name).
CREATE FUNCTION _citus_shard_attach(parent regclass, part regclass, parent_has_trigger boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (parent_has_trigger OR EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = parent AND g.tgname = 'sutra_quota_row'))
       AND EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = part AND g.tgname = 'sutra_quota_row'
                   AND g.tgparentid = 0 AND g.tgfoid = 'sutra._quota_row()'::regprocedure) THEN
        EXECUTE format('DROP TRIGGER sutra_quota_row ON %s', part);
    END IF;
END $$;
REVOKE ALL ON FUNCTION _citus_shard_attach(regclass, regclass, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION _citus_shard_quota_triggers(regclass) FROM PUBLIC;

-- Recounts a tenant's rows, bytes and vectors from its tables and replaces the counts quotas
-- are enforced on (writes in flight meanwhile are not in the recount: run it when quiet).
CREATE FUNCTION reconcile_usage(tenant text)
RETURNS TABLE (table_name regclass, rows bigint, bytes bigint, vectors bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
END $$;
CREATE FUNCTION reconcile_usage(tenant uuid)
RETURNS TABLE (table_name regclass, rows bigint, bytes bigint, vectors bigint)
LANGUAGE sql AS $$ SELECT * FROM sutra.reconcile_usage(tenant::text) $$;

-- On a Citus coordinator: runs command, which returns one json array, on every worker, and
-- returns the elements of all the answers. A worker that cannot answer fails the call (what:
-- what the command reads, for the message).
CREATE FUNCTION _worker_answers(command text, what text) RETURNS SETOF jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
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
END $$;
REVOKE ALL ON FUNCTION _worker_answers(text, text) FROM PUBLIC;

-- On a Citus coordinator: a tenant's quota counts on every worker, where the shards holding its
-- rows count them (table null: the totals).
CREATE FUNCTION _cluster_quota_counts(t uuid)
RETURNS TABLE (table_name oid, rows bigint, bytes bigint, vectors bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
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
END $$;
REVOKE ALL ON FUNCTION _cluster_quota_counts(uuid) FROM PUBLIC;

-- The quota totals of every tenant whose counts are known (sutra._quota_totals); on a Citus
-- coordinator, added up over every node (the workers count the rows of their shards). Runs as
-- the extension's owner (who may run commands on the workers) for sutra_service's reports.
CREATE FUNCTION _stored_totals()
RETURNS TABLE (tenant_id uuid, rows bigint, bytes bigint, vectors bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
END $$;
REVOKE ALL ON FUNCTION _stored_totals() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _stored_totals() TO sutra_service;

-- A tenant's quota counts against its limits (on a Citus coordinator: across the cluster).
CREATE FUNCTION quota_usage(tenant text)
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
CREATE FUNCTION quota_usage(tenant uuid)
RETURNS TABLE (limit_name text, used bigint, limit_value bigint)
LANGUAGE sql AS $$ SELECT * FROM sutra.quota_usage(tenant::text) $$;

-- Application events -----------------------------------------------------------------------------

-- Partitioned by month of occurred_at. There is no default partition: record_usage makes each
-- month's partition before it records an event in it (_usage_events_partition).
CREATE TABLE usage_events (
    tenant_id uuid NOT NULL,
    event_type text NOT NULL CHECK (event_type ~ '^[A-Za-z0-9_.:-]{1,100}$'),
    quantity numeric NOT NULL CHECK (quantity BETWEEN 0 AND 1e15),  -- also keeps out NaN and Infinity
    properties jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(properties) = 'object'),
    idempotency_key text CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    occurred_at timestamptz NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now(),
    event_id uuid NOT NULL DEFAULT gen_random_uuid()
) PARTITION BY RANGE (occurred_at);
COMMENT ON TABLE usage_events IS 'application usage events (sutra.record_usage), partitioned by month of occurred_at';

-- One row per (tenant, idempotency key): a retried event is recorded once.
CREATE TABLE usage_event_keys (
    tenant_id uuid NOT NULL,
    idempotency_key text NOT NULL,
    event_id uuid NOT NULL,
    PRIMARY KEY (tenant_id, idempotency_key)
);

-- Running totals behind usage caps: per tenant, key (an event type, or '$cost': the priced cost
-- of all event types) and period (a day or a month, in UTC). record_usage adds each event to the
-- totals its tenant's caps need, in the event's transaction, and checks the caps against them: a
-- check costs the same at any number of events. The total's row lock makes concurrent events of
-- one tenant and key take turns (the second waits until the first transaction ends, then sees its
-- event; under REPEATABLE READ or SERIALIZABLE it fails with a serialization error instead), so a
-- cap is never overshot. A missing total (the first event since the cap was set, or since the
-- tenant's limits, its plan's limits or the prices changed, which delete the totals they affect)
-- is summed from the events once. Only sutra's functions touch the rows (no privileges for
-- PUBLIC); a dump leaves them out and they come back as needed.
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

-- A total summed from the events: an event type's quantity in the period, or for '$cost' what the
-- period's events add to the month's bill (each event type's quantity beyond the month's included
-- quantity, at its unit price for the plan; see invoice).
CREATE FUNCTION _usage_total_from_events(tenant uuid, key text, period text, start timestamptz, plan text)
RETURNS numeric
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
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
$$;
REVOKE ALL ON FUNCTION _usage_total_from_events(uuid, text, text, timestamptz, text) FROM PUBLIC;

-- Adds amount to a total (made from the events when missing); returns it before and after.
CREATE FUNCTION _usage_total_add(tenant uuid, key text, period text, start timestamptz, plan text, amount numeric,
                                 OUT before numeric, OUT after numeric)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
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
END $$;
REVOKE ALL ON FUNCTION _usage_total_add(uuid, text, text, timestamptz, text, numeric) FROM PUBLIC;

-- One cap against a total that went from before to after. A cap is a number, or an object
-- {"cap": N, "soft": true} for a cap that warns instead of refusing. With refuse true, going over
-- a hard cap refuses the event; with refuse false, crossing soft_threshold of a cap (and, for a
-- soft cap, the cap itself) warns, writes one audit row and notifies channel sutra_limits, all in
-- the event's transaction; with refuse null, both. _charge_caps refuses first, so an event refused
-- by one cap warns of no other.
CREATE FUNCTION _check_cap(tenant uuid, what text, name text, spec jsonb, threshold numeric, before numeric,
                           after numeric, refuse boolean)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
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
END $$;
REVOKE ALL ON FUNCTION _check_cap(uuid, text, text, jsonb, numeric, numeric, numeric, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION _cap_refused(uuid, text, double precision, double precision) FROM PUBLIC;

-- Adds an event to the totals its tenant's caps need, and checks those caps: "monthly" and
-- "daily" caps per event type, and "monthly_cost" and "daily_cost" on the priced cost.
CREATE FUNCTION _charge_caps(tenant uuid, event_type text, quantity numeric, at timestamptz) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
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
END $$;
REVOKE ALL ON FUNCTION _charge_caps(uuid, text, numeric, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION _usage_caps(uuid) FROM PUBLIC;

-- Totals that no longer match the limits or prices they were kept for are deleted, and made again
-- from the events by the next capped event.
CREATE FUNCTION _usage_totals_reset() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_TABLE_NAME = 'tenants' THEN
        DELETE FROM sutra.usage_totals u WHERE u.tenant_id = OLD.id;
    ELSIF TG_TABLE_NAME = 'plans' THEN
        DELETE FROM sutra.usage_totals u WHERE u.tenant_id IN (SELECT x.id FROM sutra.tenants x WHERE x.plan = OLD.name);
    ELSE
        DELETE FROM sutra.usage_totals u WHERE u.key = '$cost';
    END IF;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION _usage_totals_reset() FROM PUBLIC;
CREATE TRIGGER usage_totals_reset AFTER UPDATE OF plan, quota_overrides ON tenants
    FOR EACH ROW WHEN (OLD.plan IS DISTINCT FROM NEW.plan OR OLD.quota_overrides IS DISTINCT FROM NEW.quota_overrides)
    EXECUTE FUNCTION _usage_totals_reset();
CREATE TRIGGER usage_totals_reset AFTER UPDATE OF limits ON plans
    FOR EACH ROW WHEN (OLD.limits IS DISTINCT FROM NEW.limits) EXECUTE FUNCTION _usage_totals_reset();

-- The month partition of usage_events for ts (a month in UTC), made when missing. With wait
-- false it gives up at once when another transaction is making a partition.
CREATE FUNCTION _usage_events_partition(ts timestamptz, wait boolean DEFAULT true) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
END $$;
REVOKE ALL ON FUNCTION _usage_events_partition(timestamptz, boolean) FROM PUBLIC;

-- Records an application event for the current tenant (or, for sutra_service, the tenant
-- given). Returns true when recorded, false when the idempotency key was seen before.
--
-- What an event may be: an event type of 1 to 100 letters, digits and _ . : -; a quantity from 0
-- to 10^15 (no NaN, no infinity); an idempotency key of 1 to 255 characters; properties a JSON
-- object of at most 8 kB (8192 bytes as jsonb); and a time within a window of the current time:
-- from sutra.usage_event_max_age back (superusers and members of sutra_service: from 2000-01-01)
-- to sutra.usage_event_max_future ahead. Each month recorded makes a partition, so the window also
-- bounds what a tenant can make.
CREATE FUNCTION record_usage(event_type text, quantity numeric DEFAULT 1, properties jsonb DEFAULT '{}',
                             idempotency_key text DEFAULT NULL, occurred_at timestamptz DEFAULT NULL,
                             tenant text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
END $$;

-- Many events at once: events is a JSON array of objects with the arguments of record_usage
-- ("event_type", and optionally "quantity", "properties", "idempotency_key", "occurred_at"), at
-- most 10,000. The same checks, deduplication (also within the batch: the first event with a key
-- wins) and caps apply; a batch is recorded whole or, on any error, not at all (the error names
-- the first bad event by its position, from 1). Returns how many events were recorded.
CREATE FUNCTION record_usage_batch(events jsonb, tenant text DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
END $$;

-- COPY sutra.usage_ingest (event_type, quantity, properties, idempotency_key, occurred_at) FROM
-- STDIN records each row with record_usage, with its checks, deduplication and caps (a row it
-- refuses fails the COPY); the view itself holds nothing. For throughput, send batches to
-- record_usage_batch.
CREATE VIEW usage_ingest AS
    SELECT NULL::text AS event_type, NULL::numeric AS quantity, NULL::jsonb AS properties,
           NULL::text AS idempotency_key, NULL::timestamptz AS occurred_at, NULL::text AS tenant
    WHERE false;
CREATE FUNCTION _usage_ingest_row() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM sutra.record_usage(NEW.event_type, coalesce(NEW.quantity, 1), coalesce(NEW.properties, '{}'),
                               NEW.idempotency_key, NEW.occurred_at, NEW.tenant);
    RETURN NEW;
END $$;
CREATE TRIGGER record INSTEAD OF INSERT ON usage_ingest FOR EACH ROW EXECUTE FUNCTION _usage_ingest_row();

-- Metered usage: per tenant, metric and minute; written by the metering worker ------------------

CREATE TABLE usage_rollups (
    tenant_id uuid NOT NULL,
    metric text NOT NULL,
    minute timestamptz NOT NULL,
    quantity numeric NOT NULL,
    PRIMARY KEY (tenant_id, metric, minute)
);
COMMENT ON TABLE usage_rollups IS 'metered usage per tenant, metric and minute; older rows hold an hour or a day (sutra.compact_usage)';
-- Compaction reads by time.
CREATE INDEX ON usage_rollups (minute);

-- How far compaction has got: rows before hours_until are whole hours, before days_until whole
-- days, and nothing is left before retained_from. One row.
CREATE TABLE usage_compaction (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    hours_until timestamptz NOT NULL DEFAULT '-infinity',
    days_until timestamptz NOT NULL DEFAULT '-infinity',
    retained_from timestamptz NOT NULL DEFAULT '-infinity',
    last_run timestamptz
);
INSERT INTO usage_compaction DEFAULT VALUES;
COMMENT ON TABLE usage_compaction IS 'how far sutra.compact_usage has compacted sutra.usage_rollups';

-- Sums the rollups in [from_ts, to_ts) into one row per `unit` (hour or day, UTC), at the unit's
-- first minute; returns how many rows fewer there are.
CREATE FUNCTION _compact_rollups(from_ts timestamptz, to_ts timestamptz, unit text) RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
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
$$;
REVOKE ALL ON FUNCTION _compact_rollups(timestamptz, timestamptz, text) FROM PUBLIC;

-- Compacts metered usage: minute rows older than sutra.usage_minutes_kept become one row per hour
-- (at the hour's first minute), hour rows older than sutra.usage_hours_kept one row per day (at
-- the day's first minute, UTC), and rows older than sutra.usage_retention (when set) are deleted.
-- Sums over hours, days and months, and so usage_summary and invoice, are the same before and
-- after. Each run works on the rows since the previous run's bounds only. The metering worker
-- runs it at most once an hour per database; returns the rows removed.
CREATE FUNCTION compact_usage() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
END $$;

-- Prices: per metric (a metered metric or an application event type), for a plan or all plans.
CREATE TABLE prices (
    metric text NOT NULL,
    plan text REFERENCES plans (name) ON UPDATE CASCADE ON DELETE CASCADE,
    unit_price numeric NOT NULL CHECK (unit_price >= 0),
    included numeric NOT NULL DEFAULT 0 CHECK (included >= 0),
    unit text NOT NULL DEFAULT 'unit',
    currency text NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    UNIQUE NULLS NOT DISTINCT (metric, plan)
);
COMMENT ON TABLE prices IS 'price per unit of a metric, for one plan or (plan null) all plans, after an included quantity';
CREATE TRIGGER usage_totals_reset AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON prices
    FOR EACH STATEMENT EXECUTE FUNCTION _usage_totals_reset();

-- All usage of a tenant, metered and recorded, per bucket of the given granularity.
CREATE FUNCTION usage_summary(tenant text, from_ts timestamptz, to_ts timestamptz,
                              granularity text DEFAULT 'day')
RETURNS TABLE (bucket timestamptz, metric text, quantity numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t uuid := (sutra._tenant_row(tenant)).id;
BEGIN
    PERFORM sutra._require_usage_reader(t);
    IF granularity NOT IN ('minute', 'hour', 'day', 'month') THEN
        RAISE EXCEPTION 'invalid granularity "%"', granularity USING ERRCODE = '22023',
            HINT = 'Use minute, hour, day or month.';
    END IF;
    RETURN QUERY
    SELECT date_trunc(granularity, u.at, 'UTC') AS b, u.m, sum(u.q)
    FROM (SELECT r.minute AS at, r.metric AS m, r.quantity AS q FROM sutra.usage_rollups r
          WHERE r.tenant_id = t AND r.minute >= from_ts AND r.minute < to_ts
          UNION ALL
          SELECT e.occurred_at, e.event_type, e.quantity FROM sutra.usage_events e
          WHERE e.tenant_id = t AND e.occurred_at >= from_ts AND e.occurred_at < to_ts) u
    GROUP BY 1, 2 ORDER BY 1, 2;
END $$;
CREATE FUNCTION usage_summary(tenant uuid, from_ts timestamptz, to_ts timestamptz, granularity text DEFAULT 'day')
RETURNS TABLE (bucket timestamptz, metric text, quantity numeric)
LANGUAGE sql STABLE AS $$ SELECT * FROM sutra.usage_summary(tenant::text, from_ts, to_ts, granularity) $$;
-- The same, with application events split by one of their properties (group_by: a property name
-- such as 'model'); metered usage, and events without the property, have group_value null.
CREATE FUNCTION usage_summary(tenant text, from_ts timestamptz, to_ts timestamptz, granularity text, group_by text)
RETURNS TABLE (bucket timestamptz, metric text, group_value text, quantity numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
END $$;
CREATE FUNCTION usage_summary(tenant uuid, from_ts timestamptz, to_ts timestamptz, granularity text, group_by text)
RETURNS TABLE (bucket timestamptz, metric text, group_value text, quantity numeric)
LANGUAGE sql STABLE AS $$ SELECT * FROM sutra.usage_summary(tenant::text, from_ts, to_ts, granularity, group_by) $$;

-- A tenant's bill for a calendar month (UTC): one line per priced metric, then the total.
CREATE FUNCTION invoice(tenant text, month date)
RETURNS TABLE (metric text, quantity numeric, included numeric, billable numeric, unit_price numeric,
               amount numeric, currency text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r sutra.tenants := sutra._tenant_row(tenant);
    lo timestamptz := date_trunc('month', month::timestamp) AT TIME ZONE 'UTC';
BEGIN
    PERFORM sutra._require_usage_reader(r.id);
    RETURN QUERY
    WITH used AS (
        SELECT s.metric, sum(s.quantity) AS q
        FROM sutra.usage_summary(r.id::text, lo, lo + interval '1 month', 'month') s GROUP BY 1
    ), priced AS (
        SELECT DISTINCT ON (p.metric) p.metric, p.unit_price, p.included, p.currency
        FROM sutra.prices p WHERE p.plan = r.plan OR p.plan IS NULL
        ORDER BY p.metric, p.plan NULLS LAST
    ), lines AS (
        SELECT p.metric, coalesce(u.q, 0) AS q, p.included AS inc,
               greatest(coalesce(u.q, 0) - p.included, 0) AS bill, p.unit_price AS up, p.currency AS cur
        FROM priced p LEFT JOIN used u ON u.metric = p.metric
    )
    SELECT x.m, x.q, x.inc, x.bill, x.up, x.amt, x.cur FROM (
        SELECT l.metric AS m, l.q, l.inc, l.bill, l.up, round(l.bill * l.up, 2) AS amt, l.cur FROM lines l
        UNION ALL
        SELECT 'total', NULL, NULL, NULL, NULL, coalesce(round(sum(l.bill * l.up), 2), 0), min(l.cur) FROM lines l
    ) x ORDER BY x.m = 'total', x.m;
END $$;
CREATE FUNCTION invoice(tenant uuid, month date)
RETURNS TABLE (metric text, quantity numeric, included numeric, billable numeric, unit_price numeric,
               amount numeric, currency text)
LANGUAGE sql STABLE AS $$ SELECT * FROM sutra.invoice(tenant::text, month) $$;

-- Export shapes: a billing sync is a SELECT ----------------------------------------------------

-- Metered usage as billable events: minute rows of sutra.usage_rollups once their minute is over
-- (a flush adds to the minute it runs in, so a past minute no longer changes), each with a stable
-- identifier. Rows compacted to hours or days are not exported: a sync that runs more often than
-- sutra.usage_minutes_kept (default a day) sees every minute once, by identifier.
CREATE VIEW _metered_events WITH (security_invoker = true) AS
    SELECT r.tenant_id, 'sutra.' || r.metric AS event_type,
           format('sutra.%s:%s:%s', r.metric, r.tenant_id, to_char(r.minute AT TIME ZONE 'UTC', 'YYYYMMDDHH24MI'))
               AS identifier,
           r.minute AS occurred_at, r.quantity
    FROM sutra.usage_rollups r
    WHERE r.minute < date_trunc('minute', now()) - interval '1 minute'
      AND r.minute >= (SELECT c.hours_until FROM sutra.usage_compaction c);

-- Stripe meter events (POST /v1/billing/meter_events): the customer id comes from the tenant's
-- settings ("stripe_customer_id"). Application events, and metered usage as sutra.<metric>
-- (sutra.statements, sutra.rows_read, sutra.rows_written, sutra.vector_searches,
-- sutra.bytes_written, sutra.connection_seconds). The identifier is stable: a sync resumes by it.
CREATE VIEW usage_events_stripe WITH (security_invoker = true) AS
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

-- CloudEvents 1.0 (as OpenMeter ingests them), application events and metered usage alike.
CREATE VIEW usage_events_cloudevents WITH (security_invoker = true) AS
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

-- Rate limits and live counters (shared memory) ------------------------------------------------

-- Where a tenant's limiter and concurrency counts stand now.
CREATE FUNCTION rate_limit_status(tenant text)
RETURNS TABLE (ops_per_second double precision, burst bigint, available bigint, retry_after_ms bigint,
               active_statements integer, concurrent_statements_limit integer, connections integer,
               connections_limit integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t uuid := (sutra._tenant_row(tenant)).id;
BEGIN
    PERFORM sutra._require_usage_reader(t);
    RETURN QUERY SELECT * FROM sutra._rate_limit_state(t);
END $$;
CREATE FUNCTION rate_limit_status(tenant uuid)
RETURNS TABLE (ops_per_second double precision, burst bigint, available bigint, retry_after_ms bigint,
               active_statements integer, concurrent_statements_limit integer, connections integer,
               connections_limit integer)
LANGUAGE sql AS $$ SELECT * FROM sutra.rate_limit_status(tenant::text) $$;

-- Counters in the Prometheus text format, for postgres_exporter or any scraper, of a size that
-- does not grow with the tenant count: every tenant's metering and refusals since server start
-- (sutra_*_total, no labels), the shared tables' size and use, and per-tenant series
-- (sutra_tenant_*) for the `top` tenants by statements among those in shared memory, plus, with
-- `recent`, every tenant active since the last flush.
-- A label value as the Prometheus text format writes it: backslash, double quote and newline escaped.
CREATE FUNCTION _prometheus_label(v text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT replace(replace(replace(v, '\', '\\'), '"', '\"'), E'\n', '\n')
$$;

CREATE FUNCTION metrics(top integer DEFAULT 100, recent boolean DEFAULT false) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET jit = off SET search_path = pg_catalog, pg_temp AS $$
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
END $$;

-- The value of a usage cap: a number, or the "cap" of {"cap": N, "soft": true}; null for anything else.
CREATE FUNCTION _cap_value(spec jsonb) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT nullif(CASE jsonb_typeof(spec) WHEN 'number' THEN spec::text::numeric
                                          WHEN 'object' THEN CASE WHEN jsonb_typeof(spec -> 'cap') = 'number'
                                                                  THEN (spec ->> 'cap')::numeric END END, 0)
$$;

-- A tenant's limit `key` from its plan's limits and its overrides (an override key replaces the
-- plan's, null and 0 mean unlimited): the per-key form of _limits, cheap enough for every tenant in
-- shared memory.
CREATE FUNCTION _limit_value(plan jsonb, overrides jsonb, key text) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT nullif((CASE WHEN overrides ? key THEN overrides ->> key ELSE plan ->> key END)::numeric, 0)
$$;

-- Tenants at or past the soft threshold of a limit. Only tenants that can be near one are looked
-- at: those in shared memory (live counts and quota counts are there, read in one pass each) and
-- those on a plan, or with an override, that has usage caps (both found by index), so its cost
-- follows the active tenants, not the tenant count.
-- A function, so that it runs without JIT: the planner's estimates for the set-returning functions
-- make JIT compile for longer than the query runs.
CREATE FUNCTION _tenants_near_limits()
RETURNS TABLE (tenant_id uuid, slug text, limit_name text, limit_value numeric, used numeric, ratio numeric)
LANGUAGE sql VOLATILE SET jit = off SET search_path = pg_catalog, pg_temp AS $$
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
$$;
CREATE VIEW tenants_near_limits AS SELECT * FROM sutra._tenants_near_limits();

-- Privileges and row level security ----------------------------------------------------------

REVOKE ALL ON usage_events, usage_event_keys, usage_rollups, prices FROM PUBLIC;
REVOKE ALL ON tenants_near_limits FROM PUBLIC;
REVOKE ALL ON FUNCTION _tenants_near_limits() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _tenants_near_limits() TO sutra_service;
GRANT SELECT ON tenants_near_limits TO sutra_service;
REVOKE ALL ON FUNCTION _tenant_counters() FROM PUBLIC;
REVOKE ALL ON FUNCTION _quota_set(oid, uuid, bigint, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION _quota_counts(uuid, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION _rate_limit_state(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION metrics(integer, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION compact_usage() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION compact_usage() TO sutra_service;
REVOKE ALL ON usage_compaction FROM PUBLIC;
GRANT SELECT ON usage_compaction, usage_totals TO sutra_service;
GRANT EXECUTE ON FUNCTION metrics(integer, boolean) TO sutra_service;
-- What tenants_near_limits calls: a view runs functions with its reader's EXECUTE rights.
REVOKE ALL ON FUNCTION _quota_totals() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _tenant_counters(), _quota_counts(uuid, boolean), _quota_totals() TO sutra_service;
REVOKE ALL ON FUNCTION _shared_tables() FROM PUBLIC;
REVOKE ALL ON FUNCTION _server_counters() FROM PUBLIC;
REVOKE ALL ON FUNCTION _limit_counters() FROM PUBLIC;
GRANT SELECT ON usage_events, usage_rollups, usage_events_stripe, usage_events_cloudevents, _metered_events, prices,
    usage_compaction TO PUBLIC;
GRANT INSERT ON usage_ingest TO PUBLIC;
GRANT INSERT, UPDATE, DELETE ON prices TO sutra_service;
SELECT _own_rows_policies('usage_events', 'tenant_id', 'admin');
SELECT _own_rows_policies('usage_rollups', 'tenant_id', 'admin');

SELECT pg_catalog.pg_extension_config_dump('usage_event_keys', '');
SELECT pg_catalog.pg_extension_config_dump('usage_rollups', '');
SELECT pg_catalog.pg_extension_config_dump('prices', '');
