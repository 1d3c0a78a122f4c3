#!/usr/bin/env bash
# Side-by-side benchmarks: datastore against the tools users would pick
# instead, on the same disk and the same data, in one run.
#
#   scripts/bench.sh [quick]   the default, about 10 minutes: fio 2 GiB,
#                              random I/O 10 s per run
#   scripts/bench.sh full      fio 8 GiB, random I/O 30 s, plus the engine's
#                              own benchmark (cargo bench)
#   scripts/bench.sh engine    the chunk engine alone (cargo bench)
#   scripts/bench.sh fips      datastore with the default crypto provider
#                              against FIPS mode validated (AWS-LC module):
#                              fio 2 GiB write + cold read, three runs each,
#                              then the provider micro-benchmarks
#   scripts/bench.sh remote    datastore local-only against a store mirrored
#                              to an S3 server on loopback (s3s-fs, 256 MiB
#                              local cache): the same fio runs
#   scripts/bench.sh sync      the synchronous-write rows alone (pgbench,
#                              fio with fsync=1 and fsync=64, 8 KiB O_DSYNC
#                              appends) on the disk, gocryptfs and datastore
#   scripts/bench.sh convert   the throttle of online re-encryption: fio
#                              2 GiB sequential write idle, then right
#                              after `encryption rotate-key --no-wait` of a
#                              store holding 2 GiB; three runs
#
# Candidates: the plain disk (a directory), bindfs (FUSE passthrough),
# gocryptfs (encrypted FUSE) and datastore (a local store); restic and
# borg (lz4) for data reduction. Prints one markdown table of absolute
# figures, the ratios datastore/peer and the targets of issue #8.
#
# Installs what it needs from Debian (fio bindfs gocryptfs restic
# borgbackup fuse3 linux-source-6.1) and downloads five botocore sdists
# from PyPI for the "versions" set. Scratch lives in $BENCH_DIR (default
# /var/tmp/datastore-bench) and is removed at the end; extracted inputs are
# kept in $BENCH_CACHE (default /var/tmp/datastore-bench-cache). Everything
# mounted is unmounted, even on failure. The table is also written to
# $BENCH_CACHE/last-table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-quick}
case "$mode" in
    quick) size=2g random_s=10 ;;
    full) size=8g random_s=30 ;;
    engine) exec cargo bench --bench engine ;;
    fips | remote) size=2g random_s=0 ;;
    convert) size=2g random_s=0 ;;
    sync) size=2g random_s=10 ;;
    *) echo "usage: scripts/bench.sh [quick|full|engine|fips|remote|sync|convert]" >&2; exit 2 ;;
esac

need() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}
need fio bindfs gocryptfs restic borgbackup fuse3 linux-source-6.1 python3 postgresql
cargo build --release --bin datastore

base=${BENCH_DIR:-/var/tmp/datastore-bench}
cache=${BENCH_CACHE:-/var/tmp/datastore-bench-cache}
results=$cache/results.tsv
mkdir -p "$cache"
: >"$results"
export DATASTORE_BOOT_KEY_DIR=$base/boot-keys DATASTORE_KDF_TARGET_MS=200
export RESTIC_PASSWORD="bench password 1234567" BORG_PASSPHRASE="bench password 1234567"
export RESTIC_CACHE_DIR=$base/restic-cache BORG_BASE_DIR=$base/borg-home
mounts=()

s3_pid=
pg_bin=/usr/lib/postgresql/15/bin
cleanup() {
    set +e
    [ -n "$s3_pid" ] && kill "$s3_pid"
    for pg in "$base"/sync-*/pg; do
        [ -f "$pg/postmaster.pid" ] && runuser -u postgres -- "$pg_bin/pg_ctl" -s -D "$pg" -m immediate stop
    done
    for m in "${mounts[@]}"; do
        if mountpoint -q "$m"; then
            "$bin" unmount "$m" >/dev/null 2>&1 || fusermount3 -u "$m" 2>/dev/null || umount -l "$m"
        fi
    done
    rm -rf "$base"
}
trap cleanup EXIT
rm -rf "$base"
mkdir -p "$base"
bin=$base/datastore # a copy: a rebuild during the run does not change it
cp target/release/datastore "$bin"
echo "bench password 1234567" >"$base/pw"

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$results"; echo "  $1 $2: $3"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(round($(now) - $1, 2))"; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# Bytes a candidate keeps on disk: allocated blocks (du without
# --apparent-size), the same measure for every candidate and repository.
bytes_of() { du -s --block-size=1 "$1" | cut -f1; }

