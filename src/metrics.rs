//! Process-wide I/O metrics of the mount: bytes and latency histograms of
//! FUSE reads and writes, errors by errno, and a throughput history (one
//! sample every 5 s for the last 10 minutes) for the dashboard's chart.
//! Relaxed atomics: statistics, not state. Nothing here names a file.

use crate::poison::Recover;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Upper bounds (seconds) of the latency histogram buckets.
pub const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

pub struct Histogram {
    counts: [AtomicU64; 13],
    sum_ns: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Histogram {
            counts: [const { AtomicU64::new(0) }; 13],
            sum_ns: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Prometheus text lines for this histogram named `name`.
    fn render(&self, name: &str, out: &mut String) {
        use std::fmt::Write;
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

pub static READ_BYTES: AtomicU64 = AtomicU64::new(0);
pub static WRITE_BYTES: AtomicU64 = AtomicU64::new(0);
/// Bytes handed to the kernel's page cache around random reads.
pub static FILL_BYTES: AtomicU64 = AtomicU64::new(0);
pub static READ_LATENCY: Histogram = Histogram::new();
/// Intent log records appended and device flushes that made them durable
/// (fewer flushes than records: group commit at work).
pub static INTENT_RECORDS: AtomicU64 = AtomicU64::new(0);
pub static INTENT_FLUSHES: AtomicU64 = AtomicU64::new(0);
pub static WRITE_LATENCY: Histogram = Histogram::new();
static ERRORS: Mutex<Vec<(i32, u64)>> = Mutex::new(Vec::new());

pub fn record_read(bytes: usize, started: Instant) {
    READ_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
    READ_LATENCY.observe(started.elapsed());
}

pub fn record_fill(bytes: usize) {
    FILL_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
}

pub fn record_write(bytes: usize, started: Instant) {
    WRITE_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
    WRITE_LATENCY.observe(started.elapsed());
}

/// Counts an error answered to the kernel (ENOENT and friends included:
/// they are what callers see).
pub fn record_error(errno: i32) {
    let mut e = ERRORS.locked();
    match e.iter_mut().find(|(n, _)| *n == errno) {
        Some((_, c)) => *c += 1,
        None => e.push((errno, 1)),
    }
}

/// (errno name, count) of every error so far.
pub fn errors() -> Vec<(String, u64)> {
    let e = ERRORS.locked();
    e.iter().map(|(n, c)| (errno_name(*n), *c)).collect()
}

fn errno_name(n: i32) -> String {
    let known = [
        (libc::ENOENT, "ENOENT"),
        (libc::EIO, "EIO"),
        (libc::EACCES, "EACCES"),
        (libc::EPERM, "EPERM"),
        (libc::ENOSPC, "ENOSPC"),
        (libc::EEXIST, "EEXIST"),
        (libc::ENOTEMPTY, "ENOTEMPTY"),
        (libc::ENODATA, "ENODATA"),
        (libc::EINVAL, "EINVAL"),
        (libc::ENOSYS, "ENOSYS"),
        (libc::ENOTDIR, "ENOTDIR"),
        (libc::EISDIR, "EISDIR"),
        (libc::ERANGE, "ERANGE"),
        (libc::EXDEV, "EXDEV"),
    ];
    known
        .iter()
        .find(|(k, _)| *k == n)
        .map_or_else(|| format!("E{n}"), |(_, s)| s.to_string())
}

/// One throughput sample: unix seconds, bytes read and written so far.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub at: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
}

const EVERY: Duration = Duration::from_secs(5);
const KEEP: usize = 120;
static HISTORY: Mutex<(Option<Instant>, VecDeque<Sample>)> = Mutex::new((None, VecDeque::new()));

/// Called from the daemon's loop: takes a sample every 5 s.
pub fn tick() {
    let mut h = HISTORY.locked();
    if h.0.is_some_and(|t| t.elapsed() < EVERY) {
        return;
    }
    h.0 = Some(Instant::now());
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    h.1.push_back(Sample {
        at,
        read_bytes: READ_BYTES.load(Ordering::Relaxed),
        write_bytes: WRITE_BYTES.load(Ordering::Relaxed),
    });
    while h.1.len() > KEEP {
        h.1.pop_front();
    }
}

pub fn history() -> Vec<Sample> {
    HISTORY.locked().1.iter().copied().collect()
}

/// One metric in Prometheus text format: HELP, TYPE and the sample.
pub fn write_metric(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    value: impl std::fmt::Display,
) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

/// The I/O part of /metrics.
pub fn render_io(out: &mut String) {
    use std::fmt::Write;
    let bytes = |c: &AtomicU64| c.load(Ordering::Relaxed);
    write_metric(
        out,
        "datastore_read_bytes_total",
        "counter",
        "Bytes read through the mount.",
        bytes(&READ_BYTES),
    );
    write_metric(
        out,
        "datastore_page_fill_bytes_total",
        "counter",
        "Bytes of decoded chunks handed to the kernel's page cache around random reads (the kernel answers later reads of them itself).",
        bytes(&FILL_BYTES),
    );
    write_metric(
        out,
        "datastore_write_bytes_total",
        "counter",
        "Bytes written through the mount.",
        bytes(&WRITE_BYTES),
    );
    let _ = writeln!(out, "# HELP datastore_read_seconds Latency of FUSE reads.");
    let _ = writeln!(out, "# TYPE datastore_read_seconds histogram");
    READ_LATENCY.render("datastore_read_seconds", out);
    let _ = writeln!(
        out,
        "# HELP datastore_write_seconds Latency of FUSE writes."
    );
    let _ = writeln!(out, "# TYPE datastore_write_seconds histogram");
    WRITE_LATENCY.render("datastore_write_seconds", out);
    let _ = writeln!(
        out,
        "# HELP datastore_errors_total Errors answered to callers, by errno."
    );
    let _ = writeln!(out, "# TYPE datastore_errors_total counter");
    for (name, count) in errors() {
        let _ = writeln!(out, "datastore_errors_total{{errno=\"{name}\"}} {count}");
    }
}
