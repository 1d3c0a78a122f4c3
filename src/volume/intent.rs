//! Synchronous writes through the intent log: what an fsync must make
//! durable (the file's byte ranges changed since they were last durable,
//! its truncation point, its attributes), the sealed record that says it,
//! which records a commit covers, and the replay of a log after a crash.
//! The log's files and framing are `store::intent_log`.
//!
//! Invariants:
//! - A file's unsynced ranges are every byte range whose current content
//!   may differ from what is durable (the last commit, or a record). A
//!   record takes them (and the lowest size the file was cut to) with the
//!   file's attributes, under the volume lock, in sequence order (the
//!   log's appender lock is taken first, so records of one file are in the
//!   order of their content).
//! - A commit covers record n when every byte the record holds is in the
//!   rows it writes: no write buffer or buffer being flushed that held
//!   data when a record was taken is still unflushed (`pins`). The commit
//!   writes its coverage (`intent_covered`) in the same transaction; the
//!   log files it covers go after it; replay applies only later records.
//! - Replay opens every record before it applies any: a record that does
//!   not authenticate is damage and nothing is applied.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::error::{VResult, VolError};
use super::inode::{Inode, Kind};
use super::{lock, State, Volume};
use crate::store::intent_log::{self, IntentLog, LogError};

/// An fsync with more unsynced bytes than this writes them to segments
/// directly (chunked, then a durable commit), as before the log: large
/// sequential data is written once, not twice.
const MAX_LOGGED: u64 = 8 << 20;
/// Buffers holding logged data are chunked within about this long, so the
/// log's oldest file is retired.
pub const LOGGED_BUFFER_AGE: Duration = Duration::from_secs(5);
/// The `volume` table counter: every record up to it is in the rows.
const COVERED_COUNTER: &str = "intent_covered";
/// Per-file coverage counters: `intent_file_<ino>` = the last record of that
/// file the rows reflect. A record of a file at or below it is not replayed
/// (it would take back a later change the rows hold, such as a truncate).
const FILE_COVERED_PREFIX: &str = "intent_file_";
/// The record format this build writes.
const RECORD_VERSION: u8 = 1;

/// What changed in one file since it was last durable.
#[derive(Default, Clone)]
struct Unsynced {
    /// start -> end, disjoint and not touching.
    ranges: BTreeMap<u64, u64>,
    /// The lowest size the file was cut to meanwhile.
    cut: Option<u64>,
    /// Bumped by every change (a commit clears only what it saw).
    version: u64,
}

/// The oldest record whose bytes are still only in a write buffer (or in
/// the buffer being flushed), with when that record was taken.
#[derive(Default, Clone, Copy)]
struct Pins {
    buffer: Option<(u64, Instant)>,
    flushing: Option<(u64, Instant)>,
}

/// The volume's bookkeeping for synchronous writes (in `State`).
#[derive(Default)]
pub(super) struct SyncTracking {
    unsynced: HashMap<u64, Unsynced>,
    pins: HashMap<u64, Pins>,
    /// The last record taken for each file (an fsync with nothing new to
    /// log waits for it).
    last_record: HashMap<u64, u64>,
    /// Files created since the last commit (their fsync commits).
    pub(super) created: HashSet<u64>,
    /// Per file, the last record the committed rows reflect, where that is
    /// beyond `intent_covered` (the `intent_file_<ino>` counters).
    committed: HashMap<u64, u64>,
    versions: u64,
}

/// What a commit takes from the tracking: records it covers and the
/// unsynced entries it makes durable.
#[derive(Default)]
pub(super) struct Coverage {
    covered: Option<u64>,
    /// Per-file coverage counters to set (Some) or drop (None).
    per_file: Vec<(u64, Option<u64>)>,
    clears: Vec<(u64, u64)>,
    created: Vec<u64>,
}

/// The plaintext head of a record (postcard), before the data pieces.
#[derive(Serialize, Deserialize)]
struct RecordHead {
    version: u8,
    ino: u64,
    cut: Option<u64>,
    inode: Inode,
}

/// One decoded record.
struct LogRecord {
    head: RecordHead,
    pieces: Vec<(u64, Vec<u8>)>,
}

/// What replay did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub applied: usize,
    pub torn_tail: bool,
}

fn record_aad(seq: u64) -> Vec<u8> {
    let mut aad = b"datastore intent record v1".to_vec();
    aad.extend_from_slice(&seq.to_be_bytes());
    aad
}

