-- Tenancy: per-tenant backups. scripts/tenant-export.sh and scripts/tenant-import.sh move one
-- tenant's rows between databases; the checksum below tells whether both hold the same rows.

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
