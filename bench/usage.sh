#!/usr/bin/env bash
# Costs of metering and quotas against baselines measured in the same run, on a throwaway cluster
# (port 54665), release build:
#   1. metering on vs off: pgbench select-only, 16 clients, every session in a tenant's context;
#   2. quota triggers on vs off: single-row INSERTs, 16 clients, over 100 tenants and all on one
#      tenant (the same table with the sutra_quota_row trigger disabled is the baseline);
#   3. shared memory per tenant;
#   4. record_usage with a monthly cap vs without, one client, at about 0 and 1,000,000 events;
#   5. ingestion: record_usage vs a plain INSERT at 8 clients, record_usage_batch, COPY.
# Runs alternate on/off (the order flips every round), 4 rounds of BENCH_SECONDS (default 8)
# each, and report medians; the table is emptied (and the quota counts recounted) before each
# insert run.
# Run: bench/usage.sh    (builds and installs the release build first; SUTRA_BENCH_INSTALLED=1
#   uses the sutra installed; SUTRA_BENCH_HOST/SUTRA_BENCH_PORT a running cluster: see
#   bench_cluster in scripts/lib.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
SECS=${BENCH_SECONDS:-8}
trap bench_stop EXIT
bench_cluster bench-usage-cluster 54665 "max_connections = 100" "shared_buffers = '512MB'" "max_wal_size = '4GB'" \
    "synchronous_commit = off"
psql_db() { client "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$HOST" -p "$PORT" -U postgres -d bench_usage "$@"; }
client "$PG_BIN/psql" -X -q -h "$HOST" -p "$PORT" -U postgres -d postgres -c "SET client_min_messages = warning" \
    -c "DROP DATABASE IF EXISTS bench_usage WITH (FORCE)" -c "CREATE DATABASE bench_usage"
