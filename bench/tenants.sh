#!/usr/bin/env bash
# sutra at 1,000, 100,000 and 1,000,000 tenants in one database, on a throwaway cluster (port
# 54670, shared_buffers = 1GB, sutra.max_tenants at its default of 32,768). Tenants are added in
# bulk between sizes (INSERT into sutra.tenants, one filler API key each, as a restore would);
# at each size:
#   1. create_tenant: 200 calls, one per statement, against an INSERT into a plain table of the
#      same shape and size (goal < 1 ms at every size);
#   2. authenticate: 20,000 calls in one statement over the keys of 1,000 tenants spread over all
#      of them, against the same loop around length() (goal < 20 µs net at every size);
# and at the last size (at least 200,000 tenants):
#   3. statements per second of 100,000 distinct tenants taking turns (pgbench, 2 clients, a
#      random tenant per transaction: set_tenant, an INSERT and a count of the tenant's rows) on a
#      plan with row quotas, a rate limit and concurrency limits (none reached) against 100,000
#      other tenants of the same table on a plan without limits, alternating, 5 rounds of
#      BENCH_SECONDS (default 10) each, medians (goal >= 0.95); with 100,000 tenants over 32,768
#      slots, slots are reused all along;
# then, once, 1,000 of those tenants pushed past their limits (quota at their row count, a rate
# of one statement in 1,000 s): every one must be refused a row (53100) and a second statement
# (53400). Prints shared memory per tenant slot and the slot tables' counters, and how long
# metrics(), tenants_near_limits, usage_summary and invoice take at the last size (goal < 1 s).
# Run: bench/tenants.sh   (builds and installs the release build first; about 10 minutes)
# SUTRA_BENCH_INSTALLED=1 uses the sutra installed; SUTRA_BENCH_HOST/SUTRA_BENCH_PORT a running
# cluster (see bench_cluster in scripts/lib.sh; the database bench_tenants and the role
# sutra_bench_tenants are dropped at the end). TENANTS_SIZES (default "1000 100000 1000000").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

DB=bench_tenants
APP=sutra_bench_tenants
SECS=${BENCH_SECONDS:-10}
read -r -a SIZES <<<"${TENANTS_SIZES:-1000 100000 1000000}"
ACTIVE=100000
WORK=$(mktemp -d)
chmod 755 "$WORK"

bench_cleanup_at_exit "$DB" "$APP" "$WORK"
bench_cluster bench-tenants-cluster 54670 "shared_buffers = 1GB" "max_wal_size = 8GB" "checkpoint_timeout = 30min" \
    "synchronous_commit = off"

