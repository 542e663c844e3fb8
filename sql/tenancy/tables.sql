-- Tenancy: tenant tables, whose rows belong to tenants: registration, sutra's policies on them,
-- and the checks of what row level security cannot fix.

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

REVOKE ALL ON tenant_tables FROM PUBLIC;
GRANT SELECT ON tenant_tables TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenant_tables', '');

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
END $$;

-- Who may call what -----------------------------------------------------------------------------

REVOKE ALL ON FUNCTION _tenant_table_audit() FROM PUBLIC;
REVOKE ALL ON FUNCTION _tenant_table_dropped() FROM PUBLIC;
REVOKE ALL ON FUNCTION _tenant_partition_added() FROM PUBLIC;