client "$PG_BIN/pgbench" -q -i -s 10 -h "$HOST" -p "$PORT" -U postgres bench_usage >/dev/null 2>&1
psql_db -c "CREATE EXTENSION sutra" -c "
    SELECT count(sutra.create_tenant('bench-' || i, plan => 'enterprise',
                                     id => ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid))
    FROM generate_series(1, 100) i;
    CREATE TABLE items (id bigserial PRIMARY KEY, payload text NOT NULL);
    SELECT sutra.enable_tenancy('items');
    -- Counts known for every tenant before the runs (a server start would count them on first use).
    SELECT count(*) FROM generate_series(1, 100) i, sutra.quota_usage(('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid);" >/dev/null
context=$(psql_db -c "SELECT sutra.set_tenant('bench-1', session => true) IS NULL" -c "SHOW sutra.tenant_id" | tail -n1)
WORK=$(mktemp -d)
chmod 755 "$WORK"
trap 'rm -rf "$WORK"; bench_stop' EXIT
cat >"$WORK/many.sql" <<'SQL'
\set t random(1, 100)
INSERT INTO items (tenant_id, payload) VALUES (('00000000-0000-0000-0000-' || lpad(:t::text, 12, '0'))::uuid, 'an event payload of some length');
SQL
cat >"$WORK/one.sql" <<'SQL'
INSERT INTO items (tenant_id, payload) VALUES ('00000000-0000-0000-0000-000000000001', 'an event payload of some length');
SQL
# tps OPTIONS ARGS...: transactions per second of one pgbench run
tps() {
    local opts=$1
    shift
    client env PGOPTIONS="$opts" "$PG_BIN/pgbench" -n -c 16 -j 2 -T "$SECS" -h "$HOST" -p "$PORT" -U postgres "$@" bench_usage 2>/dev/null |
        sed -nE 's/^tps = ([0-9.]+).*/\1/p'
}
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (v[int((NR + 1) / 2)] + v[int(NR / 2) + 1]) / 2}'; }
# Empties the insert table and recounts every tenant, so each run starts from the same state.
reset_items() {
    psql_db -c "TRUNCATE items" -c "SELECT count(*) FROM generate_series(1, 100) i,
        sutra.reconcile_usage(('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid)" >/dev/null
}
report() { # report LABEL BAR ON... OFF...: prints the medians and the ratio
    local label=$1 bar=$2 on=$3 off=$4
    awk -v l="$label" -v b="$bar" -v on="$on" -v off="$off" 'BEGIN {
        printf "%s: on %.0f tps vs off %.0f tps, ratio %.3f (bar >= %s)\n", l, on, off, on / off, b }'
}

on=() off=()
for round in 1 2 3 4; do
    if [ $((round % 2)) = 1 ]; then
        on+=("$(tps "-c sutra.tenant_id=$context -c sutra.metering=on" -S)")
        off+=("$(tps "-c sutra.tenant_id=$context -c sutra.metering=off" -S)")
    else
        off+=("$(tps "-c sutra.tenant_id=$context -c sutra.metering=off" -S)")
        on+=("$(tps "-c sutra.tenant_id=$context -c sutra.metering=on" -S)")
    fi
done
report "metering, pgbench -S, 16 clients, tenant sessions" 0.99 "$(median "${on[@]}")" "$(median "${off[@]}")"
echo "    (runs: on ${on[*]}; off ${off[*]})"

for kind in many one; do
    on=() off=()
    run_on() { reset_items; psql_db -c "ALTER TABLE items ENABLE TRIGGER sutra_quota_row"; on+=("$(tps "" -f "$WORK/$kind.sql")"); }
    run_off() { reset_items; psql_db -c "ALTER TABLE items DISABLE TRIGGER sutra_quota_row"; off+=("$(tps "" -f "$WORK/$kind.sql")"); }
    for round in 1 2 3 4; do
        # The last run has the trigger on, so the counts can be checked against the table below.
        if [ $((round % 2)) = 1 ]; then run_on; run_off; else run_off; run_on; fi
    done
    if [ "$kind" = many ]; then label="quota triggers, single-row INSERT, 16 clients over 100 tenants" bar=0.90
    else label="quota triggers, single-row INSERT, 16 clients on one tenant" bar=0.70; fi
    report "$label" "$bar" "$(median "${on[@]}")" "$(median "${off[@]}")"
    echo "    (runs: on ${on[*]}; off ${off[*]})"
done
# The counts of the last run (trigger on) match the table.
psql_db -c "SELECT 'quota counts after the last run: ' || (SELECT sum(used) FROM generate_series(1, 100) i,
    sutra.quota_usage(('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid) q WHERE q.limit_name = 'rows_total')
    || ' counted, ' || (SELECT count(*) FROM items) || ' rows in the table'"
psql_db -c "SELECT format('shared memory per tenant: %s bytes, %s with counts in 10 tenant tables (bar < 1024)',
    sutra.shared_memory_per_tenant(0), sutra.shared_memory_per_tenant(10))"

# 4. A monthly cap's cost: record_usage for a tenant with a cap vs the same call for one without,
#    one client, alternating, at (almost) no events this month and at 1,000,000 of the type.
psql_db -c "SELECT sutra.create_tenant('capped', plan => 'enterprise',
                                       quota_overrides => '{\"monthly\": {\"tokens\": 1e15}}') IS NOT NULL,
                   sutra.create_tenant('uncapped', plan => 'enterprise') IS NOT NULL" >/dev/null
for t in capped uncapped; do echo "SELECT sutra.record_usage('tokens', 1, tenant => '$t');" >"$WORK/$t.sql"; done
latency() { # latency SCRIPT: average ms per call of one client
    client "$PG_BIN/pgbench" -n -c 1 -T "$SECS" -f "$WORK/$1.sql" -h "$HOST" -p "$PORT" -U postgres bench_usage 2>/dev/null |
        sed -nE 's/^latency average = ([0-9.]+) ms$/\1/p'
}
cap_cost() { # cap_cost EVENTS: prints capped vs uncapped latency
    local capped=() uncapped=()
    for round in 1 2 3 4; do
        if [ $((round % 2)) = 1 ]; then capped+=("$(latency capped)"); uncapped+=("$(latency uncapped)")
        else uncapped+=("$(latency uncapped)"); capped+=("$(latency capped)"); fi
    done
    awk -v n="$1" -v c="$(median "${capped[@]}")" -v u="$(median "${uncapped[@]}")" 'BEGIN {
        printf "record_usage at %s events this month: capped %.3f ms vs uncapped %.3f ms, ratio %.3f (bar <= 1.1)\n", n, c, u, c / u }'
    echo "    (runs: capped ${capped[*]}; uncapped ${uncapped[*]})"
}
cap_cost "about 0"
psql_db -c "INSERT INTO sutra.usage_events (tenant_id, event_type, quantity, occurred_at)
            SELECT t.id, 'tokens', 1, date_trunc('month', now(), 'UTC') + (i % 100000) * interval '1 second'
            FROM sutra.tenants t, generate_series(1, 1000000) i WHERE t.slug IN ('capped', 'uncapped')" \
    -c "DELETE FROM sutra.usage_totals" -c "ANALYZE sutra.usage_events" >/dev/null
# The first capped call sums the month from the events, once.
first=$(client "$PG_BIN/psql" -X -q -A -t -h "$HOST" -p "$PORT" -U postgres -d bench_usage \
    -c "\\timing on" -c "SELECT sutra.record_usage('tokens', 1, tenant => 'capped')" | sed -nE 's/^Time: ([0-9.]+) ms.*/\1/p')
echo "first capped call after 1,000,000 events (sums the month once): $first ms"
cap_cost "1,000,000"

# 5. Ingestion: single-event record_usage vs a plain INSERT of the same row into a table with a
#    unique key (8 clients each, a tenant session), and record_usage_batch with 1,000 events per
#    call, every event with an idempotency key (2 clients); then COPY through sutra.usage_ingest.
psql_db -c "CREATE TABLE plain_events (tenant_id uuid NOT NULL, event_type text NOT NULL, quantity numeric NOT NULL,
                                       properties jsonb NOT NULL, idempotency_key text NOT NULL,
                                       occurred_at timestamptz NOT NULL, PRIMARY KEY (tenant_id, idempotency_key))" >/dev/null
