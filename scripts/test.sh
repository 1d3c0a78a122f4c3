#!/usr/bin/env bash
# The whole test suite, from a clean clone, as root on Debian.
# Installs what the tests need (gdb for the core-dump test, cmake and Go for
# the FIPS module, pjdfstest, s3s-fs and Garage as S3 servers, chromium for the
# dashboard test, PostgreSQL for the database-on-the-mount test), then runs formatting, clippy, and every test of the
# workspace, with default features and again without them (no FIPS module).
# scripts/check_structure.py fails the run on an import up the layer map
# (docs/DESIGN.md), redb outside src/meta, Result<_, String>, or a function
# over 80 lines outside tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v gcore >/dev/null 2>&1 || need_pkgs+=(gdb)
command -v fusermount3 >/dev/null 2>&1 || need_pkgs+=(fuse3)
dpkg -s libacl1-dev >/dev/null 2>&1 || need_pkgs+=(libacl1-dev acl)
[ -e /usr/src/linux-source-6.1.tar.xz ] || need_pkgs+=(linux-source-6.1)
command -v cmake >/dev/null 2>&1 || need_pkgs+=(cmake)
command -v go >/dev/null 2>&1 || need_pkgs+=(golang-go)
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)
[ -x /usr/lib/postgresql/15/bin/postgres ] || need_pkgs+=(postgresql)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "==> installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install the Rust toolchain (rustup) first" >&2; exit 1; }
if [ "$(id -u)" -ne 0 ]; then
    echo "the tests need root (FUSE mounts, mlock of key memory, gcore of a child process)" >&2
    exit 1
fi
[ -e /dev/fuse ] || { echo "/dev/fuse is missing: the mount tests need FUSE" >&2; exit 1; }
if ! command -v pjdfstest >/dev/null 2>&1; then
    echo "==> cargo install pjdfstest"
    cargo install pjdfstest --version 0.2.2
fi
# The remote tests run real S3-compatible servers on loopback: s3s-fs, and
# Garage for the compatibility test (Garage takes ~10 minutes to build once).
if ! command -v s3s-fs >/dev/null 2>&1; then
    echo "==> cargo install s3s-fs (S3 server for the remote tests)"
    cargo install s3s-fs --version 0.14.1 --features binary --locked
fi
if ! command -v garage >/dev/null 2>&1; then
    echo "==> cargo install garage (Garage compatibility test)"
    cargo install garage --version 2.5.0 --locked
fi
# pjdfstest switches to the users nobody and tests.
id tests >/dev/null 2>&1 || echo "tests:x:1001:1001::/nonexistent:/usr/sbin/nologin" | newusers

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> structure (layers, redb only in meta, typed errors, function length)"
python3 scripts/check_structure.py
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --profile ci -- -D warnings
cargo clippy --workspace --all-targets --profile ci --no-default-features -- -D warnings
echo "==> cargo test (profile ci: optimised, overflow checks on)"
cargo test --workspace --profile ci
echo "==> cargo test --no-default-features (a build without the FIPS module)"
cargo test --workspace --profile ci --no-default-features --lib --test fips --test cli
