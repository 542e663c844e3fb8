#!/usr/bin/env bash
# The sutra_hnsw index against pgvector's hnsw index on the same data in the same run, on a
# throwaway cluster (port 54650, shared_buffers = 2GB, maintenance_work_mem = 2GB, jit off; both
# sides in one database, each with its own tables loaded by COPY from the same files). Cosine
# distance, m = 16, ef_construction = 64 on both sides; PostgreSQL's default parallel maintenance
# workers (pgvector builds in parallel with them).
#   single: one tenant, at 128 and then at 768 dimensions (single128: 128 only). 100,000
#     clustered vectors, 500 held-out queries from the same clusters, exact top 10 by numpy. Per
#     side: CREATE INDEX wall clock, index size, recall@10 over the ef_search sweep 20, 40, 80,
#     160, 320 (sutra.hnsw_ef_search, hnsw.ef_search), and pgbench QPS with p50/p99 latency (from
#     per-transaction logs) at each ef_search with 1 and 2 clients: a random held-out query per
#     transaction, -M prepared,
#       SELECT id FROM items ORDER BY embedding <=> (SELECT v FROM queries WHERE qid = :q) LIMIT 10
#     and the two compared at equal recall, recall@10 0.95 and the highest recall both reach: the
#     QPS of each on its QPS/recall curve at that recall (linear between the two sweep points
#     around it), and at the lowest ef_search of the sweep that reaches it. At 128 dimensions, then
#     single-row inserts into the indexed table with 1 and 4 writers (pgbench, one row of 20,000
#     fresh vectors from the same clusters per transaction): inserts/s, p50/p99.
#   tenants: 1,000 tenants of power-law sizes (1 to ~13,000 rows), 200,000 x 128 rows, each
#     tenant's vectors from 1 to 3 clusters that other tenants share. 100 queries in each size
#     bucket (small < 100 rows, medium 100 to 1000, large > 1000), exact top 10 within the
#     tenant. Per bucket: recall@10, its worst query, short results (fewer than min(10, tenant
#     rows) rows returned), QPS and p50/p99 with 1 client (and the search statement's mean
#     latency alone, pgbench -r), for
#       (1) sutra: sutra_hnsw (tenant_id, embedding), WHERE tenant_id = ...
#       (2) sutra through row level security: sutra.enable_tenancy, a NOBYPASSRLS role in a tenant
#           context set by sutra.set_tenant, no WHERE
#       (3) pgvector: hnsw (embedding), WHERE tenant_id = ..., no iterative scan
#       (4) pgvector: the same with hnsw.iterative_scan = relaxed_order
#       (5) pgvector: hnsw + btree (tenant_id), relaxed_order, the planner choosing per tenant
#           (plan_cache_mode = force_custom_plan: each query is planned for its tenant)
#     A pgbench transaction picks a random query of the bucket, reads its tenant, then searches
#     (setup 2: sets the tenant context for the session instead, then searches without WHERE), so
#     every setup makes two round trips. Recall is measured with one connection per setup; there
#     setup 2 sets its context per transaction (sutra.set_tenant(..., local => true)). Every
#     returned row is checked to belong to the query's tenant.
# Plans are checked with EXPLAIN (the generic plan that pgbench -M prepared ends up with, and the
# custom plan of every recall query in part tenants, of the first in part single): the one-tenant
# query and setups 1 to 4 must scan their HNSW index or the script stops; setup 5 reports what
# the planner chose.
# pgvector is skipped with a message when not installed (no vector.control), the sutra side when
# the sutra_hnsw access method does not exist.
#   tiny: 50,000 tenants of 4 rows (200,000 x 128): index size and build time of sutra_hnsw
#     (tenant_id, embedding) against pgvector's hnsw (embedding) plus a btree (tenant_id), the
#     smallest pgvector setup that finds a tenant's rows.
# Run: bench/hnsw.sh [single|single128|tenants|tiny|all]   (default all; builds and installs the
#   release build first; then about 25 minutes with both sides: 6 for single at 128 dimensions,
#   11 at 768, 5.5 for tenants, 1.5 for tiny)
# SUTRA_BENCH_INSTALLED=1: a throwaway cluster, using the sutra already installed (no build).
# On a running cluster with sutra installed and preloaded (no build, no throwaway cluster):
#   SUTRA_BENCH_HOST=/socket/dir SUTRA_BENCH_PORT=5432 bench/hnsw.sh
# It then works in a database bench_hnsw and a role sutra_bench_hnsw, and drops both.
# BENCH_SECONDS (default 10) sets the length of each pgbench run (8 in part single, 30 in part
# tenants; plus a 2 s warm-up per side in part single).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

PARTS=${1:-all}
case $PARTS in
    single | single128 | tenants | tiny | all) ;;
    *) echo "usage: bench/hnsw.sh [single|single128|tenants|tiny|all]" >&2; exit 2 ;;
