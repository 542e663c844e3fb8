#!/usr/bin/env bash
# Client tests of sutra on a Citus cluster: a coordinator and two workers, throwaway clusters
# under target/citus, each with shared_preload_libraries = 'citus,sutra' and one
# sutra.context_secret. Runs pgrx-tests/citus through the coordinator and directly on the
# workers. Needs Citus 13 installed in the system PostgreSQL (built by hand: docs/citus.md); without
# it, says so and exits 0. Ends with a line "N passed, N failed".
#
# SUTRA_CITUS_INSTALLED=1: the sutra already installed is the one to test (scripts/test.sh, which
# has just installed it, sets it); otherwise this script builds and installs it first.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

if [ ! -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ]; then
    echo "citus-test: skipped: Citus is not installed in $("$PG_CONFIG" --pkglibdir) (docs/citus.md says how to build it)"
    echo "0 passed, 0 failed"
    exit 0
fi

if [ -z "${SUTRA_CITUS_INSTALLED:-}" ]; then
    setup_toolchain
    install_extension
fi
ensure_python_env

WORK="$(pg_workdir)/citus"
mkdir -p "$WORK"
is_root && chown postgres: "$WORK"
SECRET="citus-test-context-secret-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
CONF=(
    "shared_preload_libraries = 'citus,sutra'"
    "sutra.context_secret = '$SECRET'"
    "wal_level = logical"
    "max_prepared_transactions = 50"
    "citus.shard_count = 8"
)
NODES=(coordinator worker1 worker2)
PORTS=(54660 54661 54662)
stop_all() {
    local failed=0
    for n in "${NODES[@]}"; do cluster_stop "$WORK/$n" || failed=1; done
    return $failed
}
trap 'stop_all || true' EXIT

log "starting a Citus coordinator and two workers"
for i in 0 1 2; do
    # citus.local_hostname: how a node reaches itself (shard splits), here its socket directory.
    cluster_start "$WORK/${NODES[$i]}" "${PORTS[$i]}" "${CONF[@]}" "citus.local_hostname = '$WORK/${NODES[$i]}'"
    as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK/${NODES[$i]}" -p "${PORTS[$i]}" -U postgres -d postgres \
        -c "CREATE DATABASE app" -c "\\c app" -c "SET client_min_messages = warning" -c "CREATE EXTENSION citus" >/dev/null
done
as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK/coordinator" -p "${PORTS[0]}" -U postgres -d app \
    -c "SELECT citus_set_coordinator_host('$WORK/coordinator', ${PORTS[0]})" \
    -c "SELECT citus_add_node('$WORK/worker1', ${PORTS[1]})" \
    -c "SELECT citus_add_node('$WORK/worker2', ${PORTS[2]})" >/dev/null

export SUTRA_CITUS_HOSTS="$WORK/coordinator,$WORK/worker1,$WORK/worker2"
export SUTRA_CITUS_PORTS="${PORTS[0]},${PORTS[1]},${PORTS[2]}"
status=0
"$PYTHON" -m pytest -q -p no:cacheprovider "$REPO/pgrx-tests/citus" "$@" | tee "$WORK/pytest.log" || status=1
trap - EXIT
stop_all || status=1
summary=$(tail -n 1 "$WORK/pytest.log")
p=$(awk '{for (i = 1; i < NF; i++) if ($(i + 1) ~ /^passed,?$/) s += $i} END {print s + 0}' <<<"$summary")
f=$(awk '{for (i = 1; i < NF; i++) if ($(i + 1) ~ /^(failed|errors?),?$/) s += $i} END {print s + 0}' <<<"$summary")
echo "$p passed, $f failed"
exit $status
