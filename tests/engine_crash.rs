//! Must-show 7 of the chunk engine: a writer process SIGKILLed at random
//! moments (50 times while storing and syncing, 50 times during gc) never
//! costs a synced stream, and the store always opens with a clean scrub.
//!
//! The writer is this test binary re-executed with DATASTORE_CRASH_CHILD set:
//! it stores deterministic streams, and after each durable commit appends the
//! stream's recipe to a log (fsync'ed), so the log lists exactly the streams
//! whose sync returned. Before releasing a stream it logs the intent first.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use datastore::engine::ChunkRef;
use rand::{Rng, SeedableRng};

fn stream_data(id: u64) -> Vec<u8> {
    let len = 64 * 1024 + (id.wrapping_mul(2654435761) % (1536 * 1024)) as usize;
    let mut d = random_bytes(id, len);
    if id % 3 == 0 {
        // Repeat earlier content so dedup and refcounts are exercised.
        let prev = random_bytes(id - 1, 256 * 1024);
        d.extend_from_slice(&prev);
    }
    d
}

fn encode(r: &[ChunkRef]) -> String {
    r.iter()
        .map(|c| format!("{}:{}", hex::encode(c.fingerprint), c.len))
        .collect::<Vec<_>>()
        .join(",")
}

/// None for a line torn by the kill.
fn decode(s: &str) -> Option<Vec<ChunkRef>> {
    if s.is_empty() {
        return Some(Vec::new());
    }
    s.split(',')
        .map(|p| {
            let (h, l) = p.split_once(':')?;
            let fp: [u8; 32] = hex::decode(h).ok()?.try_into().ok()?;
            Some(ChunkRef {
                fingerprint: fp,
                len: l.parse().ok()?,
            })
        })
        .collect()
}

fn log_line(log: &mut std::fs::File, line: &str) {
    writeln!(log, "{line}").unwrap();
    log.sync_data().unwrap();
}

/// Reads the log: (live streams with recipes, next stream id).
fn read_log(path: &Path) -> (Vec<(u64, Vec<ChunkRef>)>, u64) {
    let mut live: Vec<(u64, Vec<ChunkRef>)> = Vec::new();
    let mut next = 1;
    let Ok(f) = std::fs::File::open(path) else {
        return (live, next);
    };
    // Only complete lines count: a line torn by the kill has no newline.
    let text = std::io::read_to_string(f).unwrap();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    for line in complete.lines() {
        let mut parts = line.splitn(3, ' ');
        match (
            parts.next(),
            parts.next().and_then(|i| i.parse::<u64>().ok()),
            parts.next(),
        ) {
            (Some("synced"), Some(id), Some(recipe)) => {
                next = next.max(id + 1);
                live.push((id, decode(recipe).expect("complete lines parse")));
            }
            (Some("releasing"), Some(id), _) => live.retain(|(i, _)| *i != id),
            _ => panic!("unexpected log line {line:?}"),
        }
    }
    (live, next)
}

#[test]
fn crash_child() {
    let Ok(mode) = std::env::var("DATASTORE_CRASH_CHILD") else {
        return;
    };
    let dir = std::path::PathBuf::from(std::env::var("DATASTORE_CRASH_DIR").unwrap());
    let log_path = dir.join("log");
    let (mut live, mut next) = read_log(&log_path);
    // Drop a line the previous writer's kill tore, so appends start clean.
    if let Ok(text) = std::fs::read(&log_path) {
        let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&log_path)
            .unwrap();
        f.set_len(keep as u64).unwrap();
        f.sync_all().unwrap();
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap();
    let e = open_engine(&dir.join("store"));
    loop {
        let id = next;
        next += 1;
        let r = e.put_bytes(&stream_data(id)).unwrap();
        e.commit(true).unwrap();
        log_line(&mut log, &format!("synced {id} {}", encode(&r)));
        live.push((id, r));
        if live.len() > 12 {
            let (old, r) = live.remove(0);
            log_line(&mut log, &format!("releasing {old}"));
            e.release(&r).unwrap();
            e.commit(mode == "gc").unwrap();
        }
        if mode == "gc" {
            e.gc(0.9).unwrap();
        }
    }
}

fn run_kills(mode: &str, rounds: usize, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    create_store(&dir.path().join("store"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let exe = std::env::current_exe().unwrap();
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("DATASTORE_CRASH_CHILD", mode)
            .env("DATASTORE_CRASH_DIR", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..400)));
        assert!(
            child.try_wait().unwrap().is_none(),
            "round {round}: writer exited early"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let e = open_engine(&dir.path().join("store"));
        let report = e.scrub().unwrap();
        assert!(
            report.is_clean(),
            "round {round}: scrub found {:?}",
            report.bad
        );
        let (live, _) = read_log(&dir.path().join("log"));
        for (id, recipe) in &live {
            let got = e
                .read_to_vec(recipe)
                .unwrap_or_else(|err| panic!("round {round}, stream {id}: {err}"));
            assert!(
                got == stream_data(*id),
                "round {round}: stream {id} differs"
            );
        }
        if mode == "write" && round % 10 == 9 {
            e.gc(0.5).unwrap();
        }
    }
    let (live, next) = read_log(&dir.path().join("log"));
    assert!(
        next as usize > rounds,
        "writers synced only {} streams in {rounds} rounds",
        next - 1
    );
    assert!(!live.is_empty());
}

#[test]
fn sigkill_while_writing_50_times() {
    run_kills("write", 50, 1);
}

#[test]
fn sigkill_during_gc_50_times() {
    run_kills("gc", 50, 2);
}
