#!/usr/bin/env bash
# Builds datastore and serves the default store (/var/lib/datastore, or
# $DATASTORE_STORE), creating it on first use with a password prompt.
# The FUSE mount is not built yet (issue #4): today this creates/opens the
# store, scrubs it and shows what protects it.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install the Rust toolchain (rustup) first" >&2; exit 1; }
cargo build --release --bin datastore
bin=target/release/datastore
store=${DATASTORE_STORE:-/var/lib/datastore}
if [ ! -e "$store/datastore.toml" ]; then
    "$bin" --store "$store" init
fi
"$bin" --store "$store" scrub
"$bin" --store "$store" encryption show
echo "datastore: mounting is not implemented yet (issue #4); the store at $store is ready." >&2
