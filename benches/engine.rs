//! Engine throughput benchmark (not a test): unique random, duplicate,
//! text-like data, and read-back, each with the per-stage split.
//!
//! `cargo bench --bench engine` (1 GiB per workload) or
//! `DATASTORE_BENCH_MIB=256 cargo bench --bench engine`. The store lives in
//! $DATASTORE_BENCH_DIR (default: a temp dir under /var/tmp).

use std::sync::Arc;
use std::time::Instant;

use datastore::config::EngineConfig;
use datastore::crypto::{ChunkCrypto, FingerprintAlg};
use datastore::engine::{Engine, StatsSnapshot};

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Text-like data: words from a 2,000-word vocabulary with source-code-ish
/// punctuation, lines of varying length (compresses like prose/source).
fn text_like(seed: u64, len: usize) -> Vec<u8> {
    let vocab: Vec<String> = (0..2000u64)
        .map(|i| {
            let r = random_bytes(i + 1, 12);
            let n = 2 + (r[0] % 9) as usize;
            r[1..=n].iter().map(|b| (b'a' + b % 26) as char).collect()
        })
        .collect();
    let picks = random_bytes(seed, len / 3 + 16);
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0;
    while out.len() < len {
        let w = u16::from_le_bytes([picks[i % picks.len()], picks[(i + 1) % picks.len()]]) as usize;
        // Zipf-ish: favour the first words.
        let idx = (w % 2000) * (w % 2000) / 2000;
        out.extend_from_slice(vocab[idx].as_bytes());
        out.push(match picks[(i + 2) % picks.len()] % 16 {
            0 => b'\n',
            1 => b'(',
            2 => b';',
            3 => b'.',
            _ => b' ',
        });
        i += 3;
    }
    out.truncate(len);
    out
}

fn mbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

fn split(label: &str, d: &StatsSnapshot, wall: f64, bytes: usize) {
    let s = |ns: u64| ns as f64 / 1e9;
    println!(
        "| {label} | {:.0} MB/s | wall {:.2}s | CPU-s: cdc {:.2}, fingerprint {:.2}, index {:.2}, lz4 {:.2}, xts {:.2}, append {:.2}, commit {:.2}, read-io {:.2}, decrypt {:.2}, decompress {:.2}, verify {:.2} |",
        mbps(bytes, wall),
        wall,
        s(d.ns_chunking),
        s(d.ns_fingerprint),
        s(d.ns_index),
        s(d.ns_compress),
        s(d.ns_encrypt),
        s(d.ns_append),
        s(d.ns_commit),
        s(d.ns_read_io),
        s(d.ns_decrypt),
        s(d.ns_decompress),
        s(d.ns_verify),
    );
}

fn diff(a: &StatsSnapshot, b: &StatsSnapshot) -> StatsSnapshot {
    let v = |x: u64, y: u64| y - x;
    StatsSnapshot {
        ns_chunking: v(a.ns_chunking, b.ns_chunking),
        ns_fingerprint: v(a.ns_fingerprint, b.ns_fingerprint),
        ns_index: v(a.ns_index, b.ns_index),
        ns_compress: v(a.ns_compress, b.ns_compress),
        ns_encrypt: v(a.ns_encrypt, b.ns_encrypt),
        ns_append: v(a.ns_append, b.ns_append),
        ns_commit: v(a.ns_commit, b.ns_commit),
        ns_read_io: v(a.ns_read_io, b.ns_read_io),
        ns_decrypt: v(a.ns_decrypt, b.ns_decrypt),
        ns_decompress: v(a.ns_decompress, b.ns_decompress),
        ns_verify: v(a.ns_verify, b.ns_verify),
        bytes_new: v(a.bytes_new, b.bytes_new),
        bytes_stored_payload: v(a.bytes_stored_payload, b.bytes_stored_payload),
        ..Default::default()
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mib: usize = std::env::var("DATASTORE_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let len = mib << 20;
    let base = std::env::var("DATASTORE_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let dir = tempfile::tempdir_in(base).expect("bench dir");
    let xts: [u8; 64] = random_bytes(1, 64).try_into().unwrap();
    let fpk: [u8; 32] = random_bytes(2, 32).try_into().unwrap();
    let crypto = Arc::new(
        ChunkCrypto::new(
            keystore::Provider::DEFAULT,
            &xts,
            &fpk,
            FingerprintAlg::Blake3Keyed,
        )
        .unwrap(),
    );
    Engine::create(dir.path(), "bench", &EngineConfig::default()).unwrap();
    let e = Engine::open(dir.path(), Some(crypto)).unwrap();
    println!(
        "engine benchmark: {mib} MiB per workload, store in {}",
        dir.path().display()
    );
    println!("| workload | throughput | wall | per-stage CPU time (summed over threads) |");
    println!("|---|---|---|---|");

    let run = |label: &str, data: &[u8]| {
        let before = e.stats.snapshot();
        let t = Instant::now();
        let r = e.put_bytes(data).unwrap();
        let put = t.elapsed().as_secs_f64();
        e.commit(true).unwrap();
        let total = t.elapsed().as_secs_f64();
        let d = diff(&before, &e.stats.snapshot());
        split(&format!("{label} (to page cache)"), &d, put, data.len());
        println!(
            "| {label} (incl. fsync) | {:.0} MB/s | wall {total:.2}s | new {} MB, stored {} MB |",
            mbps(data.len(), total),
            d.bytes_new / 1_000_000,
            d.bytes_stored_payload / 1_000_000
        );
        r
    };
    let unique = random_bytes(42, len);
    let r_unique = run("unique random", &unique);
    run("duplicate", &unique);
    drop(unique);
    let text = text_like(7, len);
    let r_text = run("text-like", &text);
    drop(text);

    for (label, r) in [("read unique", &r_unique), ("read text-like", &r_text)] {
        let before = e.stats.snapshot();
        let t = Instant::now();
        let mut sink = std::io::sink();
        e.read_stream(r, &mut sink).unwrap();
        let wall = t.elapsed().as_secs_f64();
        split(
            &format!("{label} (page cache warm)"),
            &diff(&before, &e.stats.snapshot()),
            wall,
            len,
        );
    }
}
