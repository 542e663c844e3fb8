#!/usr/bin/env bash
# Imports a tenant exported by tenant-export.sh into another database that has sutra and the
# same tenant tables, under the same uuid (so nothing collides), in one transaction, and checks
# that sutra.tenant_checksum matches the export. Before loading, it checks that every tenant table
# of the export is registered here, and says what to run when one is not.
#
#   scripts/tenant-import.sh [-d DBNAME] FILE
#
# Connection parameters as for tenant-export.sh; the user must be a superuser. API keys come
# along; they authenticate in the new database only if it has the same key pepper (the row
# api_key_pepper of sutra.secrets).
set -euo pipefail
DB_ARGS=()
if [ "${1:-}" = "-d" ]; then DB_ARGS=(-d "$2"); shift 2; fi
if [ $# -ne 1 ]; then
    echo "usage: $0 [-d DBNAME] FILE" >&2
    exit 2
fi
FILE=$1
BIN=${PG_BIN:-$(pg_config --bindir)}
read -r tenant_id expected <"$FILE.checksum"
psql_q() { "$BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 "${DB_ARGS[@]}" "$@"; }
# Before anything is loaded: the target must have every tenant table of the export registered
# (a database made from a schema-only dump has the tables, not sutra's registrations).
if [ -f "$FILE.tables" ]; then
    missing=()
    while read -r table column; do
        [ -n "$table" ] || continue
        ok=$(psql_q -v t="$table" <<<"SELECT EXISTS (SELECT 1 FROM sutra.tenant_tables WHERE table_name = to_regclass(:'t'))")
        [ "$ok" = t ] || missing+=("$table $column")
    done <"$FILE.tables"
    if [ ${#missing[@]} -gt 0 ]; then
        echo "nothing imported: these tables of the export are not tenant tables here; create them if needed and run" >&2
        for m in "${missing[@]}"; do
            read -r table column <<<"$m"
            echo "  SELECT sutra.enable_tenancy('$table', '$column');" >&2
        done
        exit 1
    fi
fi
"$BIN/pg_restore" "${DB_ARGS[@]/-d/--dbname}" --data-only --single-transaction --exit-on-error "$FILE"
actual=$(psql_q -c "SELECT sutra.tenant_checksum('$tenant_id')")
if [ "$actual" != "$expected" ]; then
    echo "tenant $tenant_id imported, but its checksum differs: $actual here, $expected at export" >&2
    exit 1
fi
echo "imported tenant $tenant_id, checksum $actual matches the export"
