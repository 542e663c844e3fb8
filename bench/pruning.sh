#!/usr/bin/env bash
# Tenant tables partitioned by their tenant column: a tenant session's query planned for its own
# partition (sutra.tenant_pruning = on, the default) against every partition planned and all but
# one skipped when it runs (off), on the same table in the same run, on a throwaway cluster
# (port 54656). 1,000 tenants, a table hash-partitioned into PARTITIONS (default 1,000) partitions
# by tenant_id, 100 rows per tenant. Each pgbench transaction is what a pooled application does:
#   BEGIN; SELECT sutra.set_tenant(<random tenant>); SELECT body FROM notes WHERE id = <one of
#   its rows>; COMMIT;
# with -M simple and -M prepared, one client, on and off interleaved (3 rounds); prints
# transactions per second of each and the ratio, and the planning and execution time of the
# SELECT (EXPLAIN ANALYZE, after the same query once in the session).
# Run: bench/pruning.sh   (builds and installs the release build first; about 3 minutes)
# SUTRA_BENCH_INSTALLED=1 uses the sutra already installed; SUTRA_BENCH_HOST/PORT a running cluster.
# BENCH_SECONDS (default 5) sets the length of each pgbench run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

DB=bench_pruning
APP=sutra_bench_pruning
PARTITIONS=${PARTITIONS:-1000}
SECS=${BENCH_SECONDS:-5}
WORK=$(mktemp -d)
chmod 755 "$WORK"
bench_cleanup_at_exit "$DB" "$APP" "$WORK"
bench_cluster bench-pruning-cluster 54656 "shared_buffers = 512MB" "max_locks_per_transaction = 2048"

psql_as() {
    local user=$1 db=$2
    shift 2
    client "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$HOST" -p "$PORT" -U "$user" -d "$db" "$@"
}
sql() { psql_as postgres "$DB" "$@"; }
psql_as postgres postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" \
    -c "DROP ROLE IF EXISTS $APP" -c "CREATE DATABASE $DB"
sql -c "CREATE EXTENSION sutra" -c "CREATE ROLE $APP LOGIN NOBYPASSRLS IN ROLE sutra_service" >/dev/null
sql -c "SELECT count(sutra.create_tenant(format('t%s', n), id => ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid))
        FROM generate_series(1, 1000) n" >/dev/null
sql -c "CREATE TABLE notes (id bigint NOT NULL, tenant_id uuid NOT NULL, body text NOT NULL,
            PRIMARY KEY (tenant_id, id)) PARTITION BY HASH (tenant_id)"
sql >/dev/null <<SQL
SELECT format('CREATE TABLE notes_%s PARTITION OF notes FOR VALUES WITH (MODULUS $PARTITIONS, REMAINDER %s)', r, r)
FROM generate_series(0, $PARTITIONS - 1) r \gexec
SQL
sql -c "SELECT sutra.enable_tenancy('notes')" >/dev/null
sql -c "INSERT INTO notes SELECT (n - 1) * 100 + i, ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid, 'note ' || i
        FROM generate_series(1, 1000) n, generate_series(1, 100) i" -c "VACUUM ANALYZE notes" -c "GRANT SELECT ON notes TO $APP"

tenant_tx_script "$WORK/tx.sql"
# tps MODE PRUNING: transactions per second of one pgbench run.
tps() {
    client env PGOPTIONS="-c sutra.tenant_pruning=$2" "$PG_BIN/pgbench" -n -c 1 -T "$SECS" -M "$1" -f "$WORK/tx.sql" \
        -h "$HOST" -p "$PORT" -U "$APP" "$DB" 2>&1 | sed -nE 's/^tps = ([0-9.]+) \(without initial connection time\)/\1/p'
}
# Every tenant once first: a tenant's first statement in the server counts its rows for its quotas
# (in every partition), which is not what is measured here.
for n in $(seq 1 1000); do
    printf "BEGIN; SELECT sutra.set_tenant('t%s'); SELECT count(*) FROM notes; COMMIT;\n" "$n"
done | psql_as "$APP" "$DB" >/dev/null
declare -A R
for mode in simple prepared; do
    tps "$mode" on >/dev/null  # warm-up
    for round in 1 2 3; do
        for p in on off; do R[$mode:$p:$round]=$(tps "$mode" "$p"); done
    done
done
median3() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
planning() {
    psql_as "$APP" "$DB" -c "SET sutra.tenant_pruning = $1" -c "BEGIN" -c "SELECT sutra.set_tenant('t7')" \
        -c "SELECT body FROM notes WHERE id = 604" \
        -c "EXPLAIN (ANALYZE, FORMAT JSON) SELECT body FROM notes WHERE id = 605" -c "COMMIT" |
        python3 -c 'import json,sys; t=sys.stdin.read(); d=json.loads(t[t.index("["):t.rindex("]")+1]); print("%.2f %.2f" % (d[0]["Planning Time"], d[0]["Execution Time"]))'
}
read -r plan_on exec_on <<<"$(planning on)"
read -r plan_off exec_off <<<"$(planning off)"
echo "1,000 tenants, notes hash-partitioned by tenant_id into $PARTITIONS partitions, 100 rows per tenant;"
echo "a transaction: BEGIN; sutra.set_tenant(random tenant); SELECT by id; COMMIT; 1 client, ${SECS}s runs, median of 3"
printf '%-34s %16s %16s %8s\n' "" "planned for it" "all partitions" "ratio"
for mode in simple prepared; do
    on=$(median3 "${R[$mode:on:1]}" "${R[$mode:on:2]}" "${R[$mode:on:3]}")
    off=$(median3 "${R[$mode:off:1]}" "${R[$mode:off:2]}" "${R[$mode:off:3]}")
    printf '%-34s %16.0f %16.0f %8.2f\n' "transactions/s, -M $mode" "$on" "$off" "$(awk -v a="$on" -v b="$off" 'BEGIN {print a / b}')"
done
printf '%-34s %16s %16s\n' "planning / execution of the SELECT, ms" "$plan_on / $exec_on" "$plan_off / $exec_off"
echo "reproduce: bench/pruning.sh   (PARTITIONS=N for another partition count)"
