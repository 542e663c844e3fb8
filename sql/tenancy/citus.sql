-- Tenancy on a Citus cluster (src/tenancy/citus.rs, docs/citus.md). Contexts are issued on the
-- coordinator, which alone holds credentials; a worker checks each transaction's context against
-- what the coordinator keeps here: the status of each tenant, until when each API key is valid
-- (Unix seconds, 0 once revoked), the scopes of each member's role, and the limits in force for
-- each tenant (sutra._limits, which the quota triggers on a worker's shards check). On a Citus
-- cluster this table is a reference table, so each change reaches every node in the
-- coordinator's transaction. On a server without Citus it stays empty.
CREATE TABLE cluster_grants (
    kind text NOT NULL CHECK (kind IN ('tenant', 'key', 'member', 'limits')),
    id text NOT NULL,
    value text,
    PRIMARY KEY (kind, id)
);
COMMENT ON TABLE cluster_grants IS 'tenant status, key validity, member scopes and tenant limits every node of a Citus cluster checks against';
REVOKE ALL ON cluster_grants FROM PUBLIC;

-- Whether Citus is installed in this database.
CREATE FUNCTION _citus_installed() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM pg_extension e WHERE e.extname = 'citus')
$$;

-- Whether this database is the coordinator of a Citus cluster.
CREATE FUNCTION _citus_coordinator() RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- citus_is_coordinator exists only where the citus extension does: looked up only then.
    IF NOT sutra._citus_installed() THEN
        RETURN false;
    END IF;
    RETURN citus_is_coordinator();
END $$;

-- Whether sutra.cluster_grants is a Citus reference table (set up by citus_setup).
CREATE FUNCTION _cluster_grants_distributed() RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT sutra._citus_installed() THEN
        RETURN false;
    END IF;
    RETURN EXISTS (SELECT 1 FROM pg_dist_partition p WHERE p.logicalrelid = 'sutra.cluster_grants'::regclass);
END $$;

-- The column Citus distributes table tbl by, or null.
CREATE FUNCTION _citus_distribution_column(tbl regclass) RETURNS name
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT sutra._citus_installed() THEN
        RETURN NULL;
    END IF;
    RETURN (SELECT column_to_column_name(p.logicalrelid, p.partkey) FROM pg_dist_partition p
            WHERE p.logicalrelid = tbl AND p.partkey IS NOT NULL);
END $$;

-- The rows of cluster_grants, as the catalog has them now.
CREATE FUNCTION _cluster_grant_rows() RETURNS TABLE (kind text, id text, value text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
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
END $$;

-- Makes sutra.cluster_grants a reference table filled from the catalog, once, on a Citus
-- coordinator; does nothing elsewhere. sutra runs it after CREATE EXTENSION sutra (or citus) on
-- a server where Citus is loaded; a superuser may run it again (it is idempotent).
CREATE FUNCTION citus_setup() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
BEGIN
    IF NOT sutra._citus_coordinator() OR sutra._cluster_grants_distributed() THEN
        RETURN;
    END IF;
    DELETE FROM sutra.cluster_grants;
    INSERT INTO sutra.cluster_grants SELECT * FROM sutra._cluster_grant_rows();
    PERFORM create_reference_table('sutra.cluster_grants');
    -- The coordinator's own rows moved into the shards.
    PERFORM truncate_local_data_after_distributing_table('sutra.cluster_grants');
END $$;
REVOKE ALL ON FUNCTION citus_setup() FROM PUBLIC;

-- Writes one row of cluster_grants: kind k under new_id (none: deleted), moved from old_id.
CREATE FUNCTION _cluster_grant_put(k text, old_id text, new_id text, v text) RETURNS void
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
REVOKE ALL ON FUNCTION _cluster_grant_put(text, text, text, text) FROM PUBLIC;

-- Trigger on sutra.tenants, sutra.plans, sutra.api_key_store and sutra.tenant_members: writes the
-- change to cluster_grants once it is a reference table. Runs as the extension's owner, so that
-- whoever may change the catalog need not write cluster_grants; it refuses to run for any other
-- table. A change of a plan's limits rewrites the limits of each tenant on the plan.
CREATE FUNCTION _cluster_grants_sync() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
END $$;
REVOKE ALL ON FUNCTION _cluster_grants_sync() FROM PUBLIC;
CREATE TRIGGER cluster_grants AFTER INSERT OR DELETE OR UPDATE OF id, status, plan, quota_overrides ON tenants
    FOR EACH ROW EXECUTE FUNCTION _cluster_grants_sync();
CREATE TRIGGER cluster_grants AFTER UPDATE OF limits ON plans
    FOR EACH ROW EXECUTE FUNCTION _cluster_grants_sync();
CREATE TRIGGER cluster_grants AFTER INSERT OR DELETE OR UPDATE OF key_id, revoked_at, expires_at ON api_key_store
    FOR EACH ROW EXECUTE FUNCTION _cluster_grants_sync();
CREATE TRIGGER cluster_grants AFTER INSERT OR DELETE OR UPDATE ON tenant_members
    FOR EACH ROW EXECUTE FUNCTION _cluster_grants_sync();

-- The shards of a sutra_hnsw index of a distributed table, each with its node: the placement,
-- the shard's table, and what `fn` (hnsw_stats or hnsw_check) returns there, as json. Runs as the
-- caller on every placement, one command per shard built here from the catalog (Citus's
-- master_run_on_worker sends it as it is).
CREATE FUNCTION _hnsw_placements(index regclass, fn text)
RETURNS TABLE (node text, shard text, result json)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
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
END $$;

-- sutra.hnsw_stats of every shard of a sutra_hnsw index on a distributed table.
CREATE FUNCTION cluster_hnsw_stats(index regclass)
RETURNS TABLE (node text, shard text, partition text, elements bigint, pages bigint, levels integer, kind text)
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.node, p.shard, s.partition, s.elements, s.pages, s.levels, s.kind
    FROM sutra._hnsw_placements(index, 'hnsw_stats') p,
         json_to_recordset(p.result) AS s(partition text, elements bigint, pages bigint, levels integer, kind text)
    ORDER BY 2, 3
$$;

-- sutra.hnsw_check of every shard of a sutra_hnsw index on a distributed table (the caller must
-- own the table, as for hnsw_check).
CREATE FUNCTION cluster_hnsw_check(index regclass)
RETURNS TABLE (node text, shard text, partitions bigint, elements bigint, heap_rows bigint, unreachable bigint, problems text[])
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.node, p.shard, s.partitions, s.elements, s.heap_rows, s.unreachable, s.problems
    FROM sutra._hnsw_placements(index, 'hnsw_check') p,
         json_to_recordset(p.result) AS s(partitions bigint, elements bigint, heap_rows bigint, unreachable bigint, problems text[])
    ORDER BY 2
$$;
REVOKE ALL ON FUNCTION cluster_hnsw_check(regclass) FROM PUBLIC;