# --- inputs -----------------------------------------------------------------
if [ "$mode" != fips ] && [ "$mode" != remote ] && [ "$mode" != convert ] && [ "$mode" != sync ]; then
linux=$cache/linux-source-6.1
if [ ! -d "$linux" ]; then
    echo "==> extracting the Linux 6.1 tree"
    tar xJf /usr/src/linux-source-6.1.tar.xz -C "$cache"
fi
versions=$cache/versions
if [ ! -f "$versions/.complete" ]; then
    echo "==> downloading five botocore sdists (the versions set)"
    rm -rf "$versions" && mkdir -p "$versions/sdists" "$versions/tree"
    for v in 1.31.0 1.31.1 1.31.2 1.31.3 1.31.4; do
        pip download -q --no-deps --no-binary :all: "botocore==$v" -d "$versions/sdists" >/dev/null
        tar xzf "$versions/sdists/botocore-$v.tar.gz" -C "$versions/tree"
    done
    touch "$versions/.complete"
fi
linux_bytes=$(du -sb --apparent-size "$linux" | cut -f1)
versions_bytes=$(du -sb --apparent-size "$versions/tree" | cut -f1)
record input linux_bytes "$linux_bytes"
record input versions_bytes "$versions_bytes"
fi

# --- candidates ---------------------------------------------------------------
# mount_candidate NAME DIR: makes DIR a fresh, empty target of that kind.
mount_candidate() {
    local name=$1 dir=$2
    mkdir -p "$dir"
    case "$name" in
        disk) ;;
        bindfs)
            mkdir -p "$dir.raw"
            bindfs "$dir.raw" "$dir"
            mounts+=("$dir")
            ;;
        gocryptfs)
            mkdir -p "$dir.cipher"
            gocryptfs -init -q -extpass "cat $base/pw" "$dir.cipher" >/dev/null 2>&1
            # (allow_other: the sync rows run PostgreSQL as its own user)
            gocryptfs -q -allow_other -extpass "cat $base/pw" "$dir.cipher" "$dir" 2>/dev/null
            mounts+=("$dir")
            ;;
        datastore | datastore-fips | datastore-remote)
            local fips=disabled extra=()
            [ "$name" = datastore-fips ] && fips=validated
            [ "$name" = datastore-remote ] && extra=(--remote "s3://bkt/$(basename "$dir")"
                --endpoint "http://127.0.0.1:19014" --cache-size 256M)
            DATASTORE_STORE=$dir.store "$bin" init --fips-mode "$fips" "${extra[@]}" --password-file "$base/pw" >/dev/null
            DATASTORE_STORE=$dir.store "$bin" mount "$dir" --password-file "$base/pw" >/dev/null
            mounts+=("$dir")
            ;;
    esac
}
# reclaim NAME DIR (full mode): makes the space of deleted files free
# again. The other candidates free it on unlink; a datastore keeps dead
# chunks in its segments until `datastore gc`, which runs on an unmounted
# store, so between fio phases (untimed) the store is unmounted, collected
# and mounted again: a full run would otherwise need ~16 GiB for the
# sequential phases plus ~10 GB per 30 s of 4 KiB random writes (every
# flush re-chunks the windows it touches). Quick mode fits without it and
# keeps one daemon (a fresh daemon's random writes measured ~7% slower).
# The daemon's peak RSS so far is kept in ds_peak_rss_mib.
ds_peak_rss_mib=0
reclaim() {
    [ "$1" = datastore ] && [ "$mode" = full ] || return 0
    local rss
    rss=$(peak_rss_mib "$(daemon_pid "$2")")
    [ "$rss" -gt "$ds_peak_rss_mib" ] && ds_peak_rss_mib=$rss
    DATASTORE_STORE=$2.store "$bin" unmount "$2" >/dev/null
    DATASTORE_STORE=$2.store "$bin" gc --threshold 1 >/dev/null
    DATASTORE_STORE=$2.store "$bin" mount "$2" --password-file "$base/pw" >/dev/null
}
# backing NAME DIR: where the candidate's bytes land on disk.
backing() {
    case "$1" in
        disk) echo "$2" ;; bindfs) echo "$2.raw" ;;
        gocryptfs) echo "$2.cipher" ;; datastore) echo "$2.store" ;;
    esac
}
# settle NAME DIR: makes everything written so far durable (datastore:
# unmount, which flushes and commits; the others: sync the disk).
settle() {
    if [ "$1" = datastore ]; then
        DATASTORE_STORE=$2.store "$bin" unmount "$2" >/dev/null
    else
        sync
    fi
}
daemon_pid() { pgrep -f -- "--store $1.store mount" | head -1; }
peak_rss_mib() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$1/status"; }