psql_as() {
    local user=$1
    shift
    client "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$HOST" -p "$PORT" -U "$user" -d "$DB" "$@"
}
sql() { psql_as postgres "$@"; }
sql_app() { psql_as "$APP" "$@"; }
pgbench_app() { client "$PG_BIN/pgbench" -n -r -h "$HOST" -p "$PORT" -U "$APP" "$@" "$DB" 2>&1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
verdict() { awk -v v="$1" -v bar="$2" -v op="$3" 'BEGIN {ok = (op == "<") ? v < bar : v >= bar; print ok ? "meets the goal" : "MISSES the goal"}'; }
best_ms() { # best_ms SQL: the best of 3 server-side timings of SQL as the app role, in ms
    for _ in 1 2 3; do
        sql_app -c "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) $1" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Execution Time"])'
    done | sort -g | head -n1
}

client "$PG_BIN/psql" -X -q -h "$HOST" -p "$PORT" -U postgres -d postgres -c "SET client_min_messages = warning" \
    -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "DROP ROLE IF EXISTS $APP" -c "CREATE DATABASE $DB"
sql -c "CREATE EXTENSION sutra" -c "
    CREATE ROLE $APP LOGIN NOBYPASSRLS IN ROLE sutra_service;
    INSERT INTO sutra.plans (name, limits) VALUES
        ('limited', '{\"rows_total\": 1000000, \"ops_per_second\": 100000, \"burst\": 100000,
                      \"concurrent_statements\": 100, \"connections\": 100}'),
        ('unlimited', '{}');
    CREATE TABLE items (id bigserial PRIMARY KEY, body text NOT NULL);
    SELECT sutra.enable_tenancy('items');
    GRANT SELECT, INSERT ON items TO $APP;
    GRANT USAGE ON SEQUENCE items_id_seq TO $APP;
    CREATE TABLE plain_tenants (LIKE sutra.tenants INCLUDING ALL);
    CREATE SEQUENCE bench_seq;
    GRANT INSERT ON plain_tenants TO $APP;
    GRANT USAGE ON SEQUENCE bench_seq TO $APP;
    CREATE TABLE bench_keys (k text);
    GRANT SELECT ON bench_keys TO $APP;" >/dev/null
per_slot=$(sql -c "SELECT sutra.shared_memory_per_tenant(1)")
uuid_of() { echo "('00000000-0000-0000-0000-' || lpad(($1)::text, 12, '0'))::uuid"; }

echo "SELECT sutra.create_tenant('new-' || nextval('bench_seq'));" >"$WORK/create.sql"
echo "INSERT INTO plain_tenants (slug, name, plan) SELECT s, s, 'free' FROM (SELECT 'plain-' || nextval('bench_seq') AS s) x;" >"$WORK/insert.sql"
cat >"$WORK/turn.sql" <<SQL
\set t random(1, $ACTIVE) + :offset
BEGIN;
SELECT sutra.set_tenant($(uuid_of :t));
INSERT INTO items (body) VALUES ('an event');
SELECT count(*) FROM items;
COMMIT;
SQL
chmod 644 "$WORK"/*.sql

REPORT=()
have=0
for n in "${SIZES[@]}"; do
    # --- grow to n tenants, each with one API key (a filler: its secret is never used) ---------
    t0=$(date +%s.%N)
    sql -c "INSERT INTO sutra.tenants (id, slug, name, plan)
            SELECT $(uuid_of i), 'b-' || i, 'b-' || i, 'limited' FROM generate_series($have + 1, $n) i" \
        -c "INSERT INTO sutra.api_key_store (key_id, tenant_id, name, scopes, secret_hash)
            SELECT lpad(to_hex(i), 16, '0'), $(uuid_of i), 'filler', '{read}', sha256(i::text::bytea)
            FROM generate_series($have + 1, $n) i" \
        -c "INSERT INTO plain_tenants (id, slug, name, plan)
            SELECT $(uuid_of i), 'b-' || i, 'b-' || i, 'limited' FROM generate_series($have + 1, $n) i" \
        -c "VACUUM ANALYZE sutra.tenants, sutra.api_key_store, sutra.audit_log, plain_tenants" >/dev/null
    have=$n
    grow_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.0f", b - a}')
    present=$(sql -c "SELECT count(*) FROM sutra.tenants")

    # --- 1. create_tenant ---------------------------------------------------------------------
    c_out=$(pgbench_app -c 1 -t 200 -f "$WORK/create.sql")
    i_out=$(pgbench_app -c 1 -t 200 -f "$WORK/insert.sql")
    create_ms=$(stmt_ms "$c_out" "create_tenant")
    insert_ms=$(stmt_ms "$i_out" "INSERT INTO plain_tenants")

    # --- 2. authenticate over 1,000 tenants spread over all n ----------------------------------
    sql -c "TRUNCATE bench_keys" -c "INSERT INTO bench_keys
            SELECT sutra.create_api_key($(uuid_of "1 + (i * ($n - 1)) / 999"), 'bench', '{read,write}')
            FROM generate_series(0, 999) i" >/dev/null
    sql_app -c "SELECT count(sutra.authenticate(k, session => true)) FROM bench_keys" >/dev/null # warm-up
    auth_ms=$(best_ms "SELECT count(sutra.authenticate(k, session => true)) FROM bench_keys, generate_series(1, 20)")
    base_ms=$(best_ms "SELECT count(length(k || g)) FROM bench_keys, generate_series(1, 20) g")
    net_us=$(awk -v a="$auth_ms" -v b="$base_ms" 'BEGIN {printf "%.2f", (a - b) * 1000 / 20000}')

    REPORT+=("$(printf '%9d tenants (grown in %ss): create_tenant %.3f ms vs plain INSERT %.3f ms (goal < 1 ms, %s); authenticate %.2f µs net per call over 1,000 tenants\x27 keys (goal < 20 µs, %s)' \
        "$present" "$grow_s" "$create_ms" "$insert_ms" "$(verdict "$create_ms" 1 "<")" "$net_us" "$(verdict "$net_us" 20 "<")")")

    # --- 3. 100,000 tenants taking turns: limits on against 100,000 others with limits off --------
    [ "$n" = "${SIZES[-1]}" ] && [ "$n" -ge $((2 * ACTIVE)) ] || continue
    sql -c "UPDATE sutra.tenants SET plan = 'unlimited' WHERE id > $(uuid_of $ACTIVE) AND id <= $(uuid_of $((2 * ACTIVE)))" \
        -c "VACUUM ANALYZE sutra.tenants" >/dev/null
    on=()
    off=()
    for round in 1 2 3 4 5; do
        for mode in limited unlimited; do
            offset=0
            [ "$mode" = limited ] || offset=$ACTIVE
            out=$(pgbench_app -c 2 -j 2 -T "$SECS" -D offset=$offset -f "$WORK/turn.sql")
            tps=$(sed -nE 's/^tps = ([0-9.]+).*/\1/p' <<<"$out")
            [ -n "$tps" ] || { echo "$out" >&2; exit 1; }
            if [ "$mode" = limited ]; then on+=("$tps"); else off+=("$tps"); fi
        done
    done
    on_m=$(printf '%s\n' "${on[@]}" | median)
    off_m=$(printf '%s\n' "${off[@]}" | median)
    r=$(ratio "$on_m" "$off_m")
    REPORT+=("$(printf '          %d tenants taking turns, 2 clients: limits on %.0f tps vs %d others with limits off %.0f tps, ratio %s (goal >= 0.95, %s)  (runs: on %s; off %s)' \
        "$ACTIVE" "$on_m" "$ACTIVE" "$off_m" "$r" "$(verdict "$r" 0.95 ">=")" "${on[*]}" "${off[*]}")")
done

# --- 1,000 of the active tenants pushed past their limits: every one refused ---------------------
sample=$((have < ACTIVE ? have : ACTIVE)) # spread over the tenants that took turns (or all there are)
sql -c "CREATE TABLE bench_sample AS SELECT $(uuid_of "1 + (i * ($sample - 1)) / 999") AS id FROM generate_series(0, 999) i" \
    -c "INSERT INTO items (tenant_id, body) SELECT id, 'seed' FROM bench_sample" \
    -c "UPDATE sutra.tenants t SET quota_overrides = jsonb_build_object(
            'rows_total', (SELECT count(*) FROM items i WHERE i.tenant_id = t.id),
            'ops_per_second', 0.001, 'burst', 1)
        WHERE t.id IN (SELECT id FROM bench_sample)" \
    -c "SELECT sutra.reconcile_usage(id) FROM bench_sample" >/dev/null
sql -c "SELECT format(E'BEGIN;\nSELECT sutra.set_tenant(%L);\nINSERT INTO items (body) VALUES (''over'');\nROLLBACK;\nBEGIN;\nSELECT sutra.set_tenant(%L);\nSELECT 1;\nROLLBACK;', id, id)
        FROM bench_sample" >"$WORK/push.sql"
chmod 644 "$WORK/push.sql"
errors=$(client "$PG_BIN/psql" -X -q -h "$HOST" -p "$PORT" -U "$APP" -d "$DB" -f "$WORK/push.sql" 2>&1 >/dev/null || true)
quota_refused=$(grep -c 'quota exceeded for tenant' <<<"$errors" || true)
rate_refused=$(grep -c 'rate limit exceeded for tenant' <<<"$errors" || true)
slots=$(sql -c "SELECT string_agg(name || ' ' || value, ', ') FROM sutra._shared_tables()")

# --- Reports at the last size, with the tenants of the runs above in shared memory --------------
sql -c "SELECT sutra.flush_usage()" >/dev/null
in_shm=$(sql -c "SELECT count(*) FROM sutra._tenant_counters()")
metrics_bytes=$(sql -c "SELECT length(sutra.metrics())")
report_line() { # report_line NAME SQL
    local ms
    ms=$(best_ms "$2")
    printf '    %-58s %8.1f ms (goal < 1000 ms, %s)\n' "$1" "$ms" "$(verdict "$ms" 1000 "<")"
}
REPORTS=(
    "$(report_line "metrics() (top 100 tenants, $metrics_bytes bytes)" "SELECT length(sutra.metrics())")"
    "$(report_line "metrics(recent => true)" "SELECT length(sutra.metrics(recent => true))")"
    "$(report_line "tenants_near_limits" "SELECT count(*) FROM sutra.tenants_near_limits")"
    "$(report_line "usage_summary (a tenant, a month by day)" "SELECT count(*) FROM sutra.usage_summary($(uuid_of 42), now() - interval '1 month', now() + interval '1 day', 'day')")"
    "$(report_line "invoice (a tenant, this month)" "SELECT count(*) FROM sutra.invoice($(uuid_of 42), now()::date)")"
)

echo "shared memory per tenant slot: $per_slot bytes (a tenant and its counts in one table)"
printf '%s\n' "${REPORT[@]}"
printf '1,000 tenants pushed past their limits: %d of 1000 refused a row over quota (53100), %d of 1000 refused a statement over rate (53400)\n' \
    "$quota_refused" "$rate_refused"
echo "shared tables: $slots"
echo "reports at $have tenants, $in_shm of them in shared memory, server-side, best of 3:"
printf '%s\n' "${REPORTS[@]}"
echo "reproduce: bench/tenants.sh"
[ "$quota_refused" = 1000 ] && [ "$rate_refused" = 1000 ]
