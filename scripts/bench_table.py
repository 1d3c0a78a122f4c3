#!/usr/bin/env python3
"""Turns the results scripts/bench.sh recorded (candidate, key, value per
line) into the markdown table of issue #8: absolute figures, the ratios
datastore/peer, and whether each target is met."""
import sys
from collections import defaultdict

results, mode = sys.argv[1], sys.argv[2]
r = defaultdict(dict)
with open(results) as f:
    for line in f:
        who, key, value = line.rstrip("\n").split("\t")
        r[who][key] = float(value)


def get(who, key):
    return r[who].get(key)


def fmt(v, unit=""):
    if v is None:
        return "-"
    if unit == "MB":
        return f"{v / 1e6:,.0f} MB"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}"


def ratio(a, b):
    return None if a is None or not b else a / b


def verdict(x, op, limit):
    if x is None:
        return "-"
    ok = x >= limit if op == ">=" else x <= limit if op == "<=" else x < limit
    return "met" if ok else "**missed**"


out = []
out.append(f"### Mount workloads ({mode} mode)\n")
out.append("| workload | disk | bindfs | gocryptfs | datastore | ds/gocryptfs | ds/bindfs | target | |")
out.append("|---|---:|---:|---:|---:|---:|---:|---|---|")
rows = [
    ("seq write, unique (MB/s)", "seqwrite_mbs", ">=", 1.5, "gocryptfs"),
    ("cold seq read (MB/s)", "seqread_mbs", ">=", 1.5, "gocryptfs"),
    ("seq write, duplicate (MB/s)", "dupwrite_mbs", ">=", 1.5, "disk-seqwrite"),
    ("4 KiB random write (IOPS)", "randwrite_iops", ">=", 1.5, "gocryptfs"),
    ("4 KiB random read (IOPS)", "randread_iops", ">=", 1.0, "gocryptfs"),
    ("20,000 files: create (s)", "small_create_s", "<=", 1.0, "gocryptfs"),
    ("20,000 files: ls -lR (s)", "small_stat_s", None, None, None),
    ("20,000 files: delete (s)", "small_delete_s", None, None, None),
    ("Linux tree cp -a (s)", "tree_copy_s", "<=", 0.75, "gocryptfs"),
    ("Linux tree cp -a until durable (s)", "tree_durable_s", None, None, None),
]
for label, key, op, limit, against in rows:
    vals = [get(w, key) for w in ("disk", "bindfs", "gocryptfs", "datastore")]
    ds = vals[3]
    vs_gc, vs_bf = ratio(ds, vals[2]), ratio(ds, vals[1])
    if against == "disk-seqwrite":
        x = ratio(ds, get("disk", "seqwrite_mbs"))
        target = f"{op} {limit}x disk seq write ({fmt(x)}x)"
    elif against:
        x = vs_gc
        target = f"{op} {limit}x gocryptfs"
    else:
        x, target = None, ""
    out.append(
        f"| {label} | " + " | ".join(fmt(v) for v in vals)
        + f" | {fmt(vs_gc)} | {fmt(vs_bf)} | {target} | {verdict(x, op, limit) if op else ''} |"
    )
vals = [get(w, "tree_once_bytes") for w in ("disk", "bindfs", "gocryptfs", "datastore")]
out.append(
    "| Linux tree on disk afterwards | " + " | ".join(fmt(v, "MB") for v in vals)
    + f" | {fmt(ratio(vals[3], vals[2]))} | {fmt(ratio(vals[3], vals[1]))} | | |"
)