fio_run() { # name dir rw bs size extra...
    local name=$1 dir=$2 rw=$3 bs=$4 sz=$5
    shift 5
    fio --name="$name" --directory="$dir" --rw="$rw" --bs="$bs" --size="$sz" \
        --ioengine=psync --fallocate=none --output-format=json "$@" 2>/dev/null
}
bw_mbs() { python3 -c 'import json,sys; t=json.load(sys.stdin)["jobs"]; print(round(sum(x["read"]["bw_bytes"]+x["write"]["bw_bytes"] for x in t)/1e6,1))'; }
iops() { python3 -c 'import json,sys; t=json.load(sys.stdin)["jobs"]; print(round(sum(x["read"]["iops"]+x["write"]["iops"] for x in t)))'; }

small_files() { # dir: 20,000 files of 1 KiB in 100 directories
    python3 - "$1" <<'EOF'
import os, sys
root = sys.argv[1]
for d in range(100):
    p = os.path.join(root, "d%03d" % d)
    os.mkdir(p)
    for f in range(200):
        with open(os.path.join(p, "f%03d" % f), "wb") as fh:
            fh.write(os.urandom(16) * 64)
EOF
}

# --- synchronous writes: what databases and VM disks do -----------------------
sync_s=20
pg_s=60
# fio_sync NAME DIR FSYNC: 4 KiB random writes into a 1 GiB file written
# before, fsync after every FSYNC writes: IOPS and fsync latency (ms).
fio_sync() {
    local name=$1 dir=$2 every=$3 out
    out=$(fio_run "sync$every" "$dir" randwrite 4k 1g --filename=syncfile --fsync="$every" \
        --time_based=1 --runtime="$sync_s" --refill_buffers=1 --randrepeat=0)
    record "$name" "fsync${every}_iops" "$(echo "$out" | iops)"
    for p in 50 99; do
        record "$name" "fsync${every}_p${p}_ms" "$(echo "$out" | python3 -c "import json,sys; s=json.load(sys.stdin)['jobs'][0]['sync']['lat_ns']['percentile']; print(round(s['$p.000000']/1e6,3))")"
    done
    record "$name" "fsync${every}_max_ms" "$(echo "$out" | python3 -c "import json,sys; print(round(json.load(sys.stdin)['jobs'][0]['sync']['lat_ns']['max']/1e6,2))")"
}
# wal_appends NAME DIR: 8 KiB sequential writes through O_DSYNC (a WAL).
wal_appends() {
    local name=$1 dir=$2 out
    out=$(fio_run wal "$dir" write 8k 256m --sync=dsync --time_based=1 --runtime="$sync_s" --refill_buffers=1)
    record "$name" wal_mbs "$(echo "$out" | bw_mbs)"
    record "$name" wal_p99_ms "$(echo "$out" | python3 -c "import json,sys; s=json.load(sys.stdin)['jobs'][0]['write']['clat_ns']['percentile']; print(round(s['99.000000']/1e6,3))")"
}
# pgbench_tps NAME DIR: PostgreSQL (Debian's) with its data directory in
# DIR: pgbench scale 10, 4 clients, $pg_s seconds.
pgbench_tps() {
    local name=$1 dir=$2 port=55432 out
    mkdir -p "$dir/pg" && chown postgres: "$dir/pg"
    touch "$base/pg-$name.log" && chown postgres: "$base/pg-$name.log"
    runuser -u postgres -- "$pg_bin/initdb" --no-instructions -D "$dir/pg" >/dev/null 2>&1
    runuser -u postgres -- "$pg_bin/pg_ctl" -s -w -D "$dir/pg" -l "$base/pg-$name.log" \
        -o "-p $port -k /tmp -c listen_addresses=''" start
    runuser -u postgres -- "$pg_bin/pgbench" -q -i -s 10 -h /tmp -p $port postgres >/dev/null 2>&1
    out=$(runuser -u postgres -- "$pg_bin/pgbench" -c 4 -j 2 -T "$pg_s" -h /tmp -p $port postgres 2>/dev/null)
    runuser -u postgres -- "$pg_bin/pg_ctl" -s -w -D "$dir/pg" -m fast stop
    record "$name" pgbench_tps "$(echo "$out" | awk '/^tps/ {print int($3); exit}')"
}
sync_rows() {
    for name in disk gocryptfs datastore; do
        echo "==> $name: pgbench, fio with fsync, O_DSYNC appends"
        dir=$base/sync-$name
        mount_candidate "$name" "$dir"
        chmod 755 "$dir"
        pgbench_tps "$name" "$dir"
        rm -rf "${dir:?}/pg"
        fio_run fill "$dir" write 1m 1g --filename=syncfile --refill_buffers=1 --end_fsync=1 >/dev/null
        for every in 1 64; do
            fio_sync "$name" "$dir" "$every"
        done
        wal_appends "$name" "$dir"
        rm -f "$dir"/sync* "$dir"/wal*
    done
}
if [ "$mode" = sync ]; then
    sync_rows
    python3 scripts/bench_table.py "$results" "$mode" | tee "$cache/last-table.md"
    exit 0
