#!/usr/bin/env bash
# The Debian package as a user installs it: built by package-deb.sh (a debug build: faster, and
# packaged the same way), installed with apt into the system's PostgreSQL, and the SQL tour
# (scripts/demo.sql) run on a fresh throwaway cluster. Then the package is removed and the
# development build installed again, so the machine ends as it began. Needs root or sudo.
# scripts/test.sh runs it; it prints "package: ok" when everything passed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

deb=$(bash scripts/package-deb.sh --debug | tail -n1)
pkg=$(dpkg-deb -f "$deb" Package)
CLUSTER="$(pg_workdir)/package-cluster"
PORT=54617
cleanup() {
    cluster_stop "$CLUSTER" || true
    log "removing $pkg and installing the development build again"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq "$pkg" >/dev/null || true
    install_extension >/dev/null 2>&1
}
trap cleanup EXIT

log "apt install $deb"
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall "$deb" >/dev/null
dpkg-query -W -f='${Status} ${Version}\n' "$pkg" | grep -q '^install ok installed '
# The server loads the packaged library, and finds the packaged install and upgrade scripts.
lib="$("$PG_CONFIG" --pkglibdir)/sutra.so"
[ "$(dpkg -S "$lib" | cut -d: -f1)" = "$pkg" ]
dpkg-deb --fsys-tarfile "$deb" | tar -xO ".$lib" | cmp - "$lib"
for f in sutra.control "sutra--$(dpkg-deb -f "$deb" Version | sed 's/-[^-]*$//').sql"; do
    dpkg -L "$pkg" | grep -qx "$("$PG_CONFIG" --sharedir)/extension/$f"
done
dpkg -L "$pkg" | grep -q '/extension/sutra--.*--.*\.sql$'

log "the SQL tour on a fresh cluster"
cluster_start "$CLUSTER" "$PORT"
as_pg "$PG_BIN/psql" -X -q -h "$CLUSTER" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -f - <scripts/demo.sql >"$REPO/target/debian/tour.log" 2>&1 || {
    tail -n 20 "$REPO/target/debian/tour.log" >&2
    exit 1
}
echo "package: ok"
