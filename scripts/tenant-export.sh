#!/usr/bin/env bash
# Exports ONE tenant's rows with stock pg_dump: every tenant table, the tenant's row of
# sutra.tenants (with its settings and feature flags), its API keys, its members and its secrets
# (sealed: the target needs the same sutra.secrets_key to open them), and nothing of any other
# tenant.
#
#   scripts/tenant-export.sh [-d DBNAME] TENANT FILE
#
# TENANT is a uuid or slug. Connection parameters come from the libpq environment (PGHOST, PGPORT,
# PGUSER, PGDATABASE) or -d; the user must be a superuser. Writes FILE (pg_dump custom format),
# FILE.checksum (sutra.tenant_checksum of the tenant at export time) and FILE.tables (the tenant
# tables and their tenant columns, which the target must have registered), for tenant-import.sh.
#
# How: the superuser issues the tenant's context with sutra.set_tenant, and pg_dump connects with
# that context in PGOPTIONS, switches with --role to sutra_export (a role that may read all data
# but does not bypass row level security) and dumps with --enable-row-security, so PostgreSQL's
# own policies decide which rows leave the database. sutra.secrets has no policy for anyone but
# superusers and exports no row; the audit log stays with the source database.
set -euo pipefail
DB_ARGS=()
if [ "${1:-}" = "-d" ]; then DB_ARGS=(-d "$2"); shift 2; fi
if [ $# -ne 2 ]; then
    echo "usage: $0 [-d DBNAME] TENANT FILE" >&2
    exit 2
fi
TENANT=$1 FILE=$2
BIN=${PG_BIN:-$(pg_config --bindir)}
psql_q() { "$BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 "${DB_ARGS[@]}" "$@"; }

# The reader role: reads everything, bypasses nothing.
psql_q <<'SQL' >/dev/null
SET client_min_messages = warning;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sutra_export') THEN
        CREATE ROLE sutra_export NOLOGIN NOBYPASSRLS;
    END IF;
END $$;
GRANT pg_read_all_data TO sutra_export;
GRANT sutra_export TO CURRENT_USER;
SQL
tenant_id=$(psql_q -v tenant="$TENANT" <<<"SELECT sutra.tenant_id(:'tenant')")
context=$(psql_q -c "SELECT sutra.set_tenant('$tenant_id', session => true) IS NULL" -c "SHOW sutra.tenant_id" | tail -n1)
checksum=$(psql_q -c "SELECT sutra.tenant_checksum('$tenant_id')")
tables=()
while IFS= read -r t; do
    [ -n "$t" ] && tables+=(-t "$t")
done < <(psql_q -c "SELECT table_name::text FROM sutra.tenant_tables ORDER BY 1")
PGOPTIONS="${PGOPTIONS:-} -c sutra.tenant_id=$context" "$BIN/pg_dump" "${DB_ARGS[@]}" \
    --role=sutra_export --enable-row-security --data-only --format=custom --file="$FILE" \
    -t sutra.tenants -t sutra.api_key_store -t sutra.tenant_members -t sutra.tenant_secrets "${tables[@]}"
printf '%s %s\n' "$tenant_id" "$checksum" >"$FILE.checksum"
psql_q -c "SELECT table_name::text || ' ' || tenant_column FROM sutra.tenant_tables ORDER BY 1" >"$FILE.tables"
echo "exported tenant $tenant_id (checksum $checksum) to $FILE"
