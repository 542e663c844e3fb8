#!/usr/bin/env bash
# Runs every test suite of sutra: the code's form (rustfmt, clippy), Rust unit tests, #[pg_test]
# tests in a real PostgreSQL, SQL regression tests with expected output, and client tests through
# real drivers. Sets up what is missing first (see setup in lib.sh). Throwaway clusters live under
# target/ and are stopped on exit. Ends with a line "N passed, N failed" counting individual tests.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

setup_toolchain
ensure_python_env

RESULTS="$REPO/target/test-results"
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
PASSED=0
FAILED=0
SUITES_FAILED=()

count() { # count NAME PASSED FAILED
    PASSED=$((PASSED + $2))
    FAILED=$((FAILED + $3))
    printf '    %s: %d passed, %d failed\n' "$1" "$2" "$3" >&2
}

# Sums the "N passed; M failed" of cargo's test result lines in a log.
cargo_counts() {
    sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p' "$1" |
        awk '{p += $1; f += $2} END {print p + 0, f + 0}'
}

run_suite() { # run_suite NAME COMMAND...: runs, logs, and records a failure of the command
    local name=$1
    shift
    log "$name"
    if "$@" 2>&1 | tee "$RESULTS/$name.log"; then return 0; fi
    SUITES_FAILED+=("$name")
    return 1
}

# 0. The code's form: rustfmt (rustfmt.toml) and clippy with every warning an error.
lint_passed=0
lint_failed=0
for check in "fmt:cargo fmt --all --check" "clippy:cargo clippy --workspace --all-targets -- -D warnings"; do
    if run_suite "${check%%:*}" ${check#*:}; then
        lint_passed=$((lint_passed + 1))
    else
        lint_failed=$((lint_failed + 1))
    fi
done
count lint "$lint_passed" "$lint_failed"

# 1. Rust unit tests of the Postgres-free core.
run_suite unit cargo test -p sutra-core || true
read -r p f < <(cargo_counts "$RESULTS/unit.log")
count unit "$p" "$f"

# 2. #[pg_test] tests: pgrx starts its own cluster, with sutra preloaded.
PGRX_ARGS=()
PGWORK=$(pg_workdir)
if is_root; then
    mkdir -p "$PGWORK/pgrx-test-data"
    chown postgres: "$PGWORK/pgrx-test-data"
    PGRX_ARGS=(--runas postgres --pgdata "$PGWORK/pgrx-test-data")
fi
run_suite pg_test cargo pgrx test pg15 "${PGRX_ARGS[@]}" || true
read -r p f < <(cargo_counts "$RESULTS/pg_test.log")
count pg_test "$p" "$f"

# 3. and 4. run against throwaway clusters of the installed extension (no test functions in it).
install_extension
CLUSTER="$PGWORK/test-cluster"
PLAIN="$PGWORK/test-cluster-nopreload"
PORT=54615
PLAIN_PORT=54616
trap 'cluster_stop "$CLUSTER" || true; cluster_stop "$PLAIN" || true' EXIT
log "starting throwaway clusters"
cluster_start "$CLUSTER" "$PORT"
cluster_start "$PLAIN" "$PLAIN_PORT" "shared_preload_libraries = ''"

# 3. SQL regression tests with expected output.
REGRESS_DIR="$REPO/pgrx-tests/regress"
PG_REGRESS="$(dirname "$("$PG_CONFIG" --pgxs)")/../test/regress/pg_regress"
mkdir -p "$RESULTS/regress"
run_suite regress "$PG_REGRESS" --host="$CLUSTER" --port="$PORT" --user=postgres \
    --inputdir="$REGRESS_DIR" --outputdir="$RESULTS/regress" --dbname=sutra_regress \
    --load-extension=sutra --schedule="$REGRESS_DIR/schedule" || true
p=$(grep -cE '\.\.\. ok( |$)' "$RESULTS/regress.log" || true)
f=$(grep -cE '\.\.\. FAILED' "$RESULTS/regress.log" || true)
[ -f "$RESULTS/regress/regression.diffs" ] && cat "$RESULTS/regress/regression.diffs" >&2
count regress "$p" "$f"

# 4. Client tests through real drivers. test_upgrade.py starts a cluster with the previous release
# (built from its git tag, once; kept beside the throwaway clusters) and upgrades it to this build.
release=${UPGRADE_FROM[0]}
if from_bin=$(release_tree "${release%%:*}" "${release#*:}" "$PGWORK/upgrade/sutra-${release%%:*}"); then
    export SUTRA_UPGRADE_FROM_BIN="$from_bin" SUTRA_UPGRADE_FROM_VERSION="${release%%:*}"
else
    SUTRA_UPGRADE_FROM_BIN=
    SUTRA_UPGRADE_FROM_VERSION=
    SUITES_FAILED+=("building sutra ${release%%:*} for the upgrade test")
fi
as_pg "$PG_BIN/psql" -X -q -h "$CLUSTER" -p "$PORT" -U postgres -d postgres \
    -c "CREATE DATABASE sutra_client" -c "\\c sutra_client" -c "CREATE EXTENSION sutra" >/dev/null
export SUTRA_TEST_HOST="$CLUSTER" SUTRA_TEST_PORT="$PORT"
export SUTRA_NOPRELOAD_HOST="$PLAIN" SUTRA_NOPRELOAD_PORT="$PLAIN_PORT"
run_suite client "$PYTHON" -m pytest -q -p no:cacheprovider "$REPO/pgrx-tests/client" || true
# pytest's last line sums up: "8 passed, 1 failed, 2 errors in 0.5s".
summary=$(tail -n 1 "$RESULTS/client.log")
pytest_count() { # pytest_count WORD_REGEX: the sum of the numbers before the matching words
    awk -v w="$1" '{for (i = 1; i < NF; i++) if ($(i + 1) ~ "^(" w "),?$") s += $i} END {print s + 0}' <<<"$summary"
}
p=$(pytest_count passed)
f=$(pytest_count 'failed|errors?')
count client "$p" "$f"

# A server that does not stop fails the run (and is killed, so none is left running).
log "stopping throwaway clusters"
for dir in "$CLUSTER" "$PLAIN"; do
    cluster_stop "$dir" || SUITES_FAILED+=("stop of $(basename "$dir")")
done

# 5. sutra on a Citus cluster, when Citus is installed (built by hand: docs/citus.md); otherwise
# the script says it skipped.
run_suite citus env SUTRA_CITUS_INSTALLED=1 bash "$REPO/scripts/citus-test.sh" || true
p=0
f=1
read -r p f < <(sed -nE 's/^([0-9]+) passed, ([0-9]+) failed$/\1 \2/p' "$RESULTS/citus.log" | tail -n 1) || true
count citus "$p" "$f"

# 6. The Debian package: built, installed with apt, the SQL tour on a fresh cluster (package-test.sh).
if run_suite package bash scripts/package-test.sh && grep -qx 'package: ok' "$RESULTS/package.log"; then
    count package 1 0
else
    count package 0 1
fi

if [ ${#SUITES_FAILED[@]} -gt 0 ]; then
    echo "failed suites: ${SUITES_FAILED[*]}" >&2
    # A suite that failed without a failing test (a build error, a crash) still fails the run.
    [ "$FAILED" -gt 0 ] || FAILED=1
fi
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
