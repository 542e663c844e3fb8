#!/usr/bin/env bash
# Imports a tenant exported by tenant-export.sh into another database that has sutra and the
# same tenant tables, under the same uuid (so nothing collides), in one transaction, and checks
# that sutra.tenant_checksum matches the export.
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
"$BIN/pg_restore" "${DB_ARGS[@]/-d/--dbname}" --data-only --single-transaction --exit-on-error "$FILE"
actual=$("$BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 "${DB_ARGS[@]}" -c "SELECT sutra.tenant_checksum('$tenant_id')")
if [ "$actual" != "$expected" ]; then
    echo "tenant $tenant_id imported, but its checksum differs: $actual here, $expected at export" >&2
    exit 1
fi
echo "imported tenant $tenant_id, checksum $actual matches the export"
