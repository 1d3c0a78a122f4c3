#!/usr/bin/env bash
# Benchmarks. Today: `scripts/bench.sh engine` runs the chunk engine's
# benchmark (1 GiB per workload; DATASTORE_BENCH_MIB changes it, and
# DATASTORE_BENCH_DIR puts the store elsewhere, e.g. /dev/shm to take the
# disk out of the measurement).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-engine}
case "$what" in
    engine) cargo bench --bench engine ;;
    *) echo "usage: scripts/bench.sh engine" >&2; exit 2 ;;
esac
