#!/usr/bin/env bash
# Tenancy costs against baselines measured in the same run on the same data, on a throwaway
# cluster (port 54645):
#   1. row level security's tenant filter against a hand-written WHERE, on 1,000,000 rows over
#      1,000 tenants: the same queries run as a NOBYPASSRLS role (member of sutra_service) in a
#      tenant context set by sutra.set_tenant, and as a superuser (who bypasses RLS) on the same
#      table with `tenant_id = '<uuid>'` written out, interleaved in one pgbench run;
#   2. sutra.authenticate per call, against the same server-side loop around a trivial function;
#   3. sutra.create_tenant with 11,000 tenants present, against an INSERT into a plain table of
#      the same shape.
# Run: bench/tenancy.sh   (builds and installs the release build first)
# On a running cluster with sutra installed and preloaded (no build, no throwaway cluster):
#   SUTRA_BENCH_HOST=/socket/dir SUTRA_BENCH_PORT=5432 bench/tenancy.sh
# It then works in a database bench_tenancy and a role sutra_bench_app, and drops both.
# SUTRA_BENCH_INSTALLED=1: a throwaway cluster, using the sutra already installed (no build).
# BENCH_SECONDS (default 10) sets the length of each pgbench run of part 1 (3 rounds x 2 queries).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

DB=bench_tenancy
APP=sutra_bench_app
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
ROUNDS=3
WORK=$(mktemp -d)
chmod 755 "$WORK"

bench_cleanup_at_exit "$DB" "$APP" "$WORK"
# Room for the whole table and its indexes, so that both sides read from shared buffers.
bench_cluster bench-tenancy-cluster 54645 "shared_buffers = 1GB"