fi

# --- convert: foreground writes during a key rotation (the throttle) ----------
# Every fio run here writes fresh random data (--randrepeat=0: fio's default
# seed would repeat the fill's bytes, and the "idle" run would measure
# dedup rather than writing), and the page cache is dropped before each
# measured run, so both start from the same state.
if [ "$mode" = convert ]; then
    unique=(--end_fsync=1 --refill_buffers=1 --randrepeat=0)
    echo "| run | seq write idle MB/s | seq write during rotation MB/s | fraction | rotation, s |"
    echo "|---|---|---|---|---|"
    for run in 1 2 3; do
        dir=$base/convert-$run
        mount_candidate datastore "$dir"
        fio_run fill "$dir" write 1m 2g "${unique[@]}" >/dev/null
        drop_caches
        idle=$(fio_run idle "$dir" write 1m "$size" "${unique[@]}" | bw_mbs)
        rm -f "$dir"/idle*
        drop_caches
        start=$(date +%s.%N)
        DATASTORE_STORE=$dir.store "$bin" encryption rotate-key --no-wait --password-file "$base/pw" >/dev/null
        during=$(fio_run during "$dir" write 1m "$size" "${unique[@]}" | bw_mbs)
        until DATASTORE_STORE=$dir.store "$bin" status --json | python3 -c 'import json,sys; c=json.load(sys.stdin)["conversion"]; sys.exit(0 if c and c["state"]=="done" else 1)'; do
            sleep 0.5
        done
        secs=$(python3 -c "import time; print(round(time.time()-$start,1))")
        frac=$(python3 -c "print(round($during/$idle,2))")
        echo "| $run | $idle | $during | $frac | $secs |"
        DATASTORE_STORE=$dir.store "$bin" unmount "$dir" >/dev/null
        rm -rf "$dir" "$dir.store"
    done
    exit 0
fi

