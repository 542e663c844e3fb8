# Helpers shared by sutra's scripts: toolchain setup and throwaway PostgreSQL clusters.
# Source it; it sets REPO, PG_CONFIG, PG_BIN and PGRX_VERSION.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PG_BIN=$(dirname "$PG_CONFIG")
PGRX_VERSION=$(sed -nE 's/^pgrx = "=?([0-9.]+)"/\1/p' "$REPO/Cargo.toml" | head -n1)
APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 libclang-dev clang pkg-config sudo pgbouncer)

log() { printf '\n==> %s\n' "$*" >&2; }

is_root() { [ "$(id -u)" = 0 ]; }

# Runs a command as root (directly when we are root).
as_root() { if is_root; then "$@"; else sudo "$@"; fi; }

# Runs a PostgreSQL server command: as the postgres OS user when we are root (initdb and
# pg_ctl refuse root), as ourselves otherwise.
as_pg() { if is_root; then runuser -u postgres -- "$@"; else "$@"; fi; }

ensure_packages() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        as_root apt-get update -qq
        # The server and its headers are installed together so that they stay on one minor version.
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${APT_PACKAGES[@]}" >/dev/null
    fi
}

ensure_cargo_pgrx() {
    if [ "$(cargo pgrx --version 2>/dev/null)" != "cargo-pgrx $PGRX_VERSION" ]; then
        log "installing cargo-pgrx $PGRX_VERSION (a few minutes, once)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
    fi
    local config="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
    if ! grep -qs "^pg15 = \"$PG_CONFIG\"" "$config"; then
        log "cargo pgrx init against $PG_CONFIG"
        cargo pgrx init --pg15 "$PG_CONFIG"
    fi
}

# rustfmt and clippy, which the tests run to keep the code's form.
ensure_rust_components() {
    local missing=()
    cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
    cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing the Rust components ${missing[*]}"
        rustup component add "${missing[@]}"
    fi
}

# Everything a build needs: system packages, cargo-pgrx, pgrx's configuration.
setup_toolchain() {
    ensure_packages
    ensure_cargo_pgrx
    ensure_rust_components
}

# Builds and installs the extension into the system PostgreSQL (extra args: e.g. --release).
install_extension() {
    log "building and installing sutra $*"
    local sudo_flag=()
    is_root || sudo_flag=(--sudo)
    (cd "$REPO" && cargo pgrx install --pg-config "$PG_CONFIG" "${sudo_flag[@]}" "$@")
}

# The releases an upgrade starts from: version and the commit of its git tag (v<version>). The
# commit is named too, so that a clone without tags still finds it.
UPGRADE_FROM=(0.1.0:69b948283c1a9ae7ed32142e07ed44ac00304823)

# release_tree VERSION COMMIT DIR: PostgreSQL with sutra VERSION, built from COMMIT, in DIR: a
# copy of the system's server programs, libraries and share directory (PostgreSQL finds its
# libraries and extensions relative to its programs) with that release's library, control file
# and install script in place of the current ones. Prints the tree's bin directory. Starting a
# data directory with it, then with $PG_BIN, is what swapping the library of a server does.
release_tree() {
    local version=$1 commit=$2 dir=$3
    if ! git -C "$REPO" rev-parse -q --verify "$commit^{commit}" >/dev/null; then
        echo "error: sutra $version (commit $commit, tag v$version) is not in this clone's history;" \
            "an upgrade test needs a full clone (git fetch --unshallow --tags)" >&2
        return 1
    fi
    local bindir pkglibdir sharedir
    bindir=$("$PG_CONFIG" --bindir)
    pkglibdir=$("$PG_CONFIG" --pkglibdir)
    sharedir=$("$PG_CONFIG" --sharedir)
    if [ ! -f "$dir/.complete" ]; then
        log "building sutra $version from $commit into $dir"
        rm -rf "$dir"
        mkdir -p "$dir/src"
        git -C "$REPO" archive "$commit" | tar -x -C "$dir/src"
        # The release's own install script and library, built against the same server headers
        # and in the same target directory, so that dependencies are not built twice. The library
        # and the schema generator have the same file names in every version: removed before and
        # after, so that neither build takes the other's for its own.
        local outputs=("$REPO"/target/debug/{,deps/}libsutra.so "$REPO"/target/debug/pgrx_embed_sutra)
        rm -f "${outputs[@]}"
        (cd "$dir/src" && CARGO_TARGET_DIR="$REPO/target" cargo pgrx package --debug \
            --pg-config "$PG_CONFIG" --out-dir "$dir/pkg" >"$dir/build.log" 2>&1) || {
            tail -n 30 "$dir/build.log" >&2
            return 1
        }
        rm -f "${outputs[@]}"
        for d in "$bindir" "$pkglibdir" "$sharedir"; do
            mkdir -p "$dir/root$(dirname "$d")"
            cp -a "$d" "$dir/root$d"
        done
        rm -rf "$dir/root$pkglibdir/bitcode" "$dir/root$pkglibdir"/sutra.so "$dir/root$sharedir"/extension/sutra[.-]*
        cp -a "$dir/pkg/." "$dir/root/"
        rm -rf "$dir/src" "$dir/pkg"
        touch "$dir/.complete"
    fi
    printf '%s\n' "$dir/root$bindir"
}

