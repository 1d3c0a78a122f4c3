//! The conversion job: brings every chunk and metadata value of a store to
//! its current key generation while the store stays in use (in the mounted
//! daemon, or offline in the CLI), then destroys the retiring key.
//!
//! Progress lives in the `volume` table and is committed with the converted
//! metadata it counts (`convert_cursor`: the next inode to convert), so a
//! crash at any point resumes where the last commit left off: an inode
//! converted again finds its chunks already under the current keys (or
//! dedups against them). Finishing: a scan must find no live record under
//! another generation (else another pass runs), GC drops the dead ones,
//! a second scan must find none at all and every sealed value must be under
//! the current generation; only then does the keystore lose the retiring
//! key (fail closed: any doubt keeps the key and reports why). A store that
//! was unencrypted also gets a fresh metadata file, so no page of the old
//! plaintext database stays on disk.
//!
//! Throttle: the job runs on a one-thread pool of its own at the lowest CPU
//! and I/O priority (nice 19, I/O class idle), so the scheduler hands the
//! cores to request threads whenever both want them. Without a rate limit
//! it also backs off to a quarter duty cycle while reads or writes are
//! being served; with one it never exceeds it.

use crate::poison::Recover;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::crypto::KeyGen;
use crate::engine::{EngineError, GenerationScan};
use crate::paths::boot_key_dir;
use crate::volume::{VolError, Volume};

const CURSOR: &str = "convert_cursor";
const CURSOR_OFFSET: &str = "convert_cursor_offset";
const PASS: &str = "convert_pass";
const TARGET: &str = "convert_target";
const TOTAL_CHUNKS: &str = "convert_total_chunks";
const TOTAL_BYTES: &str = "convert_total_bytes";
const DONE_CHUNKS: &str = "convert_done_chunks";
const DONE_BYTES: &str = "convert_done_bytes";
pub const MAX_RATE: &str = "convert_max_rate";
/// The segment being appended to when the job first started: every record
/// written under the old key is in it or an older one (or was moved by GC
/// and is found through the index).
const SEGMENT_MARK: &str = "convert_segment_mark";
const ALL: [&str; 10] = [
    CURSOR,
    CURSOR_OFFSET,
    PASS,
    TARGET,
    TOTAL_CHUNKS,
    TOTAL_BYTES,
    DONE_CHUNKS,
    DONE_BYTES,
    MAX_RATE,
    SEGMENT_MARK,
];

/// Inodes read from the database per round.
const INODES_PER_ROUND: usize = 64;
/// Converted bytes between durable commits of the progress (also the most
/// of one file converted in one step).
const COMMIT_BYTES: u64 = 8 << 20;
/// Passes over the inodes before giving up (a record still referenced
/// under the old key after that is a bug to report, not to paper over).
const MAX_PASSES: u64 = 3;
/// Converted bytes between uploads to the bucket mirror (if any).
const MIRROR_BYTES: u64 = 256 << 20;
/// Share of wall time the job may work while foreground I/O runs.
const BUSY_DUTY: f64 = 0.25;

#[derive(Debug, Default, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Progress {
    /// "converting", "finishing", "done", "stopped" or "failed: ...".
    pub state: String,
    pub from: String,
    pub to: String,
    pub chunks_done: u64,
    pub chunks_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Bytes per second since this process started the job.
    pub rate_bytes_per_sec: f64,
    pub eta_secs: Option<u64>,
    pub pass: u64,
    /// Bytes per second the job may convert (0: automatic).
    pub max_rate: u64,
}

