#!/usr/bin/env bash
# A tenant's query on a Citus cluster (a coordinator and two workers, throwaway clusters on this
# machine, ports 54670-54672) against the same query on one server (port 54673), on the same
# data: 1,000 tenants, 100 rows each, a tenant table distributed by tenant_id into 32 shards
# (Citus's default) or, on one server, a plain table. Each pgbench transaction is what a pooled
# application does:
#   BEGIN; SELECT sutra.set_tenant(<random tenant>); SELECT body FROM notes WHERE id = <one of
#   its rows>; COMMIT;
# and on Citus runs twice: with sutra's planner hook (the query routes to the tenant's shard) and
# without it (sutra.tenant_pruning = off: row level security alone, every shard is asked). Prints
# transactions per second and mean latency of each, one client, and the ratios; also Citus's own
# router query (the tenant in the WHERE clause, as the superuser, no context) for what Citus costs.
# Needs Citus installed (docs/citus.md); without it, says so and exits 0.
# Three rounds of the four runs, interleaved; the median of each.
# Run: bench/citus.sh   (builds and installs the release build first; about 3 minutes)
# SUTRA_BENCH_INSTALLED=1 uses the sutra already installed. BENCH_SECONDS (default 5) sets the
# length of each pgbench run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

if ! citus_installed; then
    echo "bench/citus.sh: skipped: Citus is not installed (docs/citus.md says how to build it)"
    exit 0
fi
SECS=${BENCH_SECONDS:-5}
if [ -z "${SUTRA_BENCH_INSTALLED:-}" ]; then
    setup_toolchain
    install_extension --release >/dev/null 2>&1
fi
DIR="$(pg_workdir)/bench-citus"
SINGLE="$DIR/single"
WORK=$(mktemp -d)
chmod 755 "$WORK"
CITUS_NODES=()
trap 'citus_cluster_stop || true; cluster_stop "$SINGLE" || true; rm -rf "$WORK"' EXIT
citus_cluster_start "$DIR" 54670 "shared_buffers = 256MB"
cluster_start "$SINGLE" 54673 "shared_buffers = 256MB"
as_pg "$PG_BIN/psql" -X -q -h "$SINGLE" -p 54673 -U postgres -d postgres -c "CREATE DATABASE app"

# setup HOST PORT DISTRIBUTE: the tenants, the table and its rows, and role bench.
setup() {
    local distribute=""
    [ "$3" = 1 ] && distribute="SELECT create_distributed_table('notes', 'tenant_id');"
    as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$1" -p "$2" -U postgres -d app >/dev/null <<SQL
SET client_min_messages = warning;
CREATE EXTENSION sutra;
CREATE ROLE bench LOGIN NOBYPASSRLS IN ROLE sutra_service;
SELECT count(sutra.create_tenant(format('t%s', n), id => ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid))
FROM generate_series(1, 1000) n;
CREATE TABLE notes (id bigint NOT NULL, tenant_id uuid NOT NULL, body text NOT NULL, PRIMARY KEY (tenant_id, id));
SELECT sutra.enable_tenancy('notes');
$distribute
INSERT INTO notes SELECT (n - 1) * 100 + i, ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid, 'note ' || i
FROM generate_series(1, 1000) n, generate_series(1, 100) i;
GRANT SELECT ON notes TO bench;
VACUUM ANALYZE notes;
SQL
}
setup "${CITUS_NODES[0]}" "${CITUS_PORTS[0]}" 1
setup "$SINGLE" 54673 0

tenant_tx_script "$WORK/tx.sql"
# Citus's own router query, for what Citus itself costs: the tenant named in the WHERE clause, as
# the superuser (no row level security, no context).
cat >"$WORK/plain.sql" <<'SQL'
\set n random(1, 1000)
\set i random(1, 100)
BEGIN;
SELECT body FROM notes WHERE tenant_id = ('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid AND id = (:n - 1) * 100 + :i;
COMMIT;
SQL
chmod 644 "$WORK/plain.sql"
# run HOST PORT PRUNING [SCRIPT USER]: "tps latency_ms" of one pgbench run.
run() {
    as_pg env PGOPTIONS="-c sutra.tenant_pruning=$3" "$PG_BIN/pgbench" -n -c 1 -T "$SECS" -M simple \
        -f "$WORK/${4:-tx}.sql" -h "$1" -p "$2" -U "${5:-bench}" app 2>&1 |
        awk '/^latency average/ {l = $4} /^tps = .*without initial/ {t = $3} END {print t, l}'
}
# What each plan looks like, for the record.
as_pg "$PG_BIN/psql" -X -q -A -t -h "${CITUS_NODES[0]}" -p "${CITUS_PORTS[0]}" -U bench -d app -c "BEGIN" \
    -c "SELECT sutra.set_tenant('t1') IS NULL" -c "EXPLAIN SELECT body FROM notes WHERE id = 5" \
    -c "SET LOCAL sutra.tenant_pruning = off" -c "EXPLAIN SELECT body FROM notes WHERE id = 5" -c "COMMIT" |
    grep -E "Task Count" | sed 's/^/plan: /'
# Three rounds, the four runs interleaved in each; the median of each.
for round in 1 2 3; do
    run "$SINGLE" 54673 on >>"$WORK/single"
    run "${CITUS_NODES[0]}" "${CITUS_PORTS[0]}" on >>"$WORK/router"
    run "${CITUS_NODES[0]}" "${CITUS_PORTS[0]}" off >>"$WORK/fanout"
    run "${CITUS_NODES[0]}" "${CITUS_PORTS[0]}" on plain postgres >>"$WORK/plain"
done
# med NAME: the median tps and latency of a run's rounds.
med() { echo "$(cut -d' ' -f1 "$WORK/$1" | median) $(cut -d' ' -f2 "$WORK/$1" | median)"; }
read -r single_tps single_ms < <(med single)
read -r router_tps router_ms < <(med router)
read -r fanout_tps fanout_ms < <(med fanout)
read -r plain_tps plain_ms < <(med plain)
printf '%-46s %10s %12s\n' "1,000 tenants, one client, median of 3 x ${SECS}s" "tps" "latency ms"
printf '%-46s %10.0f %12.3f\n' "one server (sutra, no Citus)" "$single_tps" "$single_ms"
printf '%-46s %10.0f %12.3f\n' "Citus, sutra routes to the tenant's shard" "$router_tps" "$router_ms"
printf '%-46s %10.0f %12.3f\n' "Citus, row level security alone (fan-out)" "$fanout_tps" "$fanout_ms"
printf '%-46s %10.0f %12.3f\n' "Citus alone: tenant in WHERE, no sutra context" "$plain_tps" "$plain_ms"
awk -v s="$single_tps" -v r="$router_tps" -v f="$fanout_tps" -v p="$plain_tps" 'BEGIN {
    printf "router / one server: %.2fx tps; router / fan-out: %.2fx tps; router / Citus alone: %.2fx tps\n", r / s, r / f, r / p }'
echo "reproduce: bench/citus.sh"
