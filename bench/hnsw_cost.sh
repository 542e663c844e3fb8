#!/usr/bin/env bash
# Planner costs of sutra_hnsw against measured times, on a throwaway cluster (port 54655,
# shared_buffers = 1GB, jit off). For 10,000 x 128, 30,000 x 384 and 100,000 x 128 clustered unit
# vectors (cosine) and sutra.hnsw_ef_search 20 to 640, prints the median time of the top-10 query
# through the index and through a sequential scan and sort, the planner's cost of each, what the
# planner chooses, and whether that is the faster plan (or within 25% of it); then the same for a
# search without the key on a keyed index of 50,000 tenants x 4 rows (a search across every
# tenant) and for one tenant's search. Exits non-zero when any choice is wrong.
# Run: bench/hnsw_cost.sh [--sets 10000x128,...] [--efs 20,40,...] [--keyless TxRxD]
#   (builds and installs the release build first; about 5 minutes)
# SUTRA_BENCH_INSTALLED=1 uses the sutra already installed; SUTRA_BENCH_HOST/PORT a running cluster.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
DB=bench_hnsw_cost
WORK=$(mktemp -d)
bench_cleanup_at_exit "$DB" "" "$WORK"
bench_cluster bench-hnsw-cost-cluster 54655 "shared_buffers = 1GB" "maintenance_work_mem = 1GB" "jit = off"
ensure_python_env
client "$PG_BIN/psql" -X -q -h "$HOST" -p "$PORT" -U postgres -d postgres -c "DROP DATABASE IF EXISTS $DB" \
    -c "CREATE DATABASE $DB" -c "\\c $DB" -c "CREATE EXTENSION IF NOT EXISTS sutra" >/dev/null
"$PYTHON" "$REPO/bench/hnsw_cost.py" --dsn "host=$HOST port=$PORT dbname=$DB user=postgres" "$@"
echo "reproduce: bench/hnsw_cost.sh${*:+ $*}"