# Where throwaway clusters keep their data: target/ under the repository, or, when the postgres OS
# user cannot reach it (a clone inside a private home directory), a directory under /tmp.
pg_workdir() {
    local dir="$REPO/target"
    mkdir -p "$dir"
    if is_root && ! runuser -u postgres -- test -x "$dir"; then
        dir="/tmp/sutra-$(printf '%s' "$REPO" | md5sum | cut -c1-12)"
        mkdir -p "$dir"
        chmod 755 "$dir"
    fi
    printf '%s\n' "$dir"
}

# cluster_start DIR PORT [CONF_LINE...]: a new cluster in DIR, listening on a socket in DIR only,
# with sutra preloaded unless a CONF_LINE sets shared_preload_libraries itself.
cluster_start() {
    local dir=$1 port=$2
    shift 2
    cluster_stop "$dir" || true
    rm -rf "$dir"
    mkdir -p "$dir"
    is_root && chown postgres: "$dir"
    as_pg "$PG_BIN/initdb" -D "$dir" -A trust -U postgres --no-sync -E UTF8 --locale=C >"$dir.initdb.log" 2>&1
    {
        echo "port = $port"
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$dir'"
        echo "fsync = off"
        if ! printf '%s\n' "$@" | grep -q '^shared_preload_libraries'; then
            echo "shared_preload_libraries = 'sutra'"
        fi
        printf '%s\n' "$@"
    } >>"$dir/postgresql.conf"
    # Without RUST_BACKTRACE the server reports errors without a Rust backtrace in DETAIL, so
    # expected test output does not depend on the caller's environment.
    as_pg env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null
}

# cluster_stop DIR: a fast stop of the cluster in DIR (if it runs). A server that does not stop
# within 60 s is reported, killed (immediate stop) so that nothing is left running, and the call
# fails: callers count it as a failure.
cluster_stop() {
    local dir=$1
    [ -f "$dir/postmaster.pid" ] || return 0
    if as_pg "$PG_BIN/pg_ctl" -D "$dir" -m fast -t 60 -w stop >/dev/null 2>&1; then
        return 0
    fi
    echo "error: the cluster in $dir did not stop within 60 s (pg_ctl stop -m fast); processes left:" >&2
    pgrep -a -f -- "$dir" >&2 || true
    pgrep -a -u postgres -f 'postgres: ' >&2 || true
    as_pg "$PG_BIN/pg_ctl" -D "$dir" -m immediate -w stop >/dev/null 2>&1 || true
    return 1
}

# citus_installed: whether Citus is installed in the system PostgreSQL (built by hand: docs/citus.md).
citus_installed() { [ -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ]; }

# citus_cluster_start DIR PORT [CONF_LINE...]: a Citus cluster of throwaway clusters under DIR, a
# coordinator on PORT and two workers on PORT+1 and PORT+2, each with 'citus,sutra' preloaded, one
# random sutra.context_secret, the CONF_LINEs, a database app with Citus in it, and the workers
# added. Sets CITUS_NODES (their directories, coordinator first) and CITUS_PORTS.
citus_cluster_start() {
    local dir=$1 port=$2
    shift 2
    local secret i
    secret="sutra-cluster-secret-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    CITUS_NODES=("$dir/coordinator" "$dir/worker1" "$dir/worker2")
    CITUS_PORTS=("$port" $((port + 1)) $((port + 2)))
    mkdir -p "$dir"
    is_root && chown postgres: "$dir"
    for i in 0 1 2; do
        # citus.local_hostname: how a node reaches itself (shard splits): its socket directory.
        cluster_start "${CITUS_NODES[$i]}" "${CITUS_PORTS[$i]}" "shared_preload_libraries = 'citus,sutra'" \
            "sutra.context_secret = '$secret'" "wal_level = logical" "max_prepared_transactions = 50" \
            "citus.local_hostname = '${CITUS_NODES[$i]}'" "$@"
        as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "${CITUS_NODES[$i]}" -p "${CITUS_PORTS[$i]}" -U postgres \
            -d postgres -c "CREATE DATABASE app" -c "\\c app" -c "SET client_min_messages = warning" \
            -c "CREATE EXTENSION citus" >/dev/null
    done
    as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "${CITUS_NODES[0]}" -p "$port" -U postgres -d app \
        -c "SELECT citus_set_coordinator_host('${CITUS_NODES[0]}', $port)" \
        -c "SELECT citus_add_node('${CITUS_NODES[1]}', ${CITUS_PORTS[1]})" \
        -c "SELECT citus_add_node('${CITUS_NODES[2]}', ${CITUS_PORTS[2]})" >/dev/null
}

