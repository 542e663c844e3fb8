#!/usr/bin/env bash
# COPY FROM into a tenant table by a tenant session (row level security on, each row checked
# against the tenant context) vs plain COPY of the same rows into the same table without row
# level security applying (a superuser bypasses it), in one run on a throwaway cluster.
# 1,000,000 rows streamed from the client (psql \copy), best of 3 each.
# Run: bench/copy.sh   (builds and installs the release build first; SUTRA_BENCH_INSTALLED=1 uses
#   the sutra installed; SUTRA_BENCH_HOST/SUTRA_BENCH_PORT a running cluster: see bench_cluster in
#   scripts/lib.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
ROWS=${ROWS:-1000000}
trap bench_stop EXIT
bench_cluster bench-copy-cluster 54655 "max_wal_size = '4GB'" "checkpoint_timeout = '30min'"
psql_as() { # psql_as ROLE ARGS...
    local role=$1
    shift
    client "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$HOST" -p "$PORT" -U "$role" -d bench_copy "$@"
}
client "$PG_BIN/psql" -X -q -h "$HOST" -p "$PORT" -U postgres -d postgres \
    -c "DROP DATABASE IF EXISTS bench_copy" -c "CREATE DATABASE bench_copy"
psql_as postgres -c "CREATE EXTENSION sutra" -c "
    DROP ROLE IF EXISTS bench_loader;
    CREATE ROLE bench_loader LOGIN IN ROLE sutra_service;
    SELECT sutra.create_tenant('bench-' || i, plan => 'enterprise', id => ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid)
    FROM generate_series(1, 100) i;
    CREATE TABLE events (id bigint PRIMARY KEY, kind int NOT NULL, payload text, created_at timestamptz DEFAULT now());
    SELECT sutra.enable_tenancy('events');
    GRANT SELECT, INSERT ON events TO bench_loader;" >/dev/null
DATA=$(mktemp /tmp/sutra-bench-copy.XXXXXX)
chmod 644 "$DATA"
trap 'rm -f "$DATA"; bench_stop' EXIT
tenant=00000000-0000-0000-0000-000000000042
awk -v n="$ROWS" -v t="$tenant" 'BEGIN { for (i = 1; i <= n; i++) printf "%d\t%s\t%d\tevent payload number %d\n", i, t, i % 17, i }' >"$DATA"

# copy_ms ROLE PRELUDE: milliseconds of the best of 3 \copy of the data file, table emptied before each
copy_ms() {
    local role=$1 prelude=$2 best=""
    for _ in 1 2 3; do
        psql_as postgres -c "TRUNCATE events" -c "CHECKPOINT"
        local ms
        ms=$(psql_as "$role" -c "$prelude" -c '\timing on' \
            -c "\\copy events (id, tenant_id, kind, payload) FROM '$DATA'" | sed -nE 's/^Time: ([0-9.]+) ms.*/\1/p' | tail -n1)
        if [ -z "$best" ] || awk -v a="$ms" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$ms; fi
    done
    echo "$best"
}
plain=$(copy_ms postgres "SELECT 1")
tenant_ms=$(copy_ms bench_loader "SELECT sutra.set_tenant('$tenant', session => true) IS NULL")
count=$(psql_as bench_loader -c "SELECT sutra.set_tenant('$tenant', session => true) IS NULL" -c "SELECT count(*) FROM events")
[ "$(echo "$count" | tail -n1)" = "$ROWS" ] || { echo "tenant COPY loaded $(echo "$count" | tail -n1) rows, expected $ROWS" >&2; exit 1; }
awk -v r="$ROWS" -v p="$plain" -v t="$tenant_ms" 'BEGIN {
    printf "copy from, %d rows: tenant session %.0f ms (%.0f rows/s), plain COPY without RLS %.0f ms (%.0f rows/s), throughput ratio %.2f (bar >= 0.50)\n",
        r, t, r / t * 1000, p, r / p * 1000, p / t }'
echo "reproduce: bench/copy.sh"
psql_as postgres -c "DROP TABLE events" >/dev/null
