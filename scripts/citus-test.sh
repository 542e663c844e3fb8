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

if ! citus_installed; then
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
CITUS_NODES=()
trap 'citus_cluster_stop || true' EXIT
log "starting a Citus coordinator and two workers"
citus_cluster_start "$WORK" 54660 "citus.shard_count = 8"

export SUTRA_CITUS_HOSTS="${CITUS_NODES[0]},${CITUS_NODES[1]},${CITUS_NODES[2]}"
export SUTRA_CITUS_PORTS="${CITUS_PORTS[0]},${CITUS_PORTS[1]},${CITUS_PORTS[2]}"
status=0
"$PYTHON" -m pytest -q -p no:cacheprovider "$REPO/pgrx-tests/citus" "$@" | tee "$WORK/pytest.log" || status=1
trap - EXIT
citus_cluster_stop || status=1
summary=$(tail -n 1 "$WORK/pytest.log")
p=$(awk '{for (i = 1; i < NF; i++) if ($(i + 1) ~ /^passed,?$/) s += $i} END {print s + 0}' <<<"$summary")
f=$(awk '{for (i = 1; i < NF; i++) if ($(i + 1) ~ /^(failed|errors?),?$/) s += $i} END {print s + 0}' <<<"$summary")
echo "$p passed, $f failed"
exit $status
