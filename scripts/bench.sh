#!/usr/bin/env bash
# Benchmarks.
#   scripts/bench.sh engine        the chunk engine alone (1 GiB per workload;
#                                  DATASTORE_BENCH_MIB, DATASTORE_BENCH_DIR)
#   scripts/bench.sh fio [SIZE]    fio on a datastore mount vs a bindfs
#                                  passthrough of the same disk (SIZE default 4g):
#                                  sequential write (1 MiB, unique data,
#                                  end_fsync), cold sequential read, 4 KiB
#                                  random read and write (2 jobs, iodepth 1)
# Scratch lives in $BENCH_DIR (default /var/tmp/datastore-bench) and is
# removed, and everything mounted is unmounted, even on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-engine}

need() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

fio_run() { # name dir rw bs size extra...
    local name=$1 dir=$2 rw=$3 bs=$4 size=$5; shift 5
    fio --name="$name" --directory="$dir" --rw="$rw" --bs="$bs" --size="$size" \
        --ioengine=psync --fallocate=none --output-format=json "$@" 2>/dev/null
}

bw_mbs() { python3 -c 'import json,sys; j=json.load(sys.stdin); t=j["jobs"]; r=sum(x["read"]["bw_bytes"] for x in t); w=sum(x["write"]["bw_bytes"] for x in t); print(round((r+w)/1e6,1))'; }
iops() { python3 -c 'import json,sys; j=json.load(sys.stdin); t=j["jobs"]; print(round(sum(x["read"]["iops"]+x["write"]["iops"] for x in t)))'; }

case "$what" in
    engine)
        cargo bench --bench engine
        ;;
    fio)
        size=${2:-4g}
        need fio bindfs fuse3
        cargo build --release --bin datastore
        bin=$PWD/target/release/datastore
        base=${BENCH_DIR:-/var/tmp/datastore-bench}
        rm -rf "$base"; mkdir -p "$base"/{raw,bindfs,mnt}
        export DATASTORE_STORE=$base/store DATASTORE_BOOT_KEY_DIR=$base/boot DATASTORE_KDF_TARGET_MS=200
        cleanup() {
            "$bin" unmount "$base/mnt" >/dev/null 2>&1 || umount -l "$base/mnt" 2>/dev/null || true
            umount "$base/bindfs" 2>/dev/null || true
            rm -rf "$base"
        }
        trap cleanup EXIT
        echo "bench password 1234567" > "$base/pw"
        "$bin" init --password-file "$base/pw" >/dev/null
        "$bin" mount "$base/mnt" --password-file "$base/pw" >/dev/null
        bindfs "$base/raw" "$base/bindfs"
        declare -A res
        for target in datastore bindfs; do
            dir=$base/mnt; [ $target = bindfs ] && dir=$base/bindfs
            res[$target,seqwrite]=$(fio_run seqw "$dir" write 1m "$size" --end_fsync=1 --refill_buffers=1 | bw_mbs)
            sync; echo 3 > /proc/sys/vm/drop_caches
            res[$target,seqread]=$(fio_run seqr "$dir" read 1m "$size" | bw_mbs)
            rm -f "$dir"/seq*
            res[$target,randwrite]=$(fio_run randw "$dir" randwrite 4k 256m --numjobs=2 --time_based=1 --runtime=20 --refill_buffers=1 | iops)
            res[$target,randread]=$(fio_run randr "$dir" randread 4k 256m --numjobs=2 --time_based=1 --runtime=20 | iops)
            rm -f "$dir"/rand*
        done
        peak=$(grep VmHWM /proc/$(pgrep -f "mount $base/mnt --foreground" | head -1)/status | awk '{print $2/1024 " MiB"}')
        echo
        echo "| fio ($size) | datastore | bindfs | ratio |"
        echo "|---|---|---|---|"
        for k in seqwrite seqread; do
            echo "| $k MB/s | ${res[datastore,$k]} | ${res[bindfs,$k]} | $(python3 -c "print(round(${res[datastore,$k]}/${res[bindfs,$k]},2))") |"
        done
        for k in randwrite randread; do
            echo "| $k 4k IOPS | ${res[datastore,$k]} | ${res[bindfs,$k]} | $(python3 -c "print(round(${res[datastore,$k]}/max(1,${res[bindfs,$k]}),2))") |"
        done
        echo "daemon peak RSS: $peak"
        ;;
    *) echo "usage: scripts/bench.sh engine | fio [SIZE]" >&2; exit 2 ;;
esac
