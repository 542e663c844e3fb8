#!/usr/bin/env bash
# Sets up everything sutra needs (system packages, cargo-pgrx, pgrx's configuration), builds and
# installs the extension (release build), then runs a short SQL tour on a throwaway cluster under
# target/ (not the system's cluster; see pg_workdir in lib.sh) and stops it again. Safe to run again; fast once set up.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

setup_toolchain
install_extension --release

CLUSTER="$(pg_workdir)/demo-cluster"
PORT=54625
trap 'cluster_stop "$CLUSTER"' EXIT
log "starting a throwaway cluster in $CLUSTER (port $PORT)"
cluster_start "$CLUSTER" "$PORT"

log "the tour (scripts/demo.sql)"
as_pg "$PG_BIN/psql" -X -h "$CLUSTER" -p "$PORT" -U postgres -d postgres \
    -v ON_ERROR_STOP=1 --echo-queries -f - <"$REPO/scripts/demo.sql"
log "done; the cluster is stopped"