cat >"$WORK/plain.sql" <<'SQL'
INSERT INTO plain_events VALUES ('00000000-0000-0000-0000-000000000001', 'api.call', 1, '{}', md5(random()::text || clock_timestamp()::text), now());
SQL
cat >"$WORK/single.sql" <<'SQL'
SELECT sutra.record_usage('api.call', 1, '{}', md5(random()::text || clock_timestamp()::text));
SQL
cat >"$WORK/batch.sql" <<'SQL'
SELECT sutra.record_usage_batch((SELECT jsonb_agg(jsonb_build_object('event_type', 'api.call', 'idempotency_key', md5(random()::text || clock_timestamp()::text || i))) FROM generate_series(1, 1000) i));
SQL
rate() { # rate CLIENTS SCRIPT: transactions per second in a tenant session
    client env PGOPTIONS="-c sutra.tenant_id=$context" "$PG_BIN/pgbench" -n -c "$1" -j 2 -T "$SECS" -h "$HOST" \
        -p "$PORT" -U postgres -f "$WORK/$2.sql" bench_usage 2>/dev/null | sed -nE 's/^tps = ([0-9.]+).*/\1/p'
}
single=() plain=() batch=()
for round in 1 2 3 4; do
    if [ $((round % 2)) = 1 ]; then single+=("$(rate 8 single)"); plain+=("$(rate 8 plain)")
    else plain+=("$(rate 8 plain)"); single+=("$(rate 8 single)"); fi
    batch+=("$(rate 2 batch)")
done
awk -v s="$(median "${single[@]}")" -v p="$(median "${plain[@]}")" -v b="$(median "${batch[@]}")" 'BEGIN {
    printf "record_usage, 8 clients: %.0f events/s vs plain INSERT %.0f rows/s, ratio %.3f (bar >= 0.5)\n", s, p, s / p
    printf "record_usage_batch, 1,000 events a call, 2 clients: %.0f events/s = %.0f events/minute (bar >= 1,000,000)\n", b * 1000, b * 60000 }'
echo "    (runs: single ${single[*]}; plain ${plain[*]}; batch calls/s ${batch[*]})"
seq 1 20000 | awk '{printf "api.call\tcopy-%d-%s\n", $1, srand()}' >"$WORK/copy.tsv"
chmod 644 "$WORK/copy.tsv"
copy_ms=$(client env PGOPTIONS="-c sutra.tenant_id=$context" "$PG_BIN/psql" -X -q -A -t -h "$HOST" -p "$PORT" \
    -U postgres -d bench_usage -c "\\timing on" \
    -c "\\copy sutra.usage_ingest (event_type, idempotency_key) FROM '$WORK/copy.tsv'" | sed -nE 's/^Time: ([0-9.]+) ms.*/\1/p')
awk -v ms="$copy_ms" 'BEGIN { printf "COPY through sutra.usage_ingest: 20,000 events in %.0f ms, %.0f events/s\n", ms, 20000000 / ms }'
echo "reproduce: bench/usage.sh"
