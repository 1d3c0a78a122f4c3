//! Crypto provider throughput (not a test): the default provider against
//! the validated one (AWS-LC FIPS module) for what the chunk pipeline and the
//! metadata sealer do: AES-XTS-256 over 64 KiB chunks, keyed fingerprints
//! (keyed BLAKE3 vs HMAC-SHA-256) over 64 KiB chunks, AES-256-GCM sealing of
//! 128-byte metadata values, on one core.
//!
//! `cargo bench --bench providers` (needs the default `fips` feature).

use std::time::{Duration, Instant};

use keystore::{KatSet, Provider};

const CHUNK: usize = 64 << 10;

/// Runs `op` (which processes `bytes` per call) for about a second and
/// returns MB/s and calls per second.
fn rate(bytes: usize, mut op: impl FnMut()) -> (f64, f64) {
    for _ in 0..50 {
        op();
    }
    let t = Instant::now();
    let mut calls = 0u64;
    while t.elapsed() < Duration::from_secs(1) {
        for _ in 0..64 {
            op();
        }
        calls += 64;
    }
    let secs = t.elapsed().as_secs_f64();
    (
        calls as f64 * bytes as f64 / secs / 1e6,
        calls as f64 / secs,
    )
}

fn main() {
    let validated =
        keystore::gate::validated(&KatSet::embedded()).expect("the FIPS module comes up");
    let mut key = [0u8; 64];
    for (i, b) in key.iter_mut().enumerate() {
        *b = i as u8 ^ 0x5c;
    }
    let fp_key: [u8; 32] = key[..32].try_into().unwrap();
    let gcm_key: [u8; 32] = key[32..].try_into().unwrap();
    let mut chunk = vec![0xa5u8; CHUNK];
    println!("| operation | default provider | validated (AWS-LC FIPS) | validated / default |");
    println!("|---|---:|---:|---:|");
    let row = |what: &str, d: (f64, f64), v: (f64, f64), per_call: bool| {
        let fmt = |r: (f64, f64)| {
            if per_call {
                format!("{:.0} k/s", r.1 / 1e3)
            } else {
                format!("{:.0} MB/s", r.0)
            }
        };
        println!("| {what} | {} | {} | {:.2} |", fmt(d), fmt(v), v.0 / d.0);
    };
    let mut xts = |p: Provider, enc: bool| {
        let x = p.xts256(&key).unwrap();
        rate(CHUNK, || {
            if enc {
                x.encrypt_unit(&mut chunk, &[7; 16]).unwrap()
            } else {
                x.decrypt_unit(&mut chunk, &[7; 16]).unwrap()
            }
        })
    };
    let (d, v) = (xts(Provider::DEFAULT, true), xts(validated, true));
    row("AES-XTS-256 encrypt, 64 KiB units", d, v, false);
    let (d, v) = (xts(Provider::DEFAULT, false), xts(validated, false));
    row("AES-XTS-256 decrypt, 64 KiB units", d, v, false);
    let blake = Provider::DEFAULT.blake3_keyed(&fp_key).unwrap();
    let d = rate(CHUNK, || {
        std::hint::black_box(blake.hash(&chunk));
    });
    let hmac = validated.hmac_sha256(&fp_key).unwrap();
    let v = rate(CHUNK, || {
        std::hint::black_box(hmac.sign(&[&chunk]).unwrap());
    });
    row(
        "fingerprint 64 KiB: keyed BLAKE3 (default) vs HMAC-SHA-256 (validated)",
        d,
        v,
        false,
    );
    let hmac_d = Provider::DEFAULT.hmac_sha256(&fp_key).unwrap();
    let d = rate(CHUNK, || {
        std::hint::black_box(hmac_d.sign(&[&chunk]).unwrap());
    });
    row("HMAC-SHA-256, 64 KiB (both providers)", d, v, false);
    let gcm = |p: Provider| {
        let k = p.aes256_gcm(&gcm_key).unwrap();
        rate(128, || {
            let mut v = vec![1u8; 128];
            std::hint::black_box(k.seal_random_nonce(b"inode|1", &mut v).unwrap());
        })
    };
    let (d, v) = (gcm(Provider::DEFAULT), gcm(validated));
    row(
        "AES-256-GCM seal, 128-byte metadata value (random IV)",
        d,
        v,
        true,
    );
}
