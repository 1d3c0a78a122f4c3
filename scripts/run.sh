#!/usr/bin/env bash
# Builds datastore and mounts the default store (/var/lib/datastore, or
# $DATASTORE_STORE) at /mnt/datastore (or the first argument), creating the
# store on first use with a password prompt. Installs fuse3 when missing,
# and cmake and Go, which the built-in FIPS module (AWS-LC) builds with.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install the Rust toolchain (rustup) first" >&2; exit 1; }
need_pkgs=()
command -v fusermount3 >/dev/null 2>&1 || need_pkgs+=(fuse3)
command -v cmake >/dev/null 2>&1 || need_pkgs+=(cmake)
command -v go >/dev/null 2>&1 || need_pkgs+=(golang-go)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "==> installing ${need_pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
cargo build --release --bin datastore
install -m 0755 target/release/datastore /usr/local/bin/datastore
mountpoint=${1:-/mnt/datastore}
mkdir -p "$mountpoint"
exec datastore mount "$mountpoint"