fn encode(rec: &LogRecord) -> VResult<Vec<u8>> {
    let head = postcard::to_stdvec(&rec.head).map_err(VolError::io)?;
    let data: usize = rec.pieces.iter().map(|(_, d)| d.len() + 12).sum();
    let mut out = Vec::with_capacity(4 + head.len() + data);
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    out.extend_from_slice(&head);
    for (off, bytes) in &rec.pieces {
        out.extend_from_slice(&off.to_be_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

fn decode(plain: &[u8]) -> Option<LogRecord> {
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let s = plain.get(*at..*at + n)?;
        *at += n;
        Some(s)
    };
    let mut at = 0;
    let head_len = u32::from_be_bytes(take(&mut at, 4)?.try_into().ok()?) as usize;
    let head: RecordHead = postcard::from_bytes(take(&mut at, head_len)?).ok()?;
    if head.version != RECORD_VERSION {
        return None;
    }
    let mut pieces = Vec::new();
    while at < plain.len() {
        let off = u64::from_be_bytes(take(&mut at, 8)?.try_into().ok()?);
        let len = u32::from_be_bytes(take(&mut at, 4)?.try_into().ok()?) as usize;
        pieces.push((off, take(&mut at, len)?.to_vec()));
    }
    Some(LogRecord { head, pieces })
}

/// Waits until record `seq` is durable (counting the flushes it took).
fn sync_log(log: &IntentLog, seq: u64) -> VResult<()> {
    if log.sync_through(seq).map_err(log_err)? {
        crate::metrics::INTENT_FLUSHES.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn log_err(e: LogError) -> VolError {
    VolError {
        errno: e.errno(),
        cause: Some(e.to_string()),
    }
}

impl SyncTracking {
    fn note(&mut self, ino: u64) -> &mut Unsynced {
        self.versions += 1;
        let v = self.versions;
        let u = self.unsynced.entry(ino).or_default();
        u.version = v;
        u
    }

    /// A file's bytes [lo, hi) changed.
    pub(super) fn note_write(&mut self, ino: u64, lo: u64, hi: u64) {
        let u = self.note(ino);
        let (mut lo, mut hi) = (lo, hi);
        let touching: Vec<(u64, u64)> = u
            .ranges
            .range(..=hi)
            .rev()
            .take_while(|(_, e)| **e >= lo)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in touching {
            u.ranges.remove(&s);
            lo = lo.min(s);
            hi = hi.max(e);
        }
        u.ranges.insert(lo, hi);
    }

    /// A file was cut to `size` (ranges past it are gone).
    pub(super) fn note_cut(&mut self, ino: u64, size: u64) {
        let u = self.note(ino);
        u.cut = Some(u.cut.map_or(size, |c| c.min(size)));
        let past: Vec<u64> = u.ranges.range(size..).map(|(s, _)| *s).collect();
        for s in past {
            u.ranges.remove(&s);
        }
        if let Some((_, e)) = u.ranges.iter_mut().next_back() {
            *e = (*e).min(size);
        }
    }

    /// A file's attributes changed.
    pub(super) fn note_attrs(&mut self, ino: u64) {
        self.note(ino);
    }

    /// A file is gone: nothing of it needs logging.
    pub(super) fn forget(&mut self, ino: u64) {
        self.unsynced.remove(&ino);
        self.pins.remove(&ino);
        self.last_record.remove(&ino);
    }

    /// A flush took the file's buffer: its pin moves with it.
    pub(super) fn flush_started(&mut self, ino: u64) {
        if let Some(p) = self.pins.get_mut(&ino) {
            p.flushing = p.buffer.take();
        }
    }

    /// A flush installed its extents (ok) or put its buffer back (failed).
    pub(super) fn flush_ended(&mut self, ino: u64, ok: bool) {
        if let Some(p) = self.pins.get_mut(&ino) {
            let flushing = p.flushing.take();
            if !ok {
                p.buffer = match (p.buffer, flushing) {
                    (Some(b), Some(f)) => Some(if f.0 < b.0 { f } else { b }),
                    (b, f) => b.or(f),
                };
            }
            if p.buffer.is_none() && p.flushing.is_none() {
                self.pins.remove(&ino);
            }
        }
    }
}

/// The oldest record a file's unflushed buffers hold, if any.
fn oldest_pin(p: &Pins) -> Option<u64> {
    [p.buffer, p.flushing]
        .into_iter()
        .flatten()
        .map(|(seq, _)| seq)
        .min()
}

/// Per file with records: the last record the rows taken now reflect
/// (every record before its oldest pin; all of them without a pin).
/// Returns the counter changes beyond `covered` and records them.
fn per_file_coverage(t: &mut SyncTracking, covered: u64) -> Vec<(u64, Option<u64>)> {
    let mut changes: Vec<(u64, Option<u64>)> = Vec::new();
    let mut raised = HashSet::new();
    for (&ino, &last) in &t.last_record {
        let c = match t.pins.get(&ino).and_then(oldest_pin) {
            Some(pin) => pin - 1,
            None => last,
        };
        if c > covered && t.committed.get(&ino) != Some(&c) {
            changes.push((ino, Some(c)));
            raised.insert(ino);
        }
    }
    for (&ino, &c) in &t.committed {
        // (One change per file: a counter raised above stays.)
        if c <= covered && !raised.contains(&ino) {
            changes.push((ino, None));
        }
    }
    for (ino, change) in &changes {
        match change {
            Some(c) => t.committed.insert(*ino, *c),
            None => t.committed.remove(ino),
        };
    }
    changes
}

/// Takes what a commit covers, under the volume lock at its take.
pub(super) fn take_coverage(st: &mut State, log: Option<&IntentLog>) -> Coverage {
    let covered = log.map(|log| global_coverage(&st.synced, log));
    let per_file = covered.map_or_else(Vec::new, |c| per_file_coverage(&mut st.synced, c));
    let t = &st.synced;
    let idle = |ino: &u64| {
        st.writes.buffers.get(ino).is_none_or(|b| b.is_empty())
            && !st.writes.flushing.contains_key(ino)
    };
    Coverage {
        covered,
        per_file,
        clears: t
            .unsynced
            .iter()
            .filter(|(ino, _)| idle(ino))
            .map(|(ino, u)| (*ino, u.version))
            .collect(),
        created: t.created.iter().copied().collect(),
    }
}

/// Every record up to this is reflected by rows taken now: below the
/// oldest pin of any file, or everything appended.
fn global_coverage(t: &SyncTracking, log: &IntentLog) -> u64 {
    let oldest = t.pins.values().filter_map(oldest_pin).min();
    oldest.unwrap_or_else(|| log.appended_below()) - 1
}

impl Coverage {
    /// The counters the commit writes with its rows.
    pub(super) fn counters(&self) -> Vec<(String, Option<u64>)> {
        let global = self.covered.map(|c| (COVERED_COUNTER.to_string(), Some(c)));
        let per_file = self
            .per_file
            .iter()
            .map(|(ino, c)| (format!("{FILE_COVERED_PREFIX}{ino}"), *c));
        global.into_iter().chain(per_file).collect()
    }
}

impl Volume {
    /// The intent log, once `open_intent_log` has enabled it.
    pub(super) fn intent(&self) -> Option<Arc<IntentLog>> {
        self.intent_log.read().ok()?.clone()
    }

    /// After a commit's rows are durable: what they made durable needs no
    /// logging, and the log files they cover go.
    pub(super) fn commit_done(&self, cov: Coverage) -> VResult<()> {
        {
            let mut st = lock(&self.state);
            for (ino, version) in cov.clears {
                if st
                    .synced
                    .unsynced
                    .get(&ino)
                    .is_some_and(|u| u.version == version)
                {
                    st.synced.unsynced.remove(&ino);
                }
            }
            for ino in cov.created {
                st.synced.created.remove(&ino);
            }
            if let Some(covered) = cov.covered {
                // Durable now: an fsync with nothing new need not wait.
                st.synced.last_record.retain(|_, last| *last > covered);
            }
        }
        match (self.intent(), cov.covered) {
            (Some(log), Some(covered)) => log.retire(covered).map_err(log_err),
            _ => Ok(()),
        }
    }

    /// After a commit that covers every record (lock, unmount): the log
    /// moves to a new file and the covered ones are deleted, so no record
    /// stays on the disk.
    pub(super) fn drain_intent_log(&self) -> VResult<()> {
        let Some(log) = self.intent() else {
            return Ok(());
        };
        let covered = self.engine.meta().counter(COVERED_COUNTER)?.unwrap_or(0);
        log.drain(covered).map_err(log_err)
    }

    /// fsync(2), fdatasync(2) and O_SYNC writes: returns once `ino`'s data
    /// and attributes are durable, through the intent log when it can.
    pub fn fsync(&self, ino: u64) -> VResult<()> {
        match self.intent() {
            Some(log) => self.fsync_logged(&log, ino),
            None => self.fsync_direct(ino),
        }
    }

    /// The file's buffer to chunks, then a durable commit of everything.
    fn fsync_direct(&self, ino: u64) -> VResult<()> {
        self.flush_inode(ino)?;
        self.persist()
    }

    fn fsync_logged(&self, log: &IntentLog, ino: u64) -> VResult<()> {
        self.refuse_changes_if_stopped()?;
        let slot = log.begin();
        let seq = slot.seq();
        let taken = {
            let mut st = lock(&self.state);
            match self.take_record(&mut st, ino, seq)? {
                Take::Record(t) => t,
                Take::Direct => {
                    drop(st);
                    drop(slot);
                    return self.fsync_direct(ino);
                }
                Take::Nothing(last) => {
                    drop(st);
                    drop(slot);
                    return last.map_or(Ok(()), |s| sync_log(log, s));
                }
            }
        };
        let appended = self.fill_and_append(slot, ino, seq, &taken);
        if let Err(e) = appended {
            self.give_back(ino, taken.unsynced);
            return Err(e);
        }
        crate::metrics::INTENT_RECORDS.fetch_add(1, Ordering::Relaxed);
        sync_log(log, seq)
    }

    /// Reads the content the record holds, seals it, appends it.
    fn fill_and_append(
        &self,
        slot: intent_log::Slot<'_>,
        ino: u64,
        seq: u64,
        taken: &Taken,
    ) -> VResult<()> {
        let mut pieces = Vec::with_capacity(taken.parts.len());
        for part in &taken.parts {
            let mut out = vec![0u8; (part.hi - part.lo) as usize];
            self.fill_from_extents(&part.extents, part.lo, &mut out)?;
            for (at, bytes) in &part.buffered {
                let i = (at - part.lo) as usize;
                out[i..i + bytes.len()].copy_from_slice(bytes);
            }
            pieces.push((part.lo, out));
        }
        let rec = LogRecord {
            head: RecordHead {
                version: RECORD_VERSION,
                ino,
                cut: taken.unsynced.cut,
                inode: taken.inode.clone(),
            },
            pieces,
        };
        let sealed = self
            .sealer()
            .seal(&record_aad(seq), &encode(&rec)?)
            .map_err(VolError::io)?;
        slot.append(&sealed).map_err(log_err)?;
        Ok(())
    }

    /// A record that was not written: its ranges are unsynced again.
    fn give_back(&self, ino: u64, u: Unsynced) {
        let mut st = lock(&self.state);
        if let Some(cut) = u.cut {
            st.synced.note_cut(ino, cut);
        }
        for (lo, hi) in u.ranges {
            st.synced.note_write(ino, lo, hi);
        }
    }

    /// Under the volume lock: what record `seq` for `ino` holds.
    fn take_record(&self, st: &mut State, ino: u64, seq: u64) -> VResult<Take> {
        let inode = self.load_inode(st, ino)?.clone();
        if inode.kind != Kind::File || st.synced.created.contains(&ino) {
            return Ok(Take::Direct);
        }
        let Some(u) = st.synced.unsynced.get(&ino) else {
            return Ok(Take::Nothing(st.synced.last_record.get(&ino).copied()));
        };
        let bytes: u64 = u.ranges.iter().map(|(s, e)| e - s).sum();
        if bytes > MAX_LOGGED {
            return Ok(Take::Direct);
        }
        let u = st.synced.unsynced.remove(&ino).expect("checked");
        let mut parts = Vec::with_capacity(u.ranges.len());
        for (&lo, &hi) in &u.ranges {
            let hi = hi.min(inode.size);
            if lo < hi {
                parts.push(self.part_of(st, ino, lo, hi)?);
            }
        }
        let now = Instant::now();
        let buffered = st.writes.buffers.get(&ino).is_some_and(|b| !b.is_empty());
        let flushing = st.writes.flushing.contains_key(&ino);
        let pins = st.synced.pins.entry(ino).or_default();
        if buffered {
            pins.buffer.get_or_insert((seq, now));
        }
        if flushing {
            pins.flushing.get_or_insert((seq, now));
        }
        if !buffered && !flushing {
            st.synced.pins.remove(&ino);
        }
        st.synced.last_record.insert(ino, seq);
        Ok(Take::Record(Taken {
            inode,
            unsynced: u,
            parts,
        }))
    }

    /// The stored extents and buffered bytes that make up [lo, hi).
    fn part_of(&self, st: &mut State, ino: u64, lo: u64, hi: u64) -> VResult<Part> {
        let layers = [
            st.writes.flushing.get(&ino).map(|b| &**b),
            st.writes.buffers.get(&ino),
        ];
        let buffered: Vec<(u64, Vec<u8>)> = layers
            .into_iter()
            .flatten()
            .flat_map(|b| super::data::clip_pieces(b, lo, hi))
            .collect();
        // Stored chunks are decoded only for what no buffer covers (a
        // small overwrite of a large chunk is the common case).
        let map = self.load_extents(st, ino)?;
        let mut extents: Vec<(u64, super::inode::Extent)> = Vec::new();
        for (a, b) in gaps(&buffered, lo, hi) {
            for e in super::data::overlapping(map, a, b) {
                if extents.last().is_none_or(|l| l.0 < e.0) {
                    extents.push(e);
                }
            }
        }
        Ok(Part {
            lo,
            hi,
            extents,
            buffered,
        })
    }

    /// Buffers holding logged data for longer than `LOGGED_BUFFER_AGE` are
    /// queued for chunking (the daemon's group commit calls this), so the
    /// next commit covers their records.
    pub fn flush_logged_buffers(&self) -> VResult<()> {
        let due: Vec<u64> = {
            let st = lock(&self.state);
            st.synced
                .pins
                .iter()
                .filter(|(_, p)| {
                    p.buffer
                        .is_some_and(|(_, t)| t.elapsed() >= LOGGED_BUFFER_AGE)
                })
                .map(|(ino, _)| *ino)
                .collect()
        };
        for ino in due {
            self.schedule_flush(ino)?;
        }
        Ok(())
    }
}

/// The parts of [lo, hi) that none of `pieces` covers.
fn gaps(pieces: &[(u64, Vec<u8>)], lo: u64, hi: u64) -> Vec<(u64, u64)> {
    let mut covered: Vec<(u64, u64)> = pieces
        .iter()
        .map(|(o, d)| (*o, o + d.len() as u64))
        .collect();
    covered.sort_unstable();
    let mut out = Vec::new();
    let mut at = lo;
    for (a, b) in covered {
        if a > at {
            out.push((at, a.min(hi)));
        }
        at = at.max(b);
    }
    if at < hi {
        out.push((at, hi));
    }
    out
}

impl Volume {
    /// The volume lock, for a change that cuts `ino` to `size`: a file whose
    /// buffers hold logged bytes is flushed first, so no record older than
    /// the cut stays unreflected by the rows that hold the cut (replaying
    /// it would grow the file back with bytes the cut removed).
    pub(super) fn lock_for_cut(
        &self,
        ino: u64,
        size: u64,
    ) -> VResult<std::sync::MutexGuard<'_, State>> {
        loop {
            let mut st = self.lock_unflushing(ino);
            let shrinks = self.load_inode(&mut st, ino)?.size > size;
            let pinned = st.synced.pins.get(&ino).and_then(oldest_pin).is_some();
            if !shrinks || !pinned {
                return Ok(st);
            }
            drop(st);
            self.flush_inode(ino)?;
        }
    }
}

/// What `take_record` found.
enum Take {
    Record(Taken),
    /// Nothing new: wait for the file's last record, if any.
    Nothing(Option<u64>),
    /// Not through the log (a directory, a file not yet committed, or more
    /// than `MAX_LOGGED` bytes).
    Direct,
}

/// A record's content as taken under the lock.
struct Taken {
    inode: Inode,
    unsynced: Unsynced,
    parts: Vec<Part>,
}

/// One range of a record: stored extents, buffered bytes over them.
struct Part {
    lo: u64,
    hi: u64,
    extents: Vec<(u64, super::inode::Extent)>,
    buffered: Vec<(u64, Vec<u8>)>,
}

// ---- replay -------------------------------------------------------------

impl Volume {
    /// Replays the log in `dir` (records the metadata does not cover yet),
    /// commits the result, and from then on logs synchronous writes there.
    /// Damage before the log's tail is an error and nothing is applied.
    pub fn open_intent_log(&self, dir: &Path, enable: bool) -> VResult<ReplayReport> {
        let covered = self.engine.meta().counter(COVERED_COUNTER)?.unwrap_or(0);
        let store_id = self.engine.store_id();
        let scan = intent_log::scan(dir, &store_id, covered).map_err(damaged_log)?;
        let per_file: HashMap<u64, u64> = self
            .engine
            .meta()
            .counters_with_prefix(FILE_COVERED_PREFIX)?
            .into_iter()
            .filter_map(|(ino, seq)| Some((ino.parse().ok()?, seq)))
            .collect();
        lock(&self.state).synced.committed = per_file.clone();
        let mut records = Vec::with_capacity(scan.records.len());
        let sealer = self.sealer();
        for r in &scan.records {
            let plain = sealer
                .open(&record_aad(r.seq), &r.body)
                .map_err(|e| damaged(dir, format!("record {}: {e}", r.seq)))?;
            let rec = decode(&plain)
                .ok_or_else(|| damaged(dir, format!("record {} is malformed", r.seq)))?;
            if per_file.get(&rec.head.ino).is_none_or(|c| r.seq > *c) {
                records.push(rec);
            }
        }
        if let Some((path, at)) = &scan.torn_tail {
            cut_torn_tail(path, *at)?;
        }
        // Numbering goes on past every sequence number the database names
        // (a log lost or deleted must not let new records take numbers a
        // per-file counter already covers).
        let named = per_file.values().copied().max().unwrap_or(0).max(covered);
        let last = scan.records.last().map_or(named, |r| r.seq.max(named));
        let log = IntentLog::open(dir, store_id, last + 1).map_err(log_err)?;
        let log = Arc::new(log);
        *self
            .intent_log
            .write()
            .map_err(|_| VolError::io("poisoned"))? = Some(log.clone());
        for rec in &records {
            self.apply_record(rec)?;
        }
        self.sync_all()?;
        if !enable {
            *self
                .intent_log
                .write()
                .map_err(|_| VolError::io("poisoned"))? = None;
        }
        Ok(ReplayReport {
            applied: records.len(),
            torn_tail: scan.torn_tail.is_some(),
        })
    }

    /// Puts one record's content back: cut, bytes, then size and
    /// attributes as the record has them. A file that no longer exists
    /// (its removal was committed) is skipped.
    fn apply_record(&self, rec: &LogRecord) -> VResult<()> {
        let ino = rec.head.ino;
        let mut st = self.lock_unflushing(ino);
        match self.load_inode(&mut st, ino) {
            Ok(i) if i.kind == Kind::File => {}
            Ok(_) => return Ok(()),
            Err(e) if e.errno == libc::ENOENT && e.cause.is_none() => return Ok(()),
            Err(e) => return Err(e),
        }
        if let Some(cut) = rec.head.cut {
            if cut < self.load_inode(&mut st, ino)?.size {
                self.truncate(&mut st, ino, cut)?;
            }
        }
        drop(st);
        for (off, bytes) in &rec.pieces {
            self.write(ino, *off, bytes)?;
        }
        let mut st = self.lock_unflushing(ino);
        let want = &rec.head.inode;
        let size = self.load_inode(&mut st, ino)?.size;
        if want.size < size {
            self.truncate(&mut st, ino, want.size)?;
        }
        let inode = self.load_inode(&mut st, ino)?;
        inode.size = want.size;
        inode.perm = want.perm;
        inode.uid = want.uid;
        inode.gid = want.gid;
        inode.atime = want.atime;
        inode.mtime = want.mtime;
        inode.ctime = want.ctime;
        inode.xattrs = want.xattrs.clone();
        Self::touch(&mut st, ino);
        Ok(())
    }
}

fn damaged(dir: &Path, why: String) -> VolError {
    VolError {
        errno: libc::EIO,
        cause: Some(format!("intent log {} is damaged: {why}", dir.display())),
    }
}

fn damaged_log(e: LogError) -> VolError {
    VolError {
        errno: libc::EIO,
        cause: Some(format!("{e}")),
    }
}

/// Cuts a torn last record off, so the log's files end with whole records
/// before a new file follows them.
fn cut_torn_tail(path: &Path, at: u64) -> VResult<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(VolError::io)?;
    f.set_len(at)
        .and_then(|()| f.sync_all())
        .map_err(VolError::io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EngineConfig;
    use crate::engine::Engine;
    use crate::volume::{Caller, ROOT};

    const ME: Caller = Caller { uid: 0, gid: 0 };

    /// The volume of `dir` with its intent log replayed and enabled.
    fn open(dir: &Path) -> (Volume, VResult<ReplayReport>) {
        let v = crate::volume::store::tests::open(dir);
        let report = v.open_intent_log(&crate::paths::intent_log_dir(dir), true);
        (v, report)
    }

    fn content(v: &Volume, ino: u64) -> Vec<u8> {
        let size = v.getattr(ino).unwrap().inode.size;
        v.read(ino, 0, size as u32).unwrap()
    }

    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        crate::test_data::XorShift::new(seed | 1).bytes(len, 0)
    }

    /// A store with one committed file, `f`; returns its inode.
    fn store_with_file(dir: &Path) -> u64 {
        Engine::create(dir, "intent-test", &EngineConfig::default()).unwrap();
        let (v, report) = open(dir);
        report.unwrap();
        let f = v.mknod(ROOT, b"f", Kind::File, 0o600, 0, ME).unwrap().ino;
        v.open_file(f).unwrap();
        v.write(f, 0, &bytes(1, 300_000)).unwrap();
        v.sync_all().unwrap();
        f
    }

    #[test]
    fn fsynced_writes_come_back_after_a_crash_and_later_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let f = store_with_file(dir.path());
        let mut expected = bytes(1, 300_000);
        {
            let (v, _) = open(dir.path());
            v.open_file(f).unwrap();
            let a = bytes(2, 8192);
            v.write(f, 100_000, &a).unwrap();
            v.fsync(f).unwrap();
            expected[100_000..108_192].copy_from_slice(&a);
            v.write(f, 290_000, &bytes(3, 20_000)).unwrap();
            v.setattr(
                f,
                &crate::volume::SetAttr {
                    size: Some(200_000),
                    ..Default::default()
                },
                ME,
            )
            .unwrap();
            v.write(f, 0, b"head").unwrap();
            v.fsync(f).unwrap();
            expected.truncate(200_000);
            expected[..4].copy_from_slice(b"head");
            // Not synced: lost with the crash (the volume is dropped
            // without a commit).
            v.write(f, 10, b"lost").unwrap();
        }
        let (v, report) = open(dir.path());
        assert_eq!(report.unwrap().applied, 2);
        assert_eq!(content(&v, f), expected);
        drop(v);
        // Replayed once: the commit after replay covers the records.
        let (v, report) = open(dir.path());
        assert_eq!(report.unwrap().applied, 0);
        assert_eq!(content(&v, f), expected);
    }

    /// Random writes, appends, cuts, fsyncs, flushes and commits, then a
    /// crash (the volume dropped without a commit): every block an fsync
    /// acknowledged reads back at its version or a later one, and no block
    /// holds bytes never written there.
    #[test]
    fn random_operations_and_crashes_keep_every_fsynced_block() {
        const B: u64 = 4096;
        let block = |b: u64, v: u64| {
            let mut d = bytes(b << 20 | v, B as usize);
            d[..16].copy_from_slice(&[b.to_be_bytes(), v.to_be_bytes()].concat());
            d
        };
        let dir = tempfile::tempdir().unwrap();
        let f = store_with_file(dir.path());
        let mut rng = crate::test_data::XorShift::new(77);
        let (mut acked, mut lowest): (Vec<u64>, usize) = (Vec::new(), 0);
        {
            let (v, _) = open(dir.path());
            v.setattr(
                f,
                &crate::volume::SetAttr {
                    size: Some(0),
                    ..Default::default()
                },
                ME,
            )
            .unwrap();
            v.sync_all().unwrap();
        }
        let mut version = 0u64;
        for round in 0..60 {
            let (v, report) = open(dir.path());
            report.unwrap();
            let data = content(&v, f);
            let n = data.len() / B as usize;
            assert!(n >= lowest.min(acked.len()), "round {round}: {n} blocks");
            let mut found = Vec::new();
            for b in 0..n {
                let d = &data[b * B as usize..(b + 1) * B as usize];
                let ver = u64::from_be_bytes(d[8..16].try_into().unwrap());
                assert_eq!(
                    d,
                    &block(b as u64, ver)[..],
                    "round {round}: block {b} of {n}"
                );
                if b < lowest.min(acked.len()) {
                    assert!(ver >= acked[b], "round {round}: block {b} went back");
                }
                found.push(ver);
            }
            let mut cur = found.clone();
            (acked, lowest) = (found, n);
            v.open_file(f).unwrap();
            for _ in 0..(rng.next_u64() % 40) {
                match rng.next_u64() % 12 {
                    0..=3 if !cur.is_empty() => {
                        let b = rng.next_u64() % cur.len() as u64;
                        version += 1;
                        v.write(f, b * B, &block(b, version)).unwrap();
                        cur[b as usize] = version;
                    }
                    0..=5 => {
                        let b = cur.len() as u64;
                        version += 1;
                        v.write(f, b * B, &block(b, version)).unwrap();
                        cur.push(version);
                    }
                    6 => {
                        let keep = (rng.next_u64() % (cur.len() as u64 + 1)) as usize;
                        let set = crate::volume::SetAttr {
                            size: Some(keep as u64 * B),
                            ..Default::default()
                        };
                        v.setattr(f, &set, ME).unwrap();
                        cur.truncate(keep);
                        lowest = lowest.min(keep);
                    }
                    7 => v.flush_inode(f).unwrap(),
                    8 => v.commit(true).unwrap(),
                    _ => {
                        v.fsync(f).unwrap();
                        (acked, lowest) = (cur.clone(), cur.len());
                    }
                }
            }
        }
    }

    #[test]
    fn a_commit_covers_records_whose_data_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let f = store_with_file(dir.path());
        {
            let (v, _) = open(dir.path());
            v.open_file(f).unwrap();
            v.write(f, 0, b"synced").unwrap();
            v.fsync(f).unwrap();
            // The buffer is chunked and committed: the record is covered.
            v.release(f).unwrap();
            v.commit(true).unwrap();
            // A later unsynced change the record must not undo.
            v.open_file(f).unwrap();
            v.write(f, 0, b"later!").unwrap();
            v.release(f).unwrap();
            v.commit(true).unwrap();
        }
        let (v, report) = open(dir.path());
        assert_eq!(report.unwrap().applied, 0);
        assert_eq!(&content(&v, f)[..6], b"later!");
    }

    #[test]
    fn a_damaged_record_is_refused_and_nothing_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let f = store_with_file(dir.path());
        {
            let (v, _) = open(dir.path());
            v.open_file(f).unwrap();
            v.write(f, 0, b"first").unwrap();
            v.fsync(f).unwrap();
            v.write(f, 0, b"again").unwrap();
            v.fsync(f).unwrap();
        }
        let log_dir = crate::paths::intent_log_dir(dir.path());
        let files = intent_log::list_files(&log_dir).unwrap();
        let (_, path) = files.last().unwrap();
        let good = std::fs::read(path).unwrap();
        let mut bad = good.clone();
        // A byte inside the first record's sealed body, CRC fixed up: only
        // authentication can tell.
        let start = intent_log::HEADER_LEN as usize;
        let len = u32::from_be_bytes(bad[start + 4..start + 8].try_into().unwrap()) as usize;
        bad[start + intent_log::RECORD_HEADER_LEN + 10] ^= 0x20;
        let body_end = start + intent_log::RECORD_HEADER_LEN + len;
        let crc = crc32c::crc32c(&bad[start + 12..body_end]);
        bad[start + 8..start + 12].copy_from_slice(&crc.to_be_bytes());
        std::fs::write(path, &bad).unwrap();
        let (v, report) = open(dir.path());
        let e = report.expect_err("refused");
        assert!(e.to_string().contains("record 1"), "{e}");
        assert_eq!(&content(&v, f)[..5], &bytes(1, 5)[..]);
        drop(v);
        std::fs::write(path, &good).unwrap();
        let (v, report) = open(dir.path());
        assert_eq!(report.unwrap().applied, 2);
        assert_eq!(&content(&v, f)[..5], b"again");
    }

    #[test]
    fn records_encode_and_decode() {
        let rec = LogRecord {
            head: RecordHead {
                version: RECORD_VERSION,
                ino: 9,
                cut: Some(3),
                inode: Inode::new(Kind::File, 0o644, 1, 2, 1),
            },
            pieces: vec![(0, b"abc".to_vec()), (100, vec![7; 5000])],
        };
        let back = decode(&encode(&rec).unwrap()).unwrap();
        assert_eq!(back.head.ino, 9);
        assert_eq!(back.head.cut, Some(3));
        assert_eq!(back.pieces, rec.pieces);
        assert!(decode(&encode(&rec).unwrap()[..20]).is_none());
    }

    #[test]
    fn gaps_are_what_no_piece_covers() {
        let p = |o: u64, n: usize| (o, vec![0u8; n]);
        assert_eq!(
            gaps(&[p(10, 5), p(12, 10), p(30, 5)], 0, 40),
            [(0, 10), (22, 30), (35, 40)]
        );
        assert!(gaps(&[p(0, 40)], 0, 40).is_empty());
        assert_eq!(gaps(&[], 5, 9), [(5, 9)]);
    }

    #[test]
    fn a_raised_file_coverage_is_not_dropped_in_the_same_commit() {
        let mut t = SyncTracking::default();
        t.committed.insert(4, 10);
        t.last_record.insert(4, 20);
        // The global coverage passed the old counter (10) but not the new
        // one (20): the counter is raised, not removed.
        assert_eq!(per_file_coverage(&mut t, 15), [(4, Some(20))]);
        assert_eq!(t.committed.get(&4), Some(&20));
        assert_eq!(per_file_coverage(&mut t, 25), [(4, None)]);
        assert!(t.committed.is_empty());
    }

    #[test]
    fn unsynced_ranges_merge_and_cuts_clip_them() {
        let mut t = SyncTracking::default();
        t.note_write(1, 10, 20);
        t.note_write(1, 20, 30);
        t.note_write(1, 50, 60);
        t.note_write(1, 5, 12);
        let u = &t.unsynced[&1];
        assert_eq!(u.ranges.iter().collect::<Vec<_>>(), [(&5, &30), (&50, &60)]);
        t.note_cut(1, 25);
        let u = &t.unsynced[&1];
        assert_eq!(u.ranges.iter().collect::<Vec<_>>(), [(&5, &25)]);
        assert_eq!(u.cut, Some(25));
    }
}
