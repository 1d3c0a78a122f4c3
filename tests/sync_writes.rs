//! Synchronous writes through the intent log, on a real mount: what fsync
//! acknowledged survives kill -9 of the daemon (the mount replays the log),
//! torn and damaged log records give the documented behaviour, the log
//! holds no plaintext, and concurrent fsyncs share device flushes.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::mounted::Fixture;
use common::random_bytes;

/// xorshift64 (Marsaglia 2003): deterministic test data and choices.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

const BLOCK: u64 = 4096;
const MAGIC: u32 = 0x5359_4e43;
const WORKERS: u32 = 4;

/// The content of block `block` of worker `w`'s file at version `v`: a
/// header naming all three, then bytes derived from them (so a block that
/// was never written, or written to another place, is recognised).
fn block_data(w: u32, block: u64, v: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK as usize);
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&w.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(&v.to_be_bytes());
    let seed = (w as u64) << 56 ^ block << 28 ^ v;
    out.extend(XorShift::new(seed | 1).bytes(BLOCK as usize - 24));
    out
}

/// The version a block holds, if it is a block of worker `w` at `block`.
fn block_version(w: u32, block: u64, data: &[u8]) -> Option<u64> {
    let v = u64::from_be_bytes(data.get(16..24)?.try_into().ok()?);
    (data == block_data(w, block, v)).then_some(v)
}

/// What one worker knows about its file: current state, and the state its
/// last successful fsync (or fsyncdir, for the name) made durable.
#[derive(Clone, Default)]
struct Model {
    name_b: bool,
    versions: Vec<u64>,
    acked_versions: Vec<u64>,
    /// The lowest size (blocks) a truncate left since the last fsync.
    lowest_since_ack: usize,
    acked_name_b: bool,
    renamed_since_ack: bool,
    next_version: u64,
}

fn path_of(mnt: &Path, w: u32, b: bool) -> PathBuf {
    mnt.join(format!("w{w}-{}", if b { "b" } else { "a" }))
}

/// One operation on the worker's file; Err once the mount is gone.
fn step(mnt: &Path, w: u32, m: &mut Model, rng: &mut XorShift) -> std::io::Result<()> {
    let path = path_of(mnt, w, m.name_b);
    let f = OpenOptions::new().write(true).open(&path)?;
    match rng.next() % 20 {
        0..=7 if !m.versions.is_empty() => {
            let b = rng.next() % m.versions.len() as u64;
            m.next_version += 1;
            f.write_all_at(&block_data(w, b, m.next_version), b * BLOCK)?;
            m.versions[b as usize] = m.next_version;
        }
        0..=11 => {
            for _ in 0..1 + rng.next() % 4 {
                let b = m.versions.len() as u64;
                m.next_version += 1;
                f.write_all_at(&block_data(w, b, m.next_version), b * BLOCK)?;
                m.versions.push(m.next_version);
            }
        }
        12 => {
            let keep = (rng.next() % (m.versions.len() as u64 + 1)) as usize;
            // (Counted before the call: a call the crash cut off may
            // still have happened.)
            m.lowest_since_ack = m.lowest_since_ack.min(keep);
            f.set_len(keep as u64 * BLOCK)?;
            m.versions.truncate(keep);
        }
        13 => {
            let to = path_of(mnt, w, !m.name_b);
            m.renamed_since_ack = true;
            std::fs::rename(&path, &to)?;
            m.name_b = !m.name_b;
            File::open(mnt)?.sync_all()?;
            m.acked_name_b = m.name_b;
            m.renamed_since_ack = false;
        }
        _ => {
            f.sync_all()?;
            m.acked_versions = m.versions.clone();
            m.lowest_since_ack = m.versions.len();
        }
    }
    Ok(())
}