impl Progress {
    /// One line: state, percentage, bytes, chunks, rate and ETA.
    pub fn line(&self) -> String {
        let p = self;
        let pct = if p.bytes_total > 0 {
            100.0 * p.bytes_done as f64 / p.bytes_total as f64
        } else {
            100.0
        };
        format!(
            "{} {:.0}%: {:.1}/{:.1} MiB, {}/{} chunks, {:.1} MiB/s{}{}",
            p.state,
            pct.min(100.0),
            mib(p.bytes_done),
            mib(p.bytes_total),
            p.chunks_done,
            p.chunks_total,
            mib(p.rate_bytes_per_sec as u64),
            p.eta_secs
                .map(|s| format!(", ETA {s}s"))
                .unwrap_or_default(),
            if p.max_rate > 0 {
                format!(" (limit {:.0} MiB/s)", mib(p.max_rate))
            } else {
                String::new()
            }
        )
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// A running (or finished) job and its progress.
pub struct Job {
    pub progress: Mutex<Progress>,
    stop: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Job {
    pub fn progress(&self) -> Progress {
        self.progress.locked().clone()
    }

    /// Stops the job at its next step and waits for it (before locking or
    /// unmounting); what it did is committed, the rest resumes later.
    pub fn stop_and_join(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let t = self.thread.locked().take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }

    pub fn is_running(&self) -> bool {
        self.thread
            .locked()
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }
}

/// What the volume's keys say the conversion goes from and to.
fn describe(vol: &Volume) -> (String, String) {
    match vol.engine().keys() {
        Ok(k) => (
            k.retiring
                .as_ref()
                .map_or("nothing".into(), |r| r.generation.to_string()),
            format!(
                "{} ({})",
                k.current.generation,
                k.current.fingerprinter.alg().name()
            ),
        ),
        Err(_) => ("?".into(), "?".into()),
    }
}

/// Whether the store's keystore says a conversion runs.
pub fn pending(store: &Path) -> bool {
    super::keys::has_keystore(store)
        && keystore::Keystore::open(store, &boot_key_dir())
            .map(|ks| ks.retiring().is_some())
            .unwrap_or(false)
}

/// Starts the job on a thread.
pub fn start(store: &Path, vol: Arc<Volume>) -> Arc<Job> {
    let (from, to) = describe(&vol);
    let job = Arc::new(Job {
        progress: Mutex::new(Progress {
            state: "converting".into(),
            from,
            to,
            ..Default::default()
        }),
        stop: AtomicBool::new(false),
        thread: Mutex::new(None),
    });
    let j = job.clone();
    let store = store.to_path_buf();
    let t = std::thread::Builder::new()
        .name("datastore-convert".into())
        .spawn(move || {
            let r = background_pool().and_then(|pool| pool.install(|| run(&store, &vol, &j)));
            let mut p = j.progress.locked();
            p.state = match r {
                Ok(true) => "done".into(),
                Ok(false) => "stopped".into(),
                Err(e) => {
                    crate::log_line!("datastore: conversion failed: {e}");
                    format!("failed: {e}")
                }
            };
            p.eta_secs = None;
        });
    match t {
        Ok(t) => *job.thread.locked() = Some(t),
        Err(e) => {
            job.progress.locked().state = format!("failed: cannot start a thread: {e}");
        }
    }
    job
}

/// Why the job stopped short (the retiring key is kept in every case).
#[derive(Debug, thiserror::Error)]
pub enum ConversionError {
    #[error(transparent)]
    Volume(#[from] VolError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Meta(#[from] crate::meta::MetaError),
    #[error(transparent)]
    Key(#[from] keystore::KeystoreError),
    #[error("cannot start the conversion's thread: {0}")]
    Thread(#[from] rayon::ThreadPoolBuildError),
    #[error("no retiring key is loaded")]
    NoRetiringKey,
    #[error("{live} records under the old key are still referenced after {passes} passes; the old key is kept (run `datastore scrub`)")]
    StillReferenced { live: u64, passes: u64 },
    #[error("GC could not compact segments {0:?} (damaged, or not fetched from the bucket); the old key is kept (run `datastore scrub`)")]
    NotCompacted(Vec<u64>),
    #[error("after GC {other_key} records are under another key and {unreadable} unreadable; the old key is kept")]
    Leftover { other_key: u64, unreadable: u64 },
    #[error("{0} metadata values are not under the current key; the old key is kept")]
    StaleMetadata(u64),
    #[error("cannot bring the bucket up to date ({0}); the old key is kept until it can")]
    Bucket(VolError),
}

type Result<T> = std::result::Result<T, ConversionError>;

/// A one-thread rayon pool at background priority: the engine's parallel
/// steps (fingerprint, compress, encrypt) of the job run there rather than
/// on the pool shared with foreground requests.
fn background_pool() -> Result<rayon::ThreadPool> {
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(|_| "datastore-convert-work".into())
        .start_handler(|_| lower_own_priority())
        .build()?)
}

/// nice 19 and the idle I/O class for the calling thread. Best effort: a
/// refusal only leaves the duty-cycle throttle.
fn lower_own_priority() {
    crate::fsutil::lower_thread_priority(19, true);
}

fn counter(vol: &Volume, name: &str) -> Result<u64> {
    Ok(vol.counter(name)?.unwrap_or(0))
}

/// Runs the job to the end (Ok(true)) or until stopped (Ok(false)).
pub fn run(store: &Path, vol: &Arc<Volume>, job: &Job) -> Result<bool> {
    let current = begin(vol)?;
    let mut pace = Pace::new(vol)?;
    pace.report(vol, job, counter(vol, MAX_RATE)?)?;
    let mut converted = HashMap::new();
    let mut unmirrored = 0u64;
    let last_scan = loop {
        let max_rate = counter(vol, MAX_RATE)?;
        let cursor = counter(vol, CURSOR)?;
        let inodes = vol.stored_inodes_from(cursor, INODES_PER_ROUND)?;
        if inodes.is_empty() {
            match end_of_pass(vol, current)? {
                Some(scan) => break scan,
                None => continue,
            }
        }
        let round = Instant::now();
        let Some(batch_bytes) =
            convert_round(vol, job, &inodes, cursor, &mut converted, &pace, max_rate)?
        else {
            return Ok(false);
        };
        vol.commit(true)?;
        unmirrored += batch_bytes;
        if unmirrored >= MIRROR_BYTES && vol.engine().remote().is_some() {
            // Keep the bucket close behind; a failure is retried at the
            // next upload (status shows it) and the finish insists.
            let _ = vol.persist();
            unmirrored = 0;
        }
        pace.throttle(vol, job, round.elapsed(), batch_bytes, max_rate)?;
    };
    job.progress.locked().state = "finishing".into();
    finish(store, vol, current, &last_scan).map(|()| true)
}

/// Checks a retiring key is loaded and, on the first start of this
/// conversion, records its size and the segment mark. Returns the current
/// key generation.
fn begin(vol: &Volume) -> Result<KeyGen> {
    let engine = vol.engine();
    let keys = engine.keys()?;
    if keys.retiring.is_none() {
        return Err(ConversionError::NoRetiringKey);
    }
    let current = keys.current.generation;
    let target = match current {
        KeyGen::Key(g) => g as u64 + 1,
        KeyGen::Plain => 0,
    };
    if counter(vol, TARGET)? != target {
        // First start of this conversion: every record but those written
        // since the switch is under the old key, so the index's totals are
        // the job's size (reading every record's header here would compete
        // with the foreground for the disk; the finish scans them).
        let (total_chunks, total_bytes) = engine.live_totals()?;
        let rate = counter(vol, MAX_RATE)?;
        let mut changes: Vec<(&'static str, Option<u64>)> =
            ALL.iter().map(|k| (*k, None)).collect();
        changes.extend([
            (TARGET, Some(target)),
            (TOTAL_CHUNKS, Some(total_chunks)),
            (TOTAL_BYTES, Some(total_bytes)),
            (MAX_RATE, Some(rate)),
            (SEGMENT_MARK, Some(engine.active_segment())),
        ]);
        vol.set_counters(&changes);
        vol.commit(true)?;
    }
    Ok(current)
}

/// The end of a pass over the inodes: the index scan if no live record is
/// left under another key, else None after starting the next pass.
fn end_of_pass(vol: &Volume, current: KeyGen) -> Result<Option<GenerationScan>> {
    vol.commit(true)?;
    let scan = vol.engine().scan_generations()?;
    let left = scan.other_than(current);
    if left.live == 0 {
        return Ok(Some(scan));
    }
    let passes = counter(vol, PASS)? + 1;
    if passes >= MAX_PASSES {
        let live = left.live;
        return Err(ConversionError::StillReferenced { live, passes });
    }
    vol.set_counters(&[
        (PASS, Some(passes)),
        (CURSOR, Some(0)),
        (CURSOR_OFFSET, Some(0)),
    ]);
    Ok(None)
}

/// Converts `inodes` from the cursor on until COMMIT_BYTES are done or one
/// file needs another step; the bytes converted, or None when stopped
/// (after a durable commit of what was done).
fn convert_round(
    vol: &Volume,
    job: &Job,
    inodes: &[u64],
    cursor: u64,
    converted: &mut HashMap<crate::chunk::Fingerprint, crate::chunk::ChunkRef>,
    pace: &Pace,
    max_rate: u64,
) -> Result<Option<u64>> {
    let mut batch_bytes = 0u64;
    for &ino in inodes {
        if job.stop.load(Ordering::SeqCst) {
            vol.commit(true)?;
            return Ok(None);
        }
        let from = if ino == cursor {
            counter(vol, CURSOR_OFFSET)?
        } else {
            0
        };
        let budget = COMMIT_BYTES.saturating_sub(batch_bytes).max(1 << 20);
        let (step, more) = vol.convert_inode(ino, from, budget, converted)?;
        let done_chunks = counter(vol, DONE_CHUNKS)? + step.chunks;
        let done_bytes = counter(vol, DONE_BYTES)? + step.bytes;
        let (next_ino, next_off) = match more {
            Some(off) => (ino, off),
            None => (ino + 1, 0),
        };
        vol.set_counters(&[
            (CURSOR, Some(next_ino)),
            (CURSOR_OFFSET, Some(next_off)),
            (DONE_CHUNKS, Some(done_chunks)),
            (DONE_BYTES, Some(done_bytes)),
        ]);
        batch_bytes += step.bytes;
        pace.report(vol, job, max_rate)?;
        if batch_bytes >= COMMIT_BYTES || more.is_some() {
            break;
        }
    }
    Ok(Some(batch_bytes))
}

/// The job's pace: its rate since this process started it, and whether
/// foreground requests arrived since the last round.
struct Pace {
    started: Instant,
    bytes_at_start: u64,
    last_ops: u64,
}

impl Pace {
    fn new(vol: &Volume) -> Result<Pace> {
        Ok(Pace {
            started: Instant::now(),
            bytes_at_start: counter(vol, DONE_BYTES)?,
            last_ops: vol.foreground_ops(),
        })
    }

    /// Sleeps after a round: holds the rate limit, or backs off to
    /// BUSY_DUTY while others work. A new limit applies at once.
    fn throttle(
        &mut self,
        vol: &Volume,
        job: &Job,
        worked: Duration,
        batch_bytes: u64,
        max_rate: u64,
    ) -> Result<()> {
        let ops = vol.foreground_ops();
        let busy = ops != self.last_ops;
        self.last_ops = ops;
        let pause = if max_rate > 0 {
            Duration::from_secs_f64(batch_bytes as f64 / max_rate as f64).saturating_sub(worked)
        } else if busy {
            worked.mul_f64((1.0 - BUSY_DUTY) / BUSY_DUTY)
        } else {
            Duration::ZERO
        };
        let until = Instant::now() + pause;
        while Instant::now() < until && !job.stop.load(Ordering::SeqCst) {
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
            if counter(vol, MAX_RATE)? != max_rate {
                break;
            }
        }
        Ok(())
    }

    /// Copies the recorded counters into the job's progress.
    fn report(&self, vol: &Volume, job: &Job, max_rate: u64) -> Result<()> {
        let mut p = job.progress.locked();
        p.chunks_done = counter(vol, DONE_CHUNKS)?;
        p.bytes_done = counter(vol, DONE_BYTES)?;
        p.chunks_total = counter(vol, TOTAL_CHUNKS)?.max(p.chunks_done);
        p.bytes_total = counter(vol, TOTAL_BYTES)?.max(p.bytes_done);
        p.pass = counter(vol, PASS)?;
        p.max_rate = max_rate;
        let secs = self.started.elapsed().as_secs_f64();
        p.rate_bytes_per_sec = if secs > 0.0 {
            p.bytes_done.saturating_sub(self.bytes_at_start) as f64 / secs
        } else {
            0.0
        };
        p.eta_secs = (p.rate_bytes_per_sec > 0.0).then(|| {
            (p.bytes_total.saturating_sub(p.bytes_done) as f64 / p.rate_bytes_per_sec) as u64
        });
        Ok(())
    }
}

/// Drops the dead old records, proves nothing under the old key is left,
/// then destroys the retiring key. `before`: the index scan that found no
/// live old record (the end of the last pass; nothing referenced under
/// the old key can appear since: writers use the current key).
fn finish(store: &Path, vol: &Arc<Volume>, current: KeyGen, before: &GenerationScan) -> Result<()> {
    let engine = vol.engine();
    let from_plain = engine
        .keys()?
        .retiring
        .as_ref()
        .is_some_and(|r| r.generation == KeyGen::Plain);
    vol.commit(true)?;
    compact_old_segments(vol, current, before)?;
    prove_nothing_old(vol, current)?;
    if from_plain {
        vol.rewrite_metadata()?;
    }
    // The checkpoint's base may predate the conversion (values under the
    // old key, or in the clear): a new base replaces the whole file.
    vol.write_checkpoint()?;
    let remote = engine.remote();
    if let Some(r) = &remote {
        // The bucket: GC's new segments go up, a full checkpoint under the
        // new key becomes the head, then the packs of the compacted
        // segments and the chain sealed under the old key are deleted.
        r.start_new_chain();
        vol.persist().map_err(ConversionError::Bucket)?;
    }
    let mut ks = keystore::Keystore::open(store, &boot_key_dir())?;
    ks.finish_conversion()?;
    vol.forget_retiring_keys()?;
    let cleared: Vec<(&'static str, Option<u64>)> = ALL.iter().map(|k| (*k, None)).collect();
    vol.set_counters(&cleared);
    vol.commit(true)?;
    if let Some(r) = &remote {
        // The keystore without the old key replaces the bucket's copy (a
        // failure here is a backlog like any other: the next upload
        // carries it, and status shows the error).
        r.forget_retiring_key();
        if let Err(x) = vol.persist() {
            crate::log_line!("datastore: conversion done; the bucket's keystore copy still holds the old key (wrapped) until the next upload succeeds: {x}");
        }
    }
    Ok(())
}

/// Compacts the segments from before the job (old records the index no
/// longer names may sit there too) and any later one the index places an
/// old record in. Not the rest: foreground I/O waits while GC runs.
fn compact_old_segments(vol: &Volume, current: KeyGen, before: &GenerationScan) -> Result<()> {
    let engine = vol.engine();
    let mark = vol.counter(SEGMENT_MARK)?.unwrap_or(u64::MAX);
    let segment_ids = || -> Result<Vec<u64>> {
        Ok(engine
            .meta()
            .segments()?
            .into_iter()
            .map(|(id, _, _)| id)
            .collect())
    };
    let mut old_segments = before.segments_other_than(current);
    old_segments.extend(segment_ids()?.into_iter().filter(|id| *id <= mark));
    vol.gc_segments(&old_segments)?;
    let kept: Vec<u64> = segment_ids()?
        .into_iter()
        .filter(|id| old_segments.contains(id))
        .collect();
    if !kept.is_empty() {
        return Err(ConversionError::NotCompacted(kept));
    }
    Ok(())
}

/// After GC: no record at all (live or dead) and no sealed metadata value
/// may be left under another key.
fn prove_nothing_old(vol: &Volume, current: KeyGen) -> Result<()> {
    let scan = vol.engine().scan_generations()?;
    let left = scan.other_than(current);
    if left.live + left.dead > 0 || scan.unreadable > 0 {
        return Err(ConversionError::Leftover {
            other_key: left.live + left.dead,
            unreadable: scan.unreadable,
        });
    }
    let sealed = vol.count_sealed()?;
    let stale: u64 = sealed
        .iter()
        .filter(|(g, _)| **g != Some(current))
        .map(|(_, n)| n)
        .sum();
    if stale > 0 {
        return Err(ConversionError::StaleMetadata(stale));
    }
    Ok(())
}

/// The progress recorded in a store's database (for `show`/`status` when
/// no daemon runs the job): (chunks done, total, bytes done, total).
pub fn recorded_progress(engine: &crate::engine::Engine) -> Option<Progress> {
    let get = |k: &str| engine.meta().counter(k).ok().flatten();
    get(TARGET)?;
    Some(Progress {
        state: "paused (not mounted)".into(),
        chunks_done: get(DONE_CHUNKS).unwrap_or(0),
        chunks_total: get(TOTAL_CHUNKS).unwrap_or(0),
        bytes_done: get(DONE_BYTES).unwrap_or(0),
        bytes_total: get(TOTAL_BYTES).unwrap_or(0),
        pass: get(PASS).unwrap_or(0),
        max_rate: get(MAX_RATE).unwrap_or(0),
        ..Default::default()
    })
}