psql_as() {
    local user=$1 db=$2
    shift 2
    client "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$HOST" -p "$PORT" -U "$user" -d "$db" "$@"
}
sql() { psql_as postgres "$DB" "$@"; }
sql_app() { psql_as "$APP" "$DB" "$@"; }
# pgbench_as USER SEED ARGS...: one client, no vacuum, per-statement latencies.
pgbench_as() {
    local user=$1 seed=$2
    shift 2
    client "$PG_BIN/pgbench" -n -c 1 -r --random-seed="$seed" -h "$HOST" -p "$PORT" -U "$user" "$@" "$DB" 2>&1
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
verdict() { awk -v v="$1" -v bar="$2" 'BEGIN {print (v <= bar) ? "meets the bar" : "MISSES the bar"}'; }

# Tenant n (1..1000) of part 1 has a known id, so that scripts can name it without a lookup.
TENANT_UUID="('00000000-0000-4000-8000-' || lpad((N)::text, 12, '0'))::uuid"
tenant_uuid() { local e=${TENANT_UUID//N/$1}; printf '%s' "$e"; }

psql_as postgres postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "DROP ROLE IF EXISTS $APP" \
    -c "CREATE DATABASE $DB"

# --- Data: 1,000 tenants, 1,000,000 items spread evenly (rows arrive interleaved, as appends from
# every tenant do), tenancy enabled on the loaded table -------------------------------------------
t0=$(date +%s)
sql -c "CREATE EXTENSION sutra" -c "
    CREATE ROLE $APP LOGIN NOBYPASSRLS IN ROLE sutra_service;
    SELECT count(sutra.create_tenant(format('tenant-%s', lpad(n::text, 4, '0')), plan => 'pro',
                                     id => $(tenant_uuid n)))
    FROM generate_series(1, 1000) n;
    CREATE TABLE items (
        id bigint PRIMARY KEY,
        tenant_id uuid NOT NULL,
        category int NOT NULL,
        created_at timestamptz NOT NULL,
        payload text NOT NULL
    );
    INSERT INTO items
    SELECT i, $(tenant_uuid '1 + i % 1000'), (i / 1000) % 10,
           timestamptz '2024-01-01' + i * interval '30 s', md5(i::text) || ' item ' || i
    FROM generate_series(0, 999999) i;
    SELECT sutra.enable_tenancy('items');
    GRANT SELECT, INSERT, UPDATE, DELETE ON items TO $APP;" -c "VACUUM ANALYZE items" >/dev/null
load_s=$(( $(date +%s) - t0 ))

# Query texts: Q1 aggregates one category of a tenant's items, Q2 fetches a page of a tenant's
# items by id (keyset pagination). The RLS side leaves the tenant to the policy; the WHERE side
# names it.
Q1_RLS="SELECT count(*), sum(length(payload)) FROM items WHERE category = 3"
Q1_WHERE="SELECT count(*), sum(length(payload)) FROM items WHERE tenant_id = $(tenant_uuid :n) AND category = 3"
Q2_RLS="SELECT id, category, payload FROM items WHERE id > :cursor ORDER BY id LIMIT 20"
Q2_WHERE="SELECT id, category, payload FROM items WHERE tenant_id = $(tenant_uuid :n) AND id > :cursor ORDER BY id LIMIT 20"

# Correctness first: for a few tenants, both sides return the same thing.
for n in 1 417 1000; do
    for q in 1 2; do
        rls_q=Q${q}_RLS where_q=Q${q}_WHERE
        a=$(sql_app -c "SELECT sutra.set_tenant($(tenant_uuid $n), session => true)" -c "${!rls_q//:cursor/500000}" | tail -n +2 | md5sum)
        b=$(sql -c "$(sed "s/:n/$n/g; s/:cursor/500000/g" <<<"${!where_q}")" | md5sum)
        [ "$a" = "$b" ] || { echo "RLS and WHERE results differ for tenant $n, query $q" >&2; exit 1; }
    done
done

# The plans under RLS, as the RLS role logged in: Q1 must use an index led by tenant_id; for Q2 the
# scan node is shown, with where the tenant condition went (index condition or per-row filter).
tenant_indexes=$(sql -c "SELECT string_agg(i.indexrelid::regclass::text, '|') FROM pg_index i
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
    WHERE i.indrelid = 'items'::regclass AND a.attname = 'tenant_id'")
rls_plan() { sql_app -c "SELECT sutra.set_tenant($(tenant_uuid 417), session => true)" -c "EXPLAIN (COSTS OFF) ${1//:cursor/500000}" | tail -n +2; }
# scan_node PLAN: the first scan node, and where current_tenant() appears in it.
scan_node() {
    awk '/Scan (using|on) / && !node {sub(/^[ ->]*/, ""); sub(/ +$/, ""); node = $0; next}
         node && /current_tenant/ && !where {where = ($1 ~ /Filter/) ? "tenant as a per-row Filter" : "tenant as " $1 " " $2; sub(/:$/, "", where)}
         END {print node (where ? " (" where ")" : "")}' <<<"$1"
}
p1=$(rls_plan "$Q1_RLS")
p2=$(rls_plan "$Q2_RLS")
if ! grep -qE "(Index Scan|Index Only Scan|Bitmap Index Scan) (using|on) ($tenant_indexes)( |$)" <<<"$p1"; then
    echo "no index on tenant_id in the RLS plan of: $Q1_RLS" >&2
    echo "$p1" >&2
    exit 1
fi
plan1=$(grep -E "(Index Scan|Index Only Scan|Bitmap Index Scan) (using|on) ($tenant_indexes)( |$)" <<<"$p1" | head -n1 |
    sed -E 's/^[ ->]*//; s/ +$//')
plan2=$(grep -E "(Index Scan|Index Only Scan|Bitmap Index Scan) (using|on) ($tenant_indexes)( |$)" <<<"$p2" | head -n1 |
    sed -E 's/^[ ->]*//; s/ +$//' || true)
[ -n "$plan2" ] || plan2=$(scan_node "$p2")

# pgbench scripts, one per side, run interleaved by one pgbench client (it draws a script per
# transaction), so that both sides see the same background load. The client connects as the
# superuser; the RLS side switches to the NOBYPASSRLS role with SET ROLE, the WHERE side back with
# RESET ROLE; both then set the tenant context for the session (only the RLS side's query uses it)
# and run their query. The figure is pgbench's mean latency of the query statement alone.
for q in 1 2; do
    for side in RLS WHERE; do
        v=Q${q}_$side
        {
            echo '\set n random(1, 1000)'
            echo '\set cursor random(0, 980000)'
            if [ "$side" = RLS ]; then echo "SET ROLE $APP;"; else echo "RESET ROLE;"; fi
            echo "SELECT sutra.set_tenant($(tenant_uuid :n), session => true);"
            echo "${!v};"
        } >"$WORK/q$q-$side.sql"
    done
done
chmod 644 "$WORK"/*.sql
pgbench_as postgres 1 -T 2 -f "$WORK/q1-RLS.sql" -f "$WORK/q1-WHERE.sql" >/dev/null  # warm-up
declare -A LAT RATIOS
for round in $(seq 1 "$ROUNDS"); do
    for q in 1 2; do
        out=$(pgbench_as postgres "$round$q" -T "$SECONDS_PER_RUN" -f "$WORK/q$q-RLS.sql" -f "$WORK/q$q-WHERE.sql")
        grep -q '^number of failed transactions: 0 ' <<<"$out" || { echo "$out" >&2; exit 1; }
        # The query lines of script 1 (RLS), then script 2 (WHERE), and each script's count.
        read -r rls where <<<"$(awk 'index($0, "FROM items") && $1 ~ /^[0-9.]+$/ {printf "%s ", $1}' <<<"$out")"
        read -r n_rls n_where <<<"$(sed -nE 's/^ - ([0-9]+) transactions .*/\1/p' <<<"$out" | tr '\n' ' ')"
        LAT[${q}RLS]+="$rls "
        LAT[${q}WHERE]+="$where "
        LAT[${q}N]+="$n_rls/$n_where "
        RATIOS[$q]+="$(ratio "$rls" "$where") "
    done
done
rls_line() {
    local q=$1 what=$2 plan=$3
    local rls where r
    rls=$(tr ' ' '\n' <<<"${LAT[${q}RLS]}" | grep . | median)
    where=$(tr ' ' '\n' <<<"${LAT[${q}WHERE]}" | grep . | median)
    r=$(tr ' ' '\n' <<<"${RATIOS[$q]}" | grep . | median)
    printf 'rls filter, 1M rows / 1000 tenants, %s: rls %.3f ms vs where %.3f ms per query, ratio %.3f (bar <= 1.05, %s); index: %s\n' \
        "$what" "$rls" "$where" "$r" "$(verdict "$r" 1.05)" "$plan"
    printf '    (medians of %d interleaved pgbench runs of %ss, 1 client, a random tenant of 1000 per query; per run: rls %s ms, where %s ms, ratio %s, queries %s)\n' \
        "$ROUNDS" "$SECONDS_PER_RUN" "${LAT[${q}RLS]% }" "${LAT[${q}WHERE]% }" "${RATIOS[$q]% }" "${LAT[${q}N]% }"
}
# The policy's function alone, per call, as the RLS role in a tenant context (for reading Q2).
policy_us=$(sql_app -c "SELECT sutra.set_tenant($(tenant_uuid 417), session => true)" -c "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON)
    SELECT count(sutra.current_tenant('read')) FROM generate_series(1, 100000)" | tail -n +2 |
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)[0]["Execution Time"] * 1000 / 100000))')

# --- sutra.authenticate ---------------------------------------------------------------------------
KEY=$(sql -c "SELECT sutra.create_api_key('tenant-0001', 'bench', '{read,write}')")
# best_ms SQL: the best of 5 server-side timings of SQL, in milliseconds, as the app role.
best_ms() {
    for _ in 1 2 3 4 5; do
        sql_app -c "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) $1" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Execution Time"])'
    done | sort -g | head -n1
}
CALLS=20000
sql_app -c "SELECT count(sutra.authenticate('$KEY', session => true)) FROM generate_series(1, 100)" >/dev/null  # warm-up
auth_ms=$(best_ms "SELECT count(sutra.authenticate('$KEY', session => true)) FROM generate_series(1, $CALLS) i")
base_ms=$(best_ms "SELECT count(length('$KEY' || i)) FROM generate_series(1, $CALLS) i")
auth_us=$(awk -v t="$auth_ms" -v n=$CALLS 'BEGIN {printf "%.2f", t * 1000 / n}')
base_us=$(awk -v t="$base_ms" -v n=$CALLS 'BEGIN {printf "%.2f", t * 1000 / n}')
net_us=$(awk -v a="$auth_us" -v b="$base_us" 'BEGIN {printf "%.2f", a - b}')

# --- sutra.create_tenant with 11,000 tenants present ----------------------------------------------
sql -c "SELECT count(sutra.create_tenant(format('bulk-%s', n))) FROM generate_series(1, 10000) n" \
    -c "CREATE TABLE plain_tenants (LIKE sutra.tenants INCLUDING ALL);
        INSERT INTO plain_tenants SELECT * FROM sutra.tenants;
        CREATE SEQUENCE bench_seq;
        GRANT INSERT ON plain_tenants TO $APP;
        GRANT USAGE ON SEQUENCE bench_seq TO $APP;" \
    -c "VACUUM ANALYZE sutra.tenants, sutra.audit_log, plain_tenants" >/dev/null
present=$(sql -c "SELECT count(*) FROM sutra.tenants")
echo "SELECT sutra.create_tenant('new-' || nextval('bench_seq'));" >"$WORK/create.sql"
echo "INSERT INTO plain_tenants (slug, name, plan) SELECT s, s, 'free' FROM (SELECT 'plain-' || nextval('bench_seq') AS s) x;" >"$WORK/insert.sql"
chmod 644 "$WORK"/*.sql
# One connection per side; its first, cold, statement counts on both sides alike.
c_out=$(pgbench_as "$APP" 1 -t 200 -f "$WORK/create.sql")
i_out=$(pgbench_as "$APP" 1 -t 200 -f "$WORK/insert.sql")
create_ms=$(stmt_ms "$c_out" "create_tenant")
insert_ms=$(stmt_ms "$i_out" "INSERT INTO plain_tenants")
made=$(( $(sql -c "SELECT count(*) FROM sutra.tenants") - present ))
[ "$made" = 200 ] || { echo "expected 200 new tenants, got $made" >&2; echo "$c_out" >&2; exit 1; }

# --- Report ---------------------------------------------------------------------------------------
echo "data: 1,000,000 items over 1,000 tenants loaded, tenancy enabled and analyzed in ${load_s}s"
rls_line 1 "count of one category" "$plan1"
rls_line 2 "keyset page of 20 by id" "$plan2"
echo "    (sutra.current_tenant('read') costs $policy_us µs per call, 100,000 calls in one statement; the policies call it once per statement)"
printf 'authenticate, %d calls in one statement after warm-up: %.2f µs per call vs %.2f µs for the same loop around length(), net %.2f µs (bar < 20 µs, %s)\n' \
    "$CALLS" "$auth_us" "$base_us" "$net_us" "$(verdict "$net_us" 20)"
printf 'create_tenant with %d tenants present, 200 one per statement: %.3f ms vs %.3f ms for an INSERT into a plain table of the same shape, ratio %s (bar < 10 ms, %s)\n' \
    "$present" "$create_ms" "$insert_ms" "$(ratio "$create_ms" "$insert_ms")" "$(verdict "$create_ms" 10)"
echo "reproduce: bench/tenancy.sh"