/// Checks the file a worker finds after a crash against its model and
/// returns the model of what is there now (all of it durable: the mount
/// replayed and committed).
fn verify(f: &Fixture, w: u32, m: &Model, round: usize) -> Model {
    let result = std::panic::catch_unwind(|| verify_file(&f.mnt(), w, m, round));
    result.unwrap_or_else(|e| {
        let log = std::fs::read_to_string(f.store().join("daemon.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(400).collect();
        eprintln!(
            "daemon.log (last lines, newest first):\n{}",
            tail.join("\n")
        );
        std::panic::resume_unwind(e)
    })
}

fn verify_file(mnt: &Path, w: u32, m: &Model, round: usize) -> Model {
    let names: Vec<bool> = [false, true]
        .into_iter()
        .filter(|b| path_of(mnt, w, *b).exists())
        .collect();
    assert_eq!(names.len(), 1, "round {round}: worker {w}: files {names:?}");
    let name_b = names[0];
    if !m.renamed_since_ack {
        assert_eq!(
            name_b, m.acked_name_b,
            "round {round}: worker {w}: synced name lost"
        );
    }
    let mut data = Vec::new();
    File::open(path_of(mnt, w, name_b))
        .unwrap()
        .read_to_end(&mut data)
        .unwrap();
    assert_eq!(
        data.len() as u64 % BLOCK,
        0,
        "round {round}: worker {w}: size"
    );
    let blocks = data.len() / BLOCK as usize;
    let floor = m.acked_versions.len().min(m.lowest_since_ack);
    assert!(
        blocks >= floor,
        "round {round}: worker {w}: {blocks} blocks, fsync acknowledged {floor}"
    );
    let mut versions = Vec::with_capacity(blocks);
    for b in 0..blocks {
        let chunk = &data[b * BLOCK as usize..(b + 1) * BLOCK as usize];
        let v = block_version(w, b as u64, chunk).unwrap_or_else(|| {
            let zeros = chunk.iter().all(|x| *x == 0);
            panic!(
                "round {round}: worker {w}: block {b} of {blocks} holds bytes never written there (zeros: {zeros}, head {:02x?}); acknowledged {} blocks, lowest since {}",
                &chunk[..24],
                m.acked_versions.len(),
                m.lowest_since_ack
            )
        });
        if b < floor {
            assert!(
                v >= m.acked_versions[b],
                "round {round}: worker {w}: block {b} went back to version {v} from acknowledged {}",
                m.acked_versions[b]
            );
        }
        assert!(
            v <= m.next_version,
            "round {round}: worker {w}: block {b} from the future"
        );
        versions.push(v);
    }
    Model {
        name_b,
        acked_versions: versions.clone(),
        lowest_since_ack: versions.len(),
        versions,
        acked_name_b: name_b,
        renamed_since_ack: false,
        next_version: m.next_version,
    }
}

fn start_workers(
    f: &Fixture,
    models: &Arc<Mutex<Vec<Model>>>,
    round: usize,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..WORKERS)
        .map(|w| {
            let mnt = f.mnt();
            let models = models.clone();
            std::thread::spawn(move || {
                let mut rng = XorShift::new((round as u64) << 8 | w as u64 | 1);
                let mut m = models.lock().unwrap()[w as usize].clone();
                // Until the mount goes away. The model is published after
                // every step, also the one that failed: what a step may have
                // done is in it before the call, what it acknowledged only
                // after the call returned.
                loop {
                    let stepped = step(&mnt, w, &mut m, &mut rng);
                    models.lock().unwrap()[w as usize] = m.clone();
                    if stepped.is_err() {
                        break;
                    }
                }
            })
        })
        .collect()
}

#[test]
fn fsync_acknowledged_data_survives_100_kill_9s() {
    let f = Fixture::new(&[]);
    f.mount();
    for w in 0..WORKERS {
        File::create(path_of(&f.mnt(), w, false)).unwrap();
    }
    File::open(f.mnt()).unwrap().sync_all().unwrap();
    let models = Arc::new(Mutex::new(vec![Model::default(); WORKERS as usize]));
    let mut rng = XorShift::new(0x9e37);
    for round in 0..100 {
        let workers = start_workers(&f, &models, round);
        std::thread::sleep(Duration::from_millis(50 + rng.next() % 400));
        f.kill_daemon();
        for t in workers {
            t.join().unwrap();
        }
        if round % 20 == 19 {
            // The store as the crash left it, checked without the key
            // (the log too): then mount it.
            f.ok(&["scrub"]);
        }
        f.mount();
        let mut m = models.lock().unwrap();
        for w in 0..WORKERS {
            m[w as usize] = verify(&f, w, &m[w as usize], round);
        }
    }
    f.unmount();
    let scrub = f.ok(&["scrub"]);
    assert!(!scrub.contains("BAD"), "{scrub}");
}

/// A file written and fsynced (so its bytes are only in the log), then the
/// daemon killed: the store's log files, as the crash left them.
fn crashed_with_logged_write(marker: &[u8]) -> (Fixture, Vec<u8>) {
    let f = Fixture::new(&[]);
    f.mount();
    let path = f.mnt().join("db");
    let mut base = random_bytes(1, 1 << 20);
    std::fs::write(&path, &base).unwrap();
    File::open(f.mnt()).unwrap().sync_all().unwrap();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    for (i, at) in [4096u64, 200_000, 900_000].into_iter().enumerate() {
        let mut piece = marker.to_vec();
        piece.extend_from_slice(format!("-{i}").as_bytes());
        file.write_all_at(&piece, at).unwrap();
        base[at as usize..at as usize + piece.len()].copy_from_slice(&piece);
        file.sync_all().unwrap();
    }
    f.kill_daemon();
    (f, base)
}

fn log_files(f: &Fixture) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(f.store().join("intent"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// (offset, framed length) of each record of a log file.
fn records(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 40;
    while data.get(at..at + 4) == Some(b"DSIR") {
        let len = u32::from_be_bytes(data[at + 4..at + 8].try_into().unwrap()) as usize;
        out.push((at, 20 + len));
        at += 20 + len;
    }
    out
}

#[test]
fn the_log_holds_no_plaintext_and_replays_after_kill_9() {
    let marker = b"INTENT-LOG-PLAINTEXT-MARKER";
    let (f, expected) = crashed_with_logged_write(marker);
    let hits = common::find_bytes(&f.store(), marker);
    assert!(hits.is_empty(), "plaintext in the store: {hits:?}");
    assert!(!log_files(&f).is_empty());
    f.mount();
    assert_eq!(std::fs::read(f.mnt().join("db")).unwrap(), expected);
    let log = std::fs::read_to_string(f.store().join("daemon.log")).unwrap();
    assert!(log.contains("intent log replayed: 3 records"), "{log}");
}

#[test]
fn a_torn_last_record_is_dropped_and_a_damaged_one_refuses_the_mount() {
    let (f, expected) = crashed_with_logged_write(b"torn-and-flipped");
    let path = log_files(&f).pop().unwrap();
    let good = std::fs::read(&path).unwrap();
    let recs = records(&good);
    assert_eq!(recs.len(), 3, "three fsyncs, three records");
    // Damage in the middle (a flipped byte of record 2 of 3): scrub and
    // mount report it (exit 10), nothing is applied.
    let mut bad = good.clone();
    bad[recs[1].0 + 30] ^= 0x01;
    std::fs::write(&path, &bad).unwrap();
    let scrub = f.run(&["scrub"]);
    assert_eq!(scrub.status.code(), Some(10), "{scrub:?}");
    let out = String::from_utf8_lossy(&scrub.stdout);
    assert!(out.contains("intent log") && out.contains("BAD"), "{out}");
    let mount = f.run(&[
        "mount",
        f.mnt().to_str().unwrap(),
        "--password-file",
        f.pw().to_str().unwrap(),
    ]);
    assert_eq!(mount.status.code(), Some(10), "{mount:?}");
    let err = String::from_utf8_lossy(&mount.stderr);
    assert!(
        err.contains("intent log") && err.contains("record"),
        "{err}"
    );
    // Torn: the last record cut short (the crash hit its write). The first
    // two fsyncs come back, the third's bytes do not.
    let (at, len) = recs[2];
    let mut torn = good.clone();
    torn[at + len - 10..at + len].fill(0);
    std::fs::write(&path, &torn).unwrap();
    f.ok(&["scrub"]);
    f.mount();
    let now = std::fs::read(f.mnt().join("db")).unwrap();
    assert_eq!(now[..900_000], expected[..900_000]);
    assert_ne!(now[900_000..], expected[900_000..]);
    let log = std::fs::read_to_string(f.store().join("daemon.log")).unwrap();
    assert!(log.contains("a torn last record dropped"), "{log}");
}

#[test]
fn concurrent_fsyncs_share_device_flushes() {
    let f = Fixture::new(&[]);
    f.mount();
    let names: Vec<PathBuf> = (0..8).map(|i| f.mnt().join(format!("f{i}"))).collect();
    for n in &names {
        std::fs::write(n, random_bytes(7, 65536)).unwrap();
    }
    File::open(f.mnt()).unwrap().sync_all().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let before = f.status();
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = names
        .into_iter()
        .map(|n| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let file = OpenOptions::new().write(true).open(n).unwrap();
                let mut count = 0u64;
                while !stop.load(Ordering::Relaxed) && count < 300 {
                    file.write_all_at(&count.to_be_bytes(), count * 8).unwrap();
                    file.sync_all().unwrap();
                    count += 1;
                }
                count
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let fsyncs: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let after = f.status();
    let delta = |k: &str| {
        after["intent_log"][k].as_u64().unwrap() - before["intent_log"][k].as_u64().unwrap()
    };
    let (records, flushes) = (delta("records"), delta("flushes"));
    assert_eq!(records, fsyncs, "one record per fsync");
    assert!(
        flushes * 2 <= records,
        "{records} records from 8 threads took {flushes} flushes"
    );
}

#[test]
fn a_full_disk_fails_the_fsync_that_hit_it_and_keeps_what_was_acknowledged() {
    // 24 MiB: no room for a preallocated log file, so the log starts empty
    // and grows with its records.
    let f = Fixture::with_store_on_tmpfs("24m");
    f.mount();
    let path = f.mnt().join("db");
    std::fs::write(&path, random_bytes(3, 1 << 20)).unwrap();
    File::open(f.mnt()).unwrap().sync_all().unwrap();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(b"acknowledged", 0).unwrap();
    file.sync_data().unwrap();
    // The store's disk fills up (something else on it).
    let filler = f.store().join("filler");
    let mut out = File::create(&filler).unwrap();
    let block = vec![0u8; 1 << 16];
    while std::io::Write::write_all(&mut out, &block).is_ok() {}
    drop(out);
    file.write_all_at(&random_bytes(4, 65536), 200_000).unwrap();
    let e = file.sync_data().expect_err("no room for the record");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    f.kill_daemon();
    std::fs::remove_file(&filler).unwrap();
    f.mount();
    let data = std::fs::read(&path).unwrap();
    assert_eq!(&data[..12], b"acknowledged");
    f.unmount();
    let scrub = f.ok(&["scrub"]);
    assert!(!scrub.contains("BAD"), "{scrub}");
}

#[test]
fn a_log_directory_elsewhere_is_used_and_losing_it_costs_only_the_last_sync_writes() {
    let slog = tempfile::tempdir().unwrap();
    let log_dir = slog.path().join("slog");
    let f = Fixture::new(&["--log-dir", log_dir.to_str().unwrap()]);
    let toml = std::fs::read_to_string(f.store().join("datastore.toml")).unwrap();
    assert!(toml.contains("log_dir"), "{toml}");
    f.mount();
    let path = f.mnt().join("db");
    let committed = random_bytes(5, 1 << 20);
    std::fs::write(&path, &committed).unwrap();
    File::open(f.mnt()).unwrap().sync_all().unwrap();
    let write_synced = |at: u64, what: &[u8]| {
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(what, at).unwrap();
        file.sync_data().unwrap();
    };
    write_synced(0, b"in the other log");
    let in_log_dir = std::fs::read_dir(&log_dir).unwrap().count();
    assert!(in_log_dir > 0, "no log file in {}", log_dir.display());
    assert!(
        !f.store().join("intent").exists(),
        "the store's own log dir was made"
    );
    f.kill_daemon();
    f.mount();
    assert_eq!(&std::fs::read(&path).unwrap()[..16], b"in the other log");
    // The log device is lost right after an fsync: the store mounts, what
    // was committed is there, only that fsync's bytes may be gone.
    write_synced(4096, b"lost with the log");
    f.kill_daemon();
    std::fs::remove_dir_all(&log_dir).unwrap();
    f.mount();
    let now = std::fs::read(&path).unwrap();
    assert_eq!(now.len(), committed.len());
    assert_eq!(&now[..16], b"in the other log");
    assert_eq!(now[8192..], committed[8192..]);
    // Sync writes go on in a new log, and replay after a crash.
    write_synced(8192, b"after the loss");
    f.kill_daemon();
    f.mount();
    assert_eq!(
        &std::fs::read(&path).unwrap()[8192..8206],
        b"after the loss"
    );
    f.unmount();
    let scrub = f.ok(&["scrub"]);
    assert!(!scrub.contains("BAD"), "{scrub}");
}

#[test]
fn lock_and_unmount_leave_no_record_in_the_log() {
    let f = Fixture::new(&[]);
    f.mount();
    let path = f.mnt().join("db");
    std::fs::write(&path, random_bytes(6, 1 << 20)).unwrap();
    File::open(f.mnt()).unwrap().sync_all().unwrap();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    for i in 0..5u64 {
        file.write_all_at(b"drained", i * 100_000).unwrap();
        file.sync_data().unwrap();
    }
    drop(file);
    let records = |f: &Fixture| -> usize {
        log_files(f)
            .iter()
            .map(|p| records(&std::fs::read(p).unwrap()).len())
            .sum()
    };
    assert_eq!(records(&f), 5);
    f.ok(&["lock"]);
    assert_eq!(records(&f), 0, "records left in the log of a locked store");
    f.ok(&["unlock", "--password-file", f.pw().to_str().unwrap()]);
    assert_eq!(&std::fs::read(&path).unwrap()[400_000..400_007], b"drained");
    f.unmount();
    assert_eq!(records(&f), 0);
}