esac
DB=bench_hnsw
APP=sutra_bench_hnsw
SECS=${BENCH_SECONDS:-10}
EFS=(40 100)
EFS_SINGLE=(20 40 80 160 320)
BENCH_PY="$REPO/bench/hnsw_bench.py"
WORK=$(mktemp -d)
chmod 755 "$WORK"
LOGS="$WORK/logs"
mkdir "$LOGS"
chmod 777 "$LOGS"  # pgbench writes its logs as the postgres OS user

bench_cleanup_at_exit "$DB" "$APP" "$WORK"
# Room for both sides' tables and indexes, so that every search reads from shared buffers.
bench_cluster bench-hnsw-cluster 54650 "shared_buffers = 2GB" "maintenance_work_mem = 2GB" "max_wal_size = 4GB" "jit = off"
ensure_python_env

psql_as() {
    local user=$1 db=$2
    shift 2
    client "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$HOST" -p "$PORT" -U "$user" -d "$db" "$@"
}
sql() { psql_as postgres "$DB" "$@"; }
dsn() { printf 'host=%s port=%s dbname=%s user=%s' "$HOST" "$PORT" "$DB" "${1:-postgres}"; }
py() { "$PYTHON" "$BENCH_PY" "$@"; }
now() { printf '%s' "$EPOCHREALTIME"; }
step() { printf '... %s\n' "$*" >&2; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b - a}'; }
fail() { echo "$*" >&2; exit 1; }

psql_as postgres postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" \
    -c "DROP ROLE IF EXISTS $APP" -c "CREATE DATABASE $DB"
# Both sides' operators are found through the search path (sutra.vector's in sutra, pgvector's in
# public); their types differ, so each query resolves to its own side's operator.
sql -c "ALTER DATABASE $DB SET search_path = public, sutra" -c "CREATE EXTENSION sutra" >/dev/null

# --- The two sides ------------------------------------------------------------------------------
SIDES=()
if [ -n "$(sql -c "SELECT 1 FROM pg_am WHERE amname = 'sutra_hnsw'")" ]; then
    SIDES+=(sutra)
else
    echo "sutra_hnsw not installed, skipped"
