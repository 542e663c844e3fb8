#!/usr/bin/env bash
# Text input and output of sutra.vector against PostgreSQL's own real[] on the same data, in one
# run on a throwaway cluster: 2,000 vectors of 1,536 dimensions, best of 5 timings each.
# Run: bench/vector_io.sh   (builds and installs the release build first; SUTRA_BENCH_INSTALLED=1
#   uses the sutra installed: see bench_cluster in scripts/lib.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
trap bench_stop EXIT
bench_cluster bench-cluster 54635
psql_q() { client "$PG_BIN/psql" -X -q -A -t -h "$HOST" -p "$PORT" -U postgres -d postgres "$@"; }
psql_q -c "CREATE EXTENSION sutra" -c "
    CREATE TABLE data AS
    SELECT array_agg((random() * 2 - 1)::real) AS a FROM generate_series(0, 2000 * 1536 - 1) i
    GROUP BY i / 1536;
    ALTER TABLE data ADD COLUMN v sutra.vector, ADD COLUMN t text;
    UPDATE data SET v = a::sutra.vector, t = a::sutra.vector::text;" -c "VACUUM ANALYZE data"
# best_ms SQL: the best of 5 runs of SQL, in milliseconds (server-side, EXPLAIN ANALYZE)
best_ms() {
    for _ in 1 2 3 4 5; do
        psql_q -c "EXPLAIN (ANALYZE, FORMAT JSON) $1" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Execution Time"])'
    done | sort -g | head -n1
}
out_v=$(best_ms "SELECT sum(length(v::text)) FROM data")
out_a=$(best_ms "SELECT sum(length(a::text)) FROM data")
in_v=$(best_ms "SELECT count(t::sutra.vector) FROM data")
in_a=$(best_ms "SELECT count(replace(replace(t, '[', '{'), ']', '}')::real[]) FROM data")
in_base=$(best_ms "SELECT count(replace(replace(t, '[', '{'), ']', '}')) FROM data")
printf 'text output, 2000 x 1536: sutra.vector %.1f ms, real[] %.1f ms, ratio %.2f\n' "$out_v" "$out_a" "$(awk -v v="$out_v" -v a="$out_a" 'BEGIN {print v / a}')"
printf 'text input,  2000 x 1536: sutra.vector %.1f ms, real[] %.1f ms (less %.1f ms of string work), ratio %.2f\n' \
    "$in_v" "$in_a" "$in_base" "$(awk -v v="$in_v" -v a="$in_a" -v b="$in_base" 'BEGIN {print v / (a - b)}')"
echo "reproduce: bench/vector_io.sh"
