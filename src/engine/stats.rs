//! Engine counters: bytes and chunks through each stage, and the time each
//! stage took summed over all threads (CPU-seconds, for the per-stage split
//! the benchmark reports). Relaxed atomics: these are statistics, not state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        #[derive(Default, Debug)]
        pub struct Stats { $(pub $name: AtomicU64,)* }

        #[derive(Default, Debug, Clone, Copy, serde::Serialize)]
        pub struct StatsSnapshot { $(pub $name: u64,)* }

        impl Stats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters!(
    bytes_in,
    chunks_in,
    chunks_predicted,
    chunks_new,
    bytes_new,
    bytes_stored_payload,
    bytes_records_written,
    bytes_read,
    chunks_read,
    ns_chunking,
    ns_fingerprint,
    ns_compress,
    ns_encrypt,
    ns_index,
    ns_append,
    ns_commit,
    ns_read_io,
    ns_decrypt,
    ns_decompress,
    ns_verify,
    commit_anomalies,
);

/// Adds the time since `start` to `counter`.
pub fn add_since(counter: &AtomicU64, start: Instant) {
    counter.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