fi
PGV_VERSION=
if [ -n "$(sql -c "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")" ]; then
    sql -c "CREATE EXTENSION vector SCHEMA public" >/dev/null
    PGV_VERSION=$(sql -c "SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    SIDES+=(pgv)
else
    echo "pgvector not installed (no vector.control in $("$PG_CONFIG" --sharedir)/extension), pgvector columns skipped"
fi
[ ${#SIDES[@]} -gt 0 ] || { echo "nothing to measure"; exit 0; }
has_side() { [[ " ${SIDES[*]} " == *" $1 "* ]]; }
declare -A TYPE=([sutra]=sutra.vector [pgv]=public.vector)
declare -A AM=([sutra]=sutra_hnsw [pgv]=hnsw)
declare -A OPS=([sutra]=sutra.vector_cosine_ops [pgv]=public.vector_cosine_ops)
declare -A GUC=([sutra]=sutra.hnsw_ef_search [pgv]=hnsw.ef_search)
declare -A LABEL=([sutra]=sutra_hnsw [pgv]="pgvector $PGV_VERSION")
WORKERS=$(sql -c "SHOW max_parallel_maintenance_workers")
PREWARM=$(sql -c "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_prewarm'")
[ -z "$PREWARM" ] || sql -c "CREATE EXTENSION pg_prewarm" >/dev/null
# prewarm REL...: reads relations into shared buffers, so that no side pays for the first reads.
prewarm() {
    [ -n "$PREWARM" ] || return 0
    local r
    for r in "$@"; do sql -c "SELECT pg_prewarm('$r')" >/dev/null; done
}
declare -A R  # the figures, by name

# build_index NAME SQL: runs the CREATE INDEX and records its wall clock (s) and size (MB).
build_index() {
    local name=$1 ddl=$2 t0 t1
    sql -c "CHECKPOINT" >/dev/null
    t0=$(now)
    sql -c "$ddl"
    t1=$(now)
    R[build:$name]=$(elapsed "$t0" "$t1")
    R[size:$name]=$(sql -c "SELECT round(pg_relation_size('$name') / 1048576.0, 1)")
}

# require_generic_plan USER PRELUDE INDEX SQL ARGTYPES ARGS: the generic plan of SQL prepared
# with parameters of ARGTYPES (what pgbench -M prepared ends up running) scans INDEX.
require_generic_plan() {
    local user=$1 prelude=$2 index=$3 query=$4 types=$5 args=$6 plan
    plan=$(psql_as "$user" "$DB" -c "$prelude" -c "SET plan_cache_mode = force_generic_plan" \
        -c "PREPARE q($types) AS $query" -c "EXPLAIN (COSTS OFF) EXECUTE q($args)")
    grep -qE "Index Scan using $index on " <<<"$plan" ||
        fail "$(printf 'the generic plan of\n  %s\ndoes not use %s:\n%s' "$query" "$index" "$plan")"
}

# run_pgbench NAME USER CLIENTS PGOPTIONS SCRIPT [SECONDS]: SECONDS (default BENCH_SECONDS) of
# SCRIPT, -M prepared, with a per-transaction log; prints "QPS p50_ms p99_ms search_ms", the
# last the mean latency of the search statement alone (pgbench -r).
run_pgbench() {
    local name=$1 user=$2 clients=$3 opts=$4 script=$5 secs=${6:-$SECS} out tps lat p50 p99 search
    out=$(client env PGOPTIONS="$opts" "$PG_BIN/pgbench" -n -M prepared -c "$clients" -j "$clients" -T "$secs" \
        --random-seed=7 -r -l --log-prefix="$LOGS/$name" -f "$script" -h "$HOST" -p "$PORT" -U "$user" "$DB" 2>&1) ||
        fail "$out"
    grep -q '^number of failed transactions: 0 ' <<<"$out" || fail "$out"
    tps=$(sed -nE 's/^tps = ([0-9.]+) \(without initial connection time\)/\1/p' <<<"$out")
    search=$(awk 'index($0, "ORDER BY embedding") && $1 ~ /^[0-9.]+$/ {print $1; exit}' <<<"$out")
    lat=$(py latency "$LOGS/$name")
    read -r p50 p99 _ <<<"$lat"
    printf '%.0f %s %s %s\n' "$tps" "$p50" "$p99" "$search"
}

# Formatting: a figure or "-", and the ratio of two figures or "-".
fig() { printf '%s' "${R[$1]:--}"; }
ratio() {
    awk -v a="${R[$1]:-}" -v b="${R[$2]:-}" 'BEGIN {if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b}'
}

# row LABEL SUTRA PGVECTOR RATIO: a line of part single's table.
row() { printf '%-44s %14s %16s %15s\n' "$@"; }
# trow ...: a line of part tenants' tables.
trow() { printf '  %-42s %4s %9s %6s %6s %7s %8s %8s %9s  %s\n' "$@"; }

# --- Part single: one tenant --------------------------------------------------------------------
# single_at TARGET SIDE C: for SIDE with C clients, "ef qps" at the lowest ef_search of the sweep
# whose recall@10 reaches TARGET, then "efs qps" on SIDE's QPS/recall curve at recall TARGET:
# linear between the two sweep points around it (efs "a-b"), or that lowest one's when the first
# point reaches it already. Nothing when no point reaches TARGET.
single_at() {
    local target=$1 side=$2 c=$3 ef points=""
    for ef in "${EFS_SINGLE[@]}"; do
        points+="$ef ${R[recall:$DIM:$side:$ef]:-0} ${R[qps:$DIM:$side:$ef:$c]:-0} "
    done
    awk -v t="$target" -v p="$points" 'BEGIN {
        n = split(p, f, " ") / 3
        for (i = 1; i <= n; i++) {
            e[i] = f[3 * i - 2]; r[i] = f[3 * i - 1]; q[i] = f[3 * i]
            if (r[i] >= t) {
                if (i == 1 || r[i] == r[i - 1]) { printf "%s %s %s %s", e[i], q[i], e[i], q[i]; exit }
                x = q[i - 1] + (t - r[i - 1]) * (q[i] - q[i - 1]) / (r[i] - r[i - 1])
                printf "%s %s %s-%s %.0f", e[i], q[i], e[i - 1], e[i], x; exit
            }
        }
    }'
}

# equal_recall LABEL TARGET: the QPS of both sides at recall@10 TARGET, 1 and 2 clients, and
# their ratio: on each side's QPS/recall curve, and at the lowest ef_search reaching TARGET.
equal_recall() {
    local label=$1 target=$2 c s p s_ef s_qps p_ef p_qps s_efs s_at p_efs p_at
    for c in 1 2; do
        read -r s_ef s_qps s_efs s_at <<<"$(single_at "$target" sutra "$c")"
        read -r p_ef p_qps p_efs p_at <<<"$(single_at "$target" pgv "$c")"
        R[eq:s]=${s_at:-}
        R[eq:p]=${p_at:-}
        s=${s_at:+$s_at (ef $s_efs)}
        p=${p_at:+$p_at (ef $p_efs)}
        row "QPS at recall@10 $target ($label), $c client(s)" "${s:--}" "${p:--}" "$(ratio eq:s eq:p)"
        R[eq:s]=${s_qps:-}
        R[eq:p]=${p_qps:-}
        s=${s_qps:+$s_qps (ef $s_ef)}
        p=${p_qps:+$p_qps (ef $p_ef)}
        row "  at the lowest ef_search reaching it" "${s:--}" "${p:--}" "$(ratio eq:s eq:p)"
    done
}

# part_single DIMS [inserts]: one tenant at DIMS dimensions; with "inserts", single-row inserts
# after the searches.
part_single() {
    local dims=$1 inserts=${2:-} side ef c name q out info short best_s best_p both
    DIM=$dims
    step "part single ($dims dims): generating the data"
    info=$(BENCH_DIMS=$dims py gen-single "$WORK/single")
    for side in "${SIDES[@]}"; do
        sql -c "CREATE TABLE items_$side (id bigint PRIMARY KEY, embedding ${TYPE[$side]}($dims) NOT NULL)" \
            -c "CREATE TABLE queries_$side (qid int PRIMARY KEY, v ${TYPE[$side]}($dims) NOT NULL)"
        sql -c "COPY items_$side FROM STDIN" <"$WORK/single/items.tsv"
        sql -c "COPY queries_$side FROM STDIN" <"$WORK/single/queries.tsv"
        sql -c "VACUUM ANALYZE items_$side, queries_$side"
    done
    for side in "${SIDES[@]}"; do
        step "part single ($dims dims): building ${LABEL[$side]}"
        build_index "items_${side}_hnsw" "CREATE INDEX items_${side}_hnsw ON items_$side
            USING ${AM[$side]} (embedding ${OPS[$side]}) WITH (m = 16, ef_construction = 64)"
        R[build:$dims:$side]=${R[build:items_${side}_hnsw]}
        R[size:$dims:$side]=${R[size:items_${side}_hnsw]}
        prewarm "items_$side" "items_${side}_hnsw" "queries_$side"
        q="SELECT id FROM items_$side ORDER BY embedding <=> (SELECT v FROM queries_$side WHERE qid = \$1) LIMIT 10"
        require_generic_plan postgres "SELECT 1" "items_${side}_hnsw" "$q" int 1
        for ef in "${EFS_SINGLE[@]}"; do
            out=$(py recall-single --dir "$WORK/single" --dsn "$(dsn)" --table "items_$side" \
                --queries "queries_$side" --index "items_${side}_hnsw" --set "SET ${GUC[$side]} = $ef")
            read -r "R[recall:$dims:$side:$ef]" short <<<"$out"
            R[short:$dims:$side:$ef]=$(awk -v s="$short" 'BEGIN {printf "%.0f%%", s * 100}')
        done
        {
            echo '\set q random(1, 500)'
            echo "SELECT id FROM items_$side ORDER BY embedding <=> (SELECT v FROM queries_$side WHERE qid = :q) LIMIT 10;"
        } >"$WORK/single-$side.sql"
        chmod 644 "$WORK/single-$side.sql"
        run_pgbench "warmup-single-$dims-$side" postgres 1 "-c ${GUC[$side]}=40" "$WORK/single-$side.sql" 2 >/dev/null
    done
    # The sides alternate within each setting, so that both see the same machine.
    for ef in "${EFS_SINGLE[@]}"; do
        for c in 1 2; do
            for side in "${SIDES[@]}"; do
                step "part single ($dims dims): pgbench ${LABEL[$side]}, ef_search $ef, $c client(s)"
                name="single-$dims-$side-$ef-$c"
                out=$(run_pgbench "$name" postgres "$c" "-c ${GUC[$side]}=$ef" "$WORK/single-$side.sql")
                read -r "R[qps:$dims:$side:$ef:$c]" "R[p50:$dims:$side:$ef:$c]" "R[p99:$dims:$side:$ef:$c]" _ <<<"$out"
            done
        done
    done
    if [ -n "$inserts" ]; then
        # Single-row inserts into the indexed table, 1 and 4 writers, the sides alternating: each
        # transaction inserts one row of fresh.tsv (drawn from the same clusters) under a new id.
        for side in "${SIDES[@]}"; do
            sql -c "CREATE TABLE fresh_$side (k int PRIMARY KEY, v ${TYPE[$side]}($dims) NOT NULL)" \
                -c "CREATE SEQUENCE ins_$side START 1000001"
            sql -c "COPY fresh_$side FROM STDIN" <"$WORK/single/fresh.tsv"
            sql -c "VACUUM ANALYZE fresh_$side"
            {
                echo '\set n random(1, 20000)'
                echo "INSERT INTO items_$side (id, embedding) SELECT nextval('ins_$side'), v FROM fresh_$side WHERE k = :n;"
            } >"$WORK/insert-$side.sql"
            chmod 644 "$WORK/insert-$side.sql"
        done
        for c in 1 4; do
            for side in "${SIDES[@]}"; do
                step "part single ($dims dims): inserts into ${LABEL[$side]}, $c writer(s)"
                out=$(run_pgbench "insert-$side-$c" postgres "$c" "" "$WORK/insert-$side.sql")
                read -r "R[ins:$side:$c]" "R[insp50:$side:$c]" "R[insp99:$side:$c]" _ <<<"$out"
            done
        done
    fi

    echo
    echo "HNSW, one tenant: $info; cosine, m = 16, ef_construction = 64,"
    echo "max_parallel_maintenance_workers = $WORKERS; pgbench -M prepared, ${SECS}s per run, a random query per transaction"
    row "" "sutra_hnsw" "${LABEL[pgv]:-pgvector}" "sutra/pgvector"
    row "build (CREATE INDEX), s  (lower: better)" "$(fig build:$dims:sutra)" "$(fig build:$dims:pgv)" \
        "$(ratio build:$dims:sutra build:$dims:pgv)"
    row "index size, MB  (lower: better)" "$(fig size:$dims:sutra)" "$(fig size:$dims:pgv)" \
        "$(ratio size:$dims:sutra size:$dims:pgv)"
    for ef in "${EFS_SINGLE[@]}"; do
        row "recall@10, ef_search $ef" "$(fig "recall:$dims:sutra:$ef")" "$(fig "recall:$dims:pgv:$ef")" \
            "$(ratio "recall:$dims:sutra:$ef" "recall:$dims:pgv:$ef")"
    done
    for ef in "${EFS_SINGLE[@]}"; do
        for c in 1 2; do
            row "QPS, ef_search $ef, $c client(s)" "$(fig "qps:$dims:sutra:$ef:$c")" "$(fig "qps:$dims:pgv:$ef:$c")" \
                "$(ratio "qps:$dims:sutra:$ef:$c" "qps:$dims:pgv:$ef:$c")"
            row "  p50 / p99 latency, ms  (lower: better)" \
                "$(fig "p50:$dims:sutra:$ef:$c") / $(fig "p99:$dims:sutra:$ef:$c")" \
                "$(fig "p50:$dims:pgv:$ef:$c") / $(fig "p99:$dims:pgv:$ef:$c")" \
                "$(ratio "p50:$dims:sutra:$ef:$c" "p50:$dims:pgv:$ef:$c") / $(ratio "p99:$dims:sutra:$ef:$c" "p99:$dims:pgv:$ef:$c")"
        done
    done
    # Equal recall: 0.95, and the highest recall both sides reach over the sweep.
    best_s=$(for ef in "${EFS_SINGLE[@]}"; do echo "${R[recall:$dims:sutra:$ef]:-0}"; done | sort -g | tail -1)
    best_p=$(for ef in "${EFS_SINGLE[@]}"; do echo "${R[recall:$dims:pgv:$ef]:-0}"; done | sort -g | tail -1)
    both=$(awk -v a="$best_s" -v b="$best_p" 'BEGIN {print (a < b) ? a : b}')
    equal_recall "0.95" 0.95
    equal_recall "the highest both reach" "$both"
    echo "(QPS at a recall: on the side's QPS/recall curve, linear between the two ef_search of the sweep around" \
        "it; below, at the lowest ef_search whose recall@10 reaches it; '-' when none does. Queries returning" \
        "fewer than 10 rows at ef 20 / 320: sutra $(fig short:$dims:sutra:20) / $(fig short:$dims:sutra:320)," \
        "pgvector $(fig short:$dims:pgv:20) / $(fig short:$dims:pgv:320))"
    if [ -n "$inserts" ]; then
        for c in 1 4; do
            row "single-row inserts/s, $c writer(s)" "$(fig "ins:sutra:$c")" "$(fig "ins:pgv:$c")" \
                "$(ratio "ins:sutra:$c" "ins:pgv:$c")"
            row "  p50 / p99 latency, ms  (lower: better)" "$(fig "insp50:sutra:$c") / $(fig "insp99:sutra:$c")" \
                "$(fig "insp50:pgv:$c") / $(fig "insp99:pgv:$c")" \
                "$(ratio "insp50:sutra:$c" "insp50:pgv:$c") / $(ratio "insp99:sutra:$c" "insp99:pgv:$c")"
        done
        for side in "${SIDES[@]}"; do sql -c "DROP TABLE fresh_$side" -c "DROP SEQUENCE ins_$side"; done
    fi
    echo "reproduce: bench/hnsw.sh single   (SUTRA_BENCH_INSTALLED=1: without building)"
    for side in "${SIDES[@]}"; do sql -c "DROP TABLE items_$side, queries_$side"; done
}

# --- Part tenants: 1,000 tenants ------------------------------------------------------------------
# The setups, in the order they run (5 needs the btree index that 3 and 4 must not have).
SETUP_LABEL=([1]="(1) sutra_hnsw (tenant_id, emb.), WHERE" [2]="(2) sutra_hnsw (tenant_id, emb.), RLS"
    [3]="(3) pgvector hnsw, WHERE" [4]="(4) pgvector hnsw, WHERE, relaxed_order" [5]="(5) pgvector hnsw + btree, relaxed_order")
SETUP_SHORT=([1]="(1) sutra WHERE" [2]="(2) sutra RLS" [3]="(3)" [4]="(4)" [5]="(5)")
setup_side() { if [ "$1" -le 2 ]; then echo sutra; else echo pgv; fi; }

# tenant_setup N EF BUCKETS...: recall (with plan checks) and pgbench runs of setup N at EF.
tenant_setup() {
    local n=$1 ef=$2 side user=postgres rls=() req=(--require) idx sets opts b out name nb
    side=$(setup_side "$n")
    idx=(--index "docs_${side}_hnsw")
    case $n in
        1 | 2) sets=(--set "SET sutra.hnsw_ef_search = $ef"); opts="-c sutra.hnsw_ef_search=$ef" ;;
        3) sets=(--set "SET hnsw.ef_search = $ef" --set "SET hnsw.iterative_scan = off")
           opts="-c hnsw.ef_search=$ef -c hnsw.iterative_scan=off" ;;
        4) sets=(--set "SET hnsw.ef_search = $ef" --set "SET hnsw.iterative_scan = relaxed_order")
           opts="-c hnsw.ef_search=$ef -c hnsw.iterative_scan=relaxed_order" ;;
        5) sets=(--set "SET hnsw.ef_search = $ef" --set "SET hnsw.iterative_scan = relaxed_order")
           opts="-c hnsw.ef_search=$ef -c hnsw.iterative_scan=relaxed_order -c plan_cache_mode=force_custom_plan"
           idx+=(--index docs_pgv_tenant)
           req=() ;;
    esac
    [ "$n" != 2 ] || { user=$APP; rls=(--rls); }
    step "part tenants: setup $n, ef_search $ef: recall"
    out=$(py recall-tenants --dir "$WORK/tenants" --dsn "$(dsn "$user")" --table "docs_$side" --queries "bq_$side" \
        "${idx[@]}" "${req[@]}" "${rls[@]}" "${sets[@]}")
    while read -r b rec worst short nq plans; do
        R[recall:$n:$ef:$b]=$rec R[worst:$n:$ef:$b]=$worst R[nq:$b]=$nq
        R[short:$n:$ef:$b]=$(awk -v s="$short" 'BEGIN {printf "%.0f%%", s * 100}')
        plans=${plans//docs_pgv_hnsw/hnsw}
        plans=${plans//docs_pgv_tenant/btree}
        R[plans:$n:$ef:$b]=${plans//docs_sutra_hnsw/sutra_hnsw}
    done <<<"$out"
    for b in "${BUCKETS[@]}"; do
        nb=${R[nq:$b]:-0}
        [ "$nb" -gt 0 ] || continue
        name="tenants-$n-$ef-$b"
        {
            echo "\\set r random(1, $nb)"
            if [ "$n" = 2 ]; then
                echo "SELECT sutra.set_tenant(tenant_id, session => true) FROM bq_sutra WHERE bucket = '$b' AND rn = :r;"
                echo "SELECT id FROM docs_sutra ORDER BY embedding <=> (SELECT v FROM bq_sutra WHERE bucket = '$b' AND rn = :r) LIMIT 10;"
            else
                echo "SELECT tenant_id AS t FROM bq_$side WHERE bucket = '$b' AND rn = :r \\gset"
                echo "SELECT id FROM docs_$side WHERE tenant_id = :t ORDER BY embedding <=> (SELECT v FROM bq_$side WHERE bucket = '$b' AND rn = :r) LIMIT 10;"
            fi
        } >"$WORK/$name.sql"
        chmod 644 "$WORK/$name.sql"
        step "part tenants: setup $n, ef_search $ef: pgbench, $b tenants"
        out=$(run_pgbench "$name" "$user" 1 "$opts" "$WORK/$name.sql")
        read -r "R[qps:$n:$ef:$b]" "R[p50:$n:$ef:$b]" "R[p99:$n:$ef:$b]" "R[search:$n:$ef:$b]" <<<"$out"
    done
}

BUCKETS=(small medium large)
part_tenants() {
    local side ef n b q t_small t_large best info
    step "part tenants: generating the data"
    info=$(py gen-tenants "$WORK/tenants")
    for side in "${SIDES[@]}"; do
        sql -c "CREATE TABLE docs_$side (id bigint PRIMARY KEY, tenant_id uuid NOT NULL, embedding ${TYPE[$side]}(128) NOT NULL)" \
            -c "CREATE TABLE bq_$side (qn int PRIMARY KEY, bucket text NOT NULL, rn int NOT NULL, tenant_id uuid NOT NULL,
                    v ${TYPE[$side]}(128) NOT NULL, UNIQUE (bucket, rn))"
        sql -c "COPY docs_$side FROM STDIN" <"$WORK/tenants/docs.tsv"
        sql -c "COPY bq_$side FROM STDIN" <"$WORK/tenants/queries.tsv"
        sql -c "VACUUM ANALYZE docs_$side, bq_$side"
    done
    t_small=$(sql -c "SELECT tenant_id FROM bq_${SIDES[0]} WHERE bucket = 'small' ORDER BY rn LIMIT 1")
    t_large=$(sql -c "SELECT tenant_id FROM bq_${SIDES[0]} WHERE bucket = 'large' ORDER BY rn LIMIT 1")
    if has_side sutra; then
        step "part tenants: building sutra_hnsw (tenant_id, embedding)"
        build_index docs_sutra_hnsw "CREATE INDEX docs_sutra_hnsw ON docs_sutra
            USING sutra_hnsw (tenant_id, embedding sutra.vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
        # Tenancy after the index: enable_tenancy adds its btree on the tenant column (the sutra_hnsw
        # index leads with it, but serves only ORDER BY searches). The tenants must exist for
        # set_tenant; the table's uuid column is kept as it is.
        sql -c "SELECT count(sutra.create_tenant('hnsw-' || n, plan => 'enterprise', id => tenant_id))
                FROM (SELECT tenant_id, row_number() OVER (ORDER BY tenant_id) n FROM (SELECT DISTINCT tenant_id FROM docs_sutra) d) t" \
            -c "SELECT sutra.enable_tenancy('docs_sutra')" \
            -c "CREATE ROLE $APP LOGIN NOBYPASSRLS IN ROLE sutra_service" \
            -c "GRANT SELECT ON docs_sutra, bq_sutra TO $APP" >/dev/null
        [ "$(sql -c "SELECT count(*) FROM pg_index WHERE indrelid = 'docs_sutra'::regclass")" = 3 ] ||
            fail "docs_sutra has other indexes than its key, sutra_hnsw and the tenant btree: $(sql -c "SELECT string_agg(indexrelid::regclass::text, ', ') FROM pg_index WHERE indrelid = 'docs_sutra'::regclass")"
        prewarm docs_sutra docs_sutra_hnsw bq_sutra
        q="SELECT id FROM docs_sutra WHERE tenant_id = \$1 ORDER BY embedding <=> (SELECT v FROM bq_sutra WHERE qn = \$2) LIMIT 10"
        require_generic_plan postgres "SELECT 1" docs_sutra_hnsw "$q" "uuid, int" "'$t_large', 1"
        q="SELECT id FROM docs_sutra ORDER BY embedding <=> (SELECT v FROM bq_sutra WHERE qn = \$1) LIMIT 10"
        require_generic_plan "$APP" "SELECT sutra.set_tenant('$t_small', session => true)" docs_sutra_hnsw "$q" int 1
    fi
    if has_side pgv; then
        step "part tenants: building pgvector hnsw (embedding)"
        build_index docs_pgv_hnsw "CREATE INDEX docs_pgv_hnsw ON docs_pgv
            USING hnsw (embedding public.vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
        prewarm docs_pgv docs_pgv_hnsw bq_pgv
        q="SELECT id FROM docs_pgv WHERE tenant_id = \$1 ORDER BY embedding <=> (SELECT v FROM bq_pgv WHERE qn = \$2) LIMIT 10"
        require_generic_plan postgres "SELECT 1" docs_pgv_hnsw "$q" "uuid, int" "'$t_small', 1"
    fi
    local setups=()
    if has_side sutra; then setups+=(1 2); fi
    if has_side pgv; then setups+=(3 4 5); fi
    for n in "${setups[@]}"; do
        if [ "$n" = 5 ]; then
            step "part tenants: building the btree (tenant_id) of setup 5"
            build_index docs_pgv_tenant "CREATE INDEX docs_pgv_tenant ON docs_pgv (tenant_id)"
            sql -c "ANALYZE docs_pgv"
            prewarm docs_pgv_tenant
        fi
        for ef in "${EFS[@]}"; do tenant_setup "$n" "$ef"; done
    done

    echo
    echo "HNSW, many tenants: $info;"
    echo "cosine, m = 16, ef_construction = 64; 1 pgbench client, -M prepared, ${SECS}s per run"
    printf 'build: sutra_hnsw (tenant_id, embedding) %s s, %s MB; pgvector hnsw %s s, %s MB (+ btree %s s, %s MB for setup 5)\n' \
        "$(fig build:docs_sutra_hnsw)" "$(fig size:docs_sutra_hnsw)" "$(fig build:docs_pgv_hnsw)" "$(fig size:docs_pgv_hnsw)" \
        "$(fig build:docs_pgv_tenant)" "$(fig size:docs_pgv_tenant)"
    for b in "${BUCKETS[@]}"; do
        case $b in small) echo "small tenants (< 100 rows):" ;; medium) echo "medium tenants (100 to 1000 rows):" ;;
            large) echo "large tenants (> 1000 rows):" ;; esac
        trow setup ef recall@10 worst short QPS "p50 ms" "p99 ms" "search ms" "plans (queries)"
        for ef in "${EFS[@]}"; do
            for n in "${setups[@]}"; do
                trow "${SETUP_LABEL[$n]}" "$ef" "$(fig "recall:$n:$ef:$b")" "$(fig "worst:$n:$ef:$b")" "$(fig "short:$n:$ef:$b")" \
                    "$(fig "qps:$n:$ef:$b")" "$(fig "p50:$n:$ef:$b")" "$(fig "p99:$n:$ef:$b")" "$(fig "search:$n:$ef:$b")" \
                    "$(fig "plans:$n:$ef:$b")"
            done
        done
        # The best pgvector setup of the bucket: the highest recall, then the highest QPS.
        if has_side pgv && has_side sutra; then
            for ef in "${EFS[@]}"; do
                best=$(for n in 3 4 5; do echo "$n ${R[recall:$n:$ef:$b]} ${R[qps:$n:$ef:$b]}"; done | sort -k2,2gr -k3,3gr | head -n1 | cut -d' ' -f1)
                for n in 1 2; do
                    printf '  %s / pgvector best %s, ef %s: recall %s, QPS %s, p99 latency %s\n' "${SETUP_SHORT[$n]}" \
                        "${SETUP_SHORT[$best]}" "$ef" "$(ratio "recall:$n:$ef:$b" "recall:$best:$ef:$b")" \
                        "$(ratio "qps:$n:$ef:$b" "qps:$best:$ef:$b")" "$(ratio "p99:$n:$ef:$b" "p99:$best:$ef:$b")"
                done
            done
        fi
    done
    echo "(recall@10 is the mean over the bucket's queries, worst its lowest query; short: queries returning fewer than"
    echo " min(10, tenant rows) rows; pgvector best: its setup with the highest recall, then QPS, at that ef_search;"
    echo " QPS, p50 and p99 are per transaction: it reads the query's tenant (setup 2: sets it as the session's"
    echo " context) then searches, 2 round trips in every setup; search ms: the search statement's mean alone)"
    echo "reproduce: bench/hnsw.sh tenants   (SUTRA_BENCH_INSTALLED=1: without building)"
}

