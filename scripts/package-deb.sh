#!/usr/bin/env bash
# Builds a Debian package of sutra for the server pg_config names (Debian's postgresql-15 by
# default): target/debian/postgresql-15-sutra_<version>-1_<arch>.deb, with the library, the control
# file, the install script and the upgrade scripts. Install it with
#   apt install ./target/debian/postgresql-15-sutra_<version>-1_<arch>.deb
# then preload the library and restart (README, "Install into your own server").
# A release build unless --debug is given (faster to build; the tests package that one).
# Prints the package's path.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

build=()
case "${1:-}" in
--debug) build=(--debug) ;;
"") ;;
*)
    echo "usage: $0 [--debug]" >&2
    exit 2
    ;;
esac

setup_toolchain
version=$(awk -F'"' '/^version = "/ && !v {v = $2} END {print v}' Cargo.toml)
pg_major=$("$PG_CONFIG" --version | sed -nE 's/^PostgreSQL ([0-9]+).*/\1/p')
arch=$(dpkg --print-architecture)
name="postgresql-$pg_major-sutra"
root="$REPO/target/debian/root"
deb="$REPO/target/debian/${name}_${version}-1_${arch}.deb"

log "building the files of $name $version"
rm -rf "$root"
cargo pgrx package "${build[@]}" --pg-config "$PG_CONFIG" --out-dir "$root" >&2

# The packages of the shared libraries sutra's library links to, besides the server's.
so="$root$("$PG_CONFIG" --pkglibdir)/sutra.so"
depends="postgresql-$pg_major"
for lib in $(objdump -p "$so" | awk '$1 == "NEEDED" {print $2}'); do
    # awk reads to the end: stopping early would kill ldconfig with SIGPIPE, and pipefail the script.
    path=$(ldconfig -p | awk -v l="$lib" '!p && $1 == l && $NF ~ /^\// {p = $NF} END {print p}')
    [ -n "$path" ] || continue
    pkg=$({ dpkg -S "$path" || dpkg -S "$(readlink -f "$path")"; } 2>/dev/null | head -n1 | cut -d: -f1) || true
    [ -n "$pkg" ] && case ", $depends, " in *", $pkg, "*) ;; *) depends="$depends, $pkg" ;; esac
done

mkdir -p "$root/DEBIAN"
cat >"$root/DEBIAN/control" <<EOF
Package: $name
Version: $version-1
Architecture: $arch
Maintainer: sutra developers <sutra@invalid>
Depends: $depends
Section: database
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Description: multi-tenancy and tenant-aware vector search for PostgreSQL $pg_major
 sutra makes one PostgreSQL database a multi-tenant backend: the database
 guarantees that a tenant sees only its own rows, stays inside its quotas and
 rate limits, is metered for billing, and searches its own embeddings through
 an HNSW index that knows about tenants. Preload it with
 shared_preload_libraries = 'sutra', restart, and CREATE EXTENSION sutra.
EOF
dpkg-deb --root-owner-group --build "$root" "$deb" >&2
printf '%s\n' "$deb"