# citus_cluster_stop: stops the nodes citus_cluster_start started; fails if one did not stop.
citus_cluster_stop() {
    local failed=0 n
    for n in "${CITUS_NODES[@]}"; do cluster_stop "$n" || failed=1; done
    return $failed
}

# bench_cluster NAME PORT [CONF_LINE...]: the cluster a benchmark runs on. With SUTRA_BENCH_HOST
# and SUTRA_BENCH_PORT set, that running cluster (sutra installed and preloaded): nothing is built
# or started. Otherwise the release build is installed first (unless SUTRA_BENCH_INSTALLED=1:
# the sutra already installed) and a throwaway cluster is started in target/NAME on PORT with the
# CONF_LINEs; bench_stop stops it. Sets HOST, PORT, BENCH_THROWAWAY (1 for a throwaway cluster,
# empty otherwise) and client, which runs a PostgreSQL client program as whoever can reach the
# cluster's socket.
bench_cluster() {
    local name=$1 port=$2
    shift 2
    if [ -n "${SUTRA_BENCH_HOST:-}" ]; then
        HOST=$SUTRA_BENCH_HOST
        PORT=${SUTRA_BENCH_PORT:?SUTRA_BENCH_PORT must name the port of SUTRA_BENCH_HOST}
        BENCH_THROWAWAY=
        client() { "$@"; }
        return
    fi
    if [ -z "${SUTRA_BENCH_INSTALLED:-}" ]; then
        setup_toolchain
        install_extension --release >/dev/null 2>&1
    fi
    HOST="$(pg_workdir)/$name"
    PORT=$port
    BENCH_THROWAWAY=1
    client() { as_pg "$@"; }
    cluster_start "$HOST" "$PORT" "$@"
}

# Stops the benchmark's throwaway cluster (a running cluster it was given is left alone).
bench_stop() { if [ -n "${BENCH_THROWAWAY:-}" ]; then cluster_stop "$HOST"; fi; }

# bench_cleanup_at_exit DB ROLE DIR: at exit, drops the benchmark's database and role from a
# running cluster it was given (a throwaway one is stopped instead) and removes the directory DIR.
bench_cleanup_at_exit() {
    BENCH_CLEANUP=("$@")
    trap bench_cleanup EXIT
}
bench_cleanup() {
    local db=${BENCH_CLEANUP[0]} role=${BENCH_CLEANUP[1]} dir=${BENCH_CLEANUP[2]}
    if [ -n "${HOST:-}" ] && [ -z "${BENCH_THROWAWAY:-}" ]; then
        "$PG_BIN/psql" -X -q -h "$HOST" -p "$PORT" -U postgres -d postgres -c "SET client_min_messages = warning" \
            -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "DROP ROLE IF EXISTS $role" >/dev/null 2>&1 || true
    fi
    bench_stop
    rm -rf "$dir"
}

# tenant_tx_script FILE: the pgbench script of a pooled application's transaction over 1,000
# tenants (uuid 00000000-0000-4000-8000-<n>) of 100 rows each in table notes (id (n - 1) * 100 + i):
# a context for a random tenant, then one of its rows by id.
tenant_tx_script() {
    cat >"$1" <<'SQL'
\set n random(1, 1000)
\set i random(1, 100)
BEGIN;
SELECT sutra.set_tenant(('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid);
SELECT body FROM notes WHERE id = (:n - 1) * 100 + :i;
COMMIT;
SQL
    chmod 644 "$1"
}

# stmt_ms OUTPUT MARKER: pgbench's (-r) mean latency in ms of the statement whose text has MARKER.
stmt_ms() { awk -v m="$2" 'index($0, m) && $1 ~ /^[0-9.]+$/ {print $1; exit}' <<<"$1"; }

# The median of the numbers on standard input, one per line.
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

# A Python virtualenv under target/ with the client libraries the client tests use.
ensure_python_env() {
    local venv="$REPO/target/venv"
    local stamp="$venv/.requirements"
    if ! cmp -s "$REPO/pgrx-tests/client/requirements.txt" "$stamp" 2>/dev/null; then
        log "preparing the Python client environment"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check -r "$REPO/pgrx-tests/client/requirements.txt"
        cp "$REPO/pgrx-tests/client/requirements.txt" "$stamp"
    fi
    PYTHON="$venv/bin/python"
}