# --- Part tiny: 50,000 tenants of 4 rows -----------------------------------------------------------
part_tiny() {
    local info side
    step "part tiny: generating the data"
    info=$(py gen-tiny "$WORK/tiny")
    for side in "${SIDES[@]}"; do
        sql -c "CREATE TABLE tiny_$side (id bigint PRIMARY KEY, tenant_id uuid NOT NULL, embedding ${TYPE[$side]}(128) NOT NULL)"
        sql -c "COPY tiny_$side FROM STDIN" <"$WORK/tiny/tiny.tsv"
        sql -c "VACUUM ANALYZE tiny_$side"
    done
    if has_side sutra; then
        step "part tiny: building sutra_hnsw (tenant_id, embedding)"
        build_index tiny_sutra_hnsw "CREATE INDEX tiny_sutra_hnsw ON tiny_sutra
            USING sutra_hnsw (tenant_id, embedding sutra.vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
        R[check:tiny]=$(sql -c "SELECT partitions || ' partitions, problems ' || cardinality(problems) FROM sutra.hnsw_check('tiny_sutra_hnsw')")
        # The same rows arriving one at a time, tenants interleaved, into an indexed table.
        step "part tiny: the same rows through inserts into an indexed table"
        sql -c "CREATE TABLE tiny_ins (LIKE tiny_sutra)" -c "CREATE INDEX tiny_ins_hnsw ON tiny_ins
            USING sutra_hnsw (tenant_id, embedding sutra.vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
        local t0 t1
        t0=$(now)
        sql -c "COPY tiny_ins FROM STDIN" <"$WORK/tiny/tiny.tsv"
        t1=$(now)
        R[build:tiny_ins_hnsw]=$(elapsed "$t0" "$t1")
        R[size:tiny_ins_hnsw]=$(sql -c "SELECT round(pg_relation_size('tiny_ins_hnsw') / 1048576.0, 1)")
        sql -c "DROP TABLE tiny_ins"
    fi
    if has_side pgv; then
        step "part tiny: building pgvector hnsw (embedding) and a btree (tenant_id)"
        build_index tiny_pgv_hnsw "CREATE INDEX tiny_pgv_hnsw ON tiny_pgv
            USING hnsw (embedding public.vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
        build_index tiny_pgv_btree "CREATE INDEX tiny_pgv_btree ON tiny_pgv (tenant_id)"
        R[size:tiny_pgv_both]=$(awk -v a="${R[size:tiny_pgv_hnsw]}" -v b="${R[size:tiny_pgv_btree]}" 'BEGIN {printf "%.1f", a + b}')
        R[build:tiny_pgv_both]=$(awk -v a="${R[build:tiny_pgv_hnsw]}" -v b="${R[build:tiny_pgv_btree]}" 'BEGIN {printf "%.1f", a + b}')
    fi
    echo
    echo "HNSW, many tiny tenants: $info; cosine, m = 16, ef_construction = 64"
    row "" "sutra_hnsw" "${LABEL[pgv]:-pgvector} + btree" "sutra/pgvector"
    row "index size, MB  (lower: better)" "$(fig size:tiny_sutra_hnsw)" "$(fig size:tiny_pgv_both)" \
        "$(ratio size:tiny_sutra_hnsw size:tiny_pgv_both)"
    row "build (CREATE INDEX), s  (lower: better)" "$(fig build:tiny_sutra_hnsw)" "$(fig build:tiny_pgv_both)" \
        "$(ratio build:tiny_sutra_hnsw build:tiny_pgv_both)"
    row "index size after row-by-row inserts, MB" "$(fig size:tiny_ins_hnsw)" "" \
        "$(ratio size:tiny_ins_hnsw size:tiny_pgv_both)"
    echo "(pgvector: hnsw $(fig size:tiny_pgv_hnsw) MB + btree $(fig size:tiny_pgv_btree) MB; sutra hnsw_check: $(fig check:tiny);"
    echo " the inserts: one COPY of the same rows, tenants interleaved, into the indexed table, $(fig build:tiny_ins_hnsw) s)"
    echo "reproduce: bench/hnsw.sh tiny   (SUTRA_BENCH_INSTALLED=1: without building)"
    for side in "${SIDES[@]}"; do sql -c "DROP TABLE tiny_$side"; done
}

case $PARTS in
    single) part_single 128 inserts; part_single 768 ;;
    single128) part_single 128 inserts ;;
    tenants) part_tenants ;;
    tiny) part_tiny ;;
    all) part_single 128 inserts; part_single 768; part_tenants; part_tiny ;;
esac