# --- fips / remote: datastore against itself in another configuration ----------
if [ "$mode" = fips ] || [ "$mode" = remote ]; then
    other=datastore-$mode
    if [ "$mode" = remote ]; then
        command -v s3s-fs >/dev/null 2>&1 || cargo install s3s-fs --version 0.14.1 --features binary --locked
        mkdir -p "$base/s3/bkt"
        export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
        s3s-fs --host 127.0.0.1 --port 19014 --access-key bench --secret-key bench-secret "$base/s3" >/dev/null 2>&1 &
        s3_pid=$!
        sleep 1
    fi
    for run in 1 2 3; do
        for name in datastore "$other"; do
            echo "==> $name, run $run: fio sequential write and cold read ($size)"
            dir=$base/$mode-$name-$run
            mount_candidate "$name" "$dir"
            drop_caches
            record "$name" "seqwrite_mbs_$run" "$(fio_run seq "$dir" write 1m "$size" --end_fsync=1 --refill_buffers=1 | bw_mbs)"
            drop_caches
            record "$name" "seqread_mbs_$run" "$(fio_run seq "$dir" read 1m "$size" | bw_mbs)"
            DATASTORE_STORE=$dir.store "$bin" unmount "$dir" >/dev/null
            rm -rf "$dir.store"
        done
    done
    python3 - "$results" "$other" <<'EOF' | tee "$cache/last-$mode-table.md"
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
other = sys.argv[2]
def runs(name, what):
    return [float(v) for n, k, v in rows if n == name and k.startswith(what)]
print(f"| datastore, fio 1 MiB blocks | datastore | {other} | {other} / datastore |")
print("|---|---:|---:|---:|")
for what, label in [("seqwrite_mbs", "sequential write MB/s (end_fsync)"), ("seqread_mbs", "cold sequential read MB/s")]:
    d, v = runs("datastore", what), runs(other, what)
    md, mv = statistics.median(d), statistics.median(v)
    print(f"| {label}, median of {len(d)} (runs: {d} / {v}) | {md:,.0f} | {mv:,.0f} | {mv / md:.2f} |")
EOF
    if [ "$mode" = fips ]; then
        echo
        cargo bench --bench providers
    fi
    exit 0
fi

# --- 1. fio and small files on each mount ---------------------------------------
for name in disk bindfs gocryptfs datastore; do
    echo "==> $name: fio ($size) and 20,000 small files"
    dir=$base/io-$name
    mount_candidate "$name" "$dir"
    # Every write run starts with an empty page cache: a nearly full one
    # makes the writer pay for reclaim (seen: 2 GiB duplicate write 3.4 s
    # after drop_caches, 6.9 s with 17 GB cached), whichever candidate.
    drop_caches
    record "$name" seqwrite_mbs "$(fio_run seq "$dir" write 1m "$size" --end_fsync=1 --refill_buffers=1 | bw_mbs)"
    drop_caches
    record "$name" seqread_mbs "$(fio_run seq "$dir" read 1m "$size" | bw_mbs)"
    rm -f "$dir"/seq*
    reclaim "$name" "$dir"
    drop_caches
    fio_run dup1 "$dir" write 1m "$size" --end_fsync=1 --refill_buffers=1 --randrepeat=1 --randseed=7 >/dev/null
    drop_caches
    record "$name" dupwrite_mbs "$(fio_run dup2 "$dir" write 1m "$size" --end_fsync=1 --refill_buffers=1 --randrepeat=1 --randseed=7 | bw_mbs)"
    rm -f "$dir"/dup*
    reclaim "$name" "$dir"
    drop_caches
    record "$name" randwrite_iops "$(fio_run rand "$dir" randwrite 4k 256m --numjobs=2 --time_based=1 --runtime="$random_s" --refill_buffers=1 | iops)"
    drop_caches
    record "$name" randread_iops "$(fio_run rand "$dir" randread 4k 256m --numjobs=2 --time_based=1 --runtime="$random_s" | iops)"
    rm -f "$dir"/rand*
    reclaim "$name" "$dir"
    drop_caches
    t=$(now); small_files "$dir"; record "$name" small_create_s "$(since "$t")"
    drop_caches
    t=$(now); ls -lR "$dir" >/dev/null; record "$name" small_stat_s "$(since "$t")"
    t=$(now); rm -rf "${dir:?}"/d*; record "$name" small_delete_s "$(since "$t")"
    if [ "$name" = datastore ]; then
        rss=$(peak_rss_mib "$(daemon_pid "$dir")")
        [ "$ds_peak_rss_mib" -gt "$rss" ] && rss=$ds_peak_rss_mib
        record datastore io_peak_rss_mib "$rss"
    fi
done

# --- 1b. synchronous writes -----------------------------------------------------
sync_rows