sync_rows = [
    ("pgbench scale 10, 4 clients (tps)", "pgbench_tps", [(">=", 1.2, "gocryptfs"), (">=", 0.75, "disk")]),
    ("4 KiB randwrite fsync=1 (IOPS)", "fsync1_iops", [(">=", 1.2, "gocryptfs")]),
    ("  fsync p50 (ms)", "fsync1_p50_ms", []),
    ("  fsync p99 (ms)", "fsync1_p99_ms", [("<=", 2.0, "disk")]),
    ("  fsync max (ms)", "fsync1_max_ms", []),
    ("4 KiB randwrite fsync=64 (IOPS)", "fsync64_iops", []),
    ("  fsync p50 (ms)", "fsync64_p50_ms", []),
    ("  fsync p99 (ms)", "fsync64_p99_ms", [("<=", 2.0, "disk")]),
    ("  fsync max (ms)", "fsync64_max_ms", []),
    ("8 KiB O_DSYNC appends (MB/s)", "wal_mbs", []),
    ("  write p99 (ms)", "wal_p99_ms", []),
]
if get("datastore", "pgbench_tps") is not None or get("datastore", "fsync1_iops") is not None:
    out.append("\n### Synchronous writes (databases, VM disks)\n")
    out.append("| workload | disk | gocryptfs | datastore | ds/gocryptfs | ds/disk | targets |")
    out.append("|---|---:|---:|---:|---:|---:|---|")
    for label, key, targets in sync_rows:
        disk, gc, ds = (get(w, key) for w in ("disk", "gocryptfs", "datastore"))
        peers = {"gocryptfs": ratio(ds, gc), "disk": ratio(ds, disk)}
        verdicts = [
            f"{op} {limit}x {against}: {verdict(peers[against], op, limit)}"
            for op, limit, against in targets
        ]
        out.append(
            f"| {label} | {fmt(disk)} | {fmt(gc)} | {fmt(ds)} | {fmt(peers['gocryptfs'])} | "
            + f"{fmt(peers['disk'])} | {'; '.join(verdicts)} |"
        )

out.append("\n### Data reduction (bytes stored, ingest)\n")
out.append(
    "datastore is measured twice: into a mount with `cp -a`, and with `datastore import` (the bulk"
    " path, like `restic backup`); the ratios and verdicts are for `import`.\n"
)
out.append("| workload | restic | borg (lz4) | datastore cp -a | datastore import | ds/borg | ds/restic | target | |")
out.append("|---|---:|---:|---:|---:|---:|---:|---|---|")
linux = get("input", "linux_bytes")
WHO = ("restic", "borg", "datastore", "datastore-import")
for label, key in (
    (f"Linux tree once ({fmt(linux, 'MB')})", "tree_once_bytes"),
    (f"Linux tree twice ({fmt(2 * linux if linux else None, 'MB')})", "tree_twice_bytes"),
    (f"5 botocore releases ({fmt(get('input', 'versions_bytes'), 'MB')})", "versions_bytes"),
):
    vals = [get(w, key) for w in WHO]
    x = ratio(vals[3], vals[1])
    out.append(
        f"| {label}: stored | " + " | ".join(fmt(v, "MB") for v in vals)
        + f" | {fmt(x)} | {fmt(ratio(vals[3], vals[0]))} | <= 1.05x borg | {verdict(x, '<=', 1.05)} |"
    )


def ingest(who, time_key, nbytes):
    t = get(who, time_key)
    return None if t is None or not nbytes else nbytes / t / 1e6


for label, keys, nbytes in (
    ("Linux tree once: ingest (MB/s)", {"datastore": "tree_durable_s"}, linux),
    ("Linux tree twice: ingest (MB/s)", {}, linux),
    ("5 botocore releases: ingest (MB/s)", {}, get("input", "versions_bytes")),
):
    default = {"Linux tree once": "tree_copy_s", "Linux tree twice": "tree_twice_s"}.get(
        label.split(":")[0], "versions_s")
    vals = [ingest(w, keys.get(w, default), nbytes) for w in WHO]
    x = ratio(vals[3], vals[0])
    out.append(
        f"| {label} | " + " | ".join(fmt(v) for v in vals)
        + f" | {fmt(ratio(vals[3], vals[1]))} | {fmt(x)} | >= 1.0x restic | {verdict(x, '>=', 1.0)} |"
    )

out.append("\n### datastore daemon memory\n")
out.append("| run | peak RSS | target | |")
out.append("|---|---:|---|---|")
for label, key in (("fio and small files", "io_peak_rss_mib"), ("Linux tree copy", "tree_peak_rss_mib")):
    v = get("datastore", key)
    out.append(f"| {label} | {fmt(v)} MiB | < 512 MiB | {verdict(v, '<', 512)} |")
print("\n".join(out))
