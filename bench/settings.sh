#!/usr/bin/env bash
# Per-call costs of a tenant's settings, flags and secrets, against the same server-side loop
# around a trivial function, on a throwaway cluster (port 54647), release build:
#   1. sutra.feature_enabled(flag) and sutra.setting(key) in a tenant session, 1,000,000 calls in
#      one statement (bar: feature_enabled < 1 µs);
#   2. sutra.secret(name), 10,000 calls in one statement: AES-256-GCM open, plus the audit event
#      and log line of each read.
# Each figure is the best of 5 server-side timings (EXPLAIN ANALYZE, timing off).
# Run: bench/settings.sh   (builds and installs the release build first; SUTRA_BENCH_INSTALLED=1
#   uses the sutra installed; SUTRA_BENCH_HOST/SUTRA_BENCH_PORT a running cluster, whose
#   sutra.secrets_key must be set for part 2: see bench_cluster in scripts/lib.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

DB=bench_settings
APP=sutra_bench_settings
WORK=$(mktemp -d)
chmod 755 "$WORK"
bench_cleanup_at_exit "$DB" "$APP" "$WORK"
bench_cluster bench-settings-cluster 54647 "sutra.secrets_key = '$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')'"

sql() { client "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$HOST" -p "$PORT" -U postgres -d "$DB" "$@"; }
client "$PG_BIN/psql" -X -q -h "$HOST" -p "$PORT" -U postgres -d postgres -c "SET client_min_messages = warning" \
    -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" -c "DROP ROLE IF EXISTS $APP" \
    -c "CREATE ROLE $APP LOGIN" >/dev/null
sql -c "CREATE EXTENSION sutra" \
    -c "UPDATE sutra.plans SET settings = '{\"execution_mode\": \"hosted\"}', features = '{\"beta\": true}' WHERE name = 'pro'" \
    -c "SELECT sutra.create_tenant('bench', plan => 'pro') IS NOT NULL" \
    -c "SELECT sutra.set_secret('openai', 'sk-bench-0123456789abcdefghijklmnop', tenant => 'bench')" >/dev/null
KEY=$(sql -c "SELECT sutra.create_api_key('bench', 'admin', '{read,write,admin}')")
# best_us CALLS SQL: the best of 5 server-side timings of SQL in a tenant session, per call in µs.
best_us() {
    local calls=$1 query=$2
    for _ in 1 2 3 4 5; do
        client "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$HOST" -p "$PORT" -U "$APP" -d "$DB" \
            -c "SELECT sutra.authenticate('$KEY', session => true) IS NULL" \
            -c "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) $query" | tail -n +2 |
            python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Execution Time"])'
    done | sort -g | head -n1 | awk -v n="$calls" '{printf "%.3f", $1 * 1000 / n}'
}
N=1000000
flag_us=$(best_us $N "SELECT count(*) FROM generate_series(1, $N) i WHERE sutra.feature_enabled('beta')")
setting_us=$(best_us $N "SELECT count(sutra.setting('execution_mode')) FROM generate_series(1, $N) i")
base_us=$(best_us $N "SELECT count(*) FROM generate_series(1, $N) i WHERE length('beta' || i) > 0")
S=10000
secret_us=$(best_us $S "SELECT count(sutra.secret('openai')) FROM generate_series(1, $S) i")
base_s_us=$(best_us $S "SELECT count(length('openai' || i)) FROM generate_series(1, $S) i")
awk -v f="$flag_us" -v s="$setting_us" -v b="$base_us" 'BEGIN {
    printf "feature_enabled: %.3f µs per call vs %.3f µs for the same loop around length(), net %.3f µs (bar < 1 µs)\n", f, b, f - b
    printf "setting: %.3f µs per call vs %.3f µs, net %.3f µs\n", s, b, s - b }'
awk -v s="$secret_us" -v b="$base_s_us" 'BEGIN {
    printf "secret: %.2f µs per call vs %.2f µs for the same loop around length(), net %.2f µs (open, audit event, log line)\n", s, b, s - b }'
echo "reproduce: bench/settings.sh"