# --- 2. the Linux tree copied onto each candidate -------------------------------
cp -al "$linux" "$base/linux-second-copy"
for name in disk bindfs gocryptfs datastore; do
    echo "==> $name: cp -a of the Linux 6.1 tree"
    dir=$base/tree-$name
    mount_candidate "$name" "$dir"
    t=$(now)
    cp -a "$linux" "$dir/linux"
    record "$name" tree_copy_s "$(since "$t")"
    [ "$name" = datastore ] && rss=$(peak_rss_mib "$(daemon_pid "$dir")")
    settle "$name" "$dir"
    record "$name" tree_durable_s "$(since "$t")"
    record "$name" tree_once_bytes "$(bytes_of "$(backing "$name" "$dir")")"
    if [ "$name" = datastore ]; then
        DATASTORE_STORE=$dir.store "$bin" mount "$dir" --password-file "$base/pw" >/dev/null
        t=$(now)
        cp -a "$base/linux-second-copy" "$dir/linux2"
        settle datastore "$dir"
        record datastore tree_twice_s "$(since "$t")"
        record datastore tree_twice_bytes "$(bytes_of "$dir.store")"
        record datastore tree_peak_rss_mib "$rss"
    fi
done

# --- 3. data reduction against restic and borg --------------------------------
echo "==> restic and borg: the Linux tree once, twice, and the versions set"
for tool in restic borg; do
    for set in tree versions; do
        repo=$base/$tool-$set
        if [ $tool = restic ]; then
            restic init -q -r "$repo" >/dev/null
            ingest() { restic backup -q -r "$repo" "$1" >/dev/null; }
        else
            borg init -e repokey "$repo" >/dev/null 2>&1
            ingest() { borg create --compression lz4 "$repo::$(basename "$1")" "$1" >/dev/null 2>&1; }
        fi
        if [ $set = tree ]; then
            t=$(now); ingest "$linux"; record $tool tree_copy_s "$(since "$t")"
            record $tool tree_once_bytes "$(bytes_of "$repo")"
            t=$(now); ingest "$base/linux-second-copy"; record $tool tree_twice_s "$(since "$t")"
            record $tool tree_twice_bytes "$(bytes_of "$repo")"
        else
            t=$(now); ingest "$versions/tree"; record $tool versions_s "$(since "$t")"
            record $tool versions_bytes "$(bytes_of "$repo")"
        fi
    done
done
dir=$base/versions-datastore
mount_candidate datastore "$dir"
t=$(now)
cp -a "$versions/tree" "$dir/versions"
settle datastore "$dir"
record datastore versions_s "$(since "$t")"
record datastore versions_bytes "$(bytes_of "$dir.store")"

# The same three ingests with `datastore import` (the bulk path: no FUSE
# round trip per file; durable when it returns, as restic and borg are).
echo "==> datastore import: the Linux tree once, twice, and the versions set"
dir=$base/import-datastore
mount_candidate datastore "$dir"
t=$(now); "$bin" import "$linux" "$dir/linux" >/dev/null
record datastore-import tree_copy_s "$(since "$t")"
settle datastore "$dir"
record datastore-import tree_once_bytes "$(bytes_of "$dir.store")"
DATASTORE_STORE=$dir.store "$bin" mount "$dir" --password-file "$base/pw" >/dev/null
t=$(now); "$bin" import "$base/linux-second-copy" "$dir/linux2" >/dev/null
record datastore-import tree_twice_s "$(since "$t")"
settle datastore "$dir"
record datastore-import tree_twice_bytes "$(bytes_of "$dir.store")"
dir=$base/import-versions-datastore
mount_candidate datastore "$dir"
t=$(now); "$bin" import "$versions/tree" "$dir/versions" >/dev/null
record datastore-import versions_s "$(since "$t")"
settle datastore "$dir"
record datastore-import versions_bytes "$(bytes_of "$dir.store")"

# --- 4. the engine alone (full mode) --------------------------------------------
if [ "$mode" = full ]; then
    echo "==> engine benchmark"
    cargo bench --bench engine
fi

echo
python3 scripts/bench_table.py "$results" "$mode" | tee "$cache/last-table.md"
