//! The intent log: files of sealed records that make synchronous writes
//! durable before their data is chunked into segments (docs/FORMAT.md,
//! "Intent log"). This module owns the files and their framing; what a
//! record says and its sealing belong to the volume.
//!
//! Files are `intent-<first seq, 16 hex digits>.log` in the log directory.
//! A file is a 40-byte header (magic, store id, first sequence number, CRC)
//! followed by records: `DSIR`, body length (u32), CRC-32C (u32) of the
//! rest, sequence number (u64), body. Sequence numbers run on by one from
//! file to file; a record's body is opaque here.
//!
//! Invariants: records are appended in sequence order by one appender at a
//! time (`begin` hands out the slot); `sync_through(n)` returns once every
//! record up to `n` is on the device, and one flush serves every caller
//! waiting at that moment (group commit); a file is rotated only right
//! after a flush, so every file but the newest ends with a complete
//! record; an append that fails is cut off again, so a failed fsync never
//! leaves a partial record before later ones. Reading: a damaged record at
//! the very end of the newest file is a torn write (dropped); any other
//! damaged record, a gap in the sequence or a foreign header is damage.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::poison::Recover;

const FILE_MAGIC: &[u8; 8] = b"DSINTLG1";
pub const HEADER_LEN: u64 = 40;
const RECORD_MAGIC: &[u8; 4] = b"DSIR";
/// Record header: magic, body length, CRC, sequence number.
pub const RECORD_HEADER_LEN: usize = 20;
/// A body larger than this is damage (the volume logs at most 8 MiB).
const MAX_BODY: u32 = 64 << 20;
/// A file is rotated after a flush once its records reach this far.
const ROTATE_AT: u64 = 32 << 20;
/// Bytes of zeros a new file starts with (records past them grow it).
const PREALLOCATE: u64 = ROTATE_AT + (1 << 20);

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("intent log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("intent log {path}: {why}")]
    Damaged { path: PathBuf, why: String },
    #[error("intent log stopped after an earlier failure: {0}")]
    Stopped(String),
}

impl LogError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
        move |source| LogError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn damaged(path: &Path, why: impl Into<String>) -> LogError {
        LogError::Damaged {
            path: path.to_path_buf(),
            why: why.into(),
        }
    }

    /// The errno a failed fsync reports.
    pub fn errno(&self) -> i32 {
        match self {
            LogError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EIO,
        }
    }
}

pub type Result<T> = std::result::Result<T, LogError>;

/// The name of the file whose first record is `first_seq`.
fn file_name(first_seq: u64) -> String {
    format!("intent-{first_seq:016x}.log")
}

/// The first sequence number a log file's name says, if it is one.
fn parse_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("intent-")?.strip_suffix(".log")?;
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
}

fn header(store_id: &[u8; 16], first_seq: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(FILE_MAGIC);
    h[8..24].copy_from_slice(store_id);
    h[24..32].copy_from_slice(&first_seq.to_be_bytes());
    let crc = crc32c::crc32c(&h[..36]);
    h[36..].copy_from_slice(&crc.to_be_bytes());
    h
}

/// The framed form of one record.
fn frame(seq: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + body.len());
    out.extend_from_slice(RECORD_MAGIC);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out[12..]);
    out[8..12].copy_from_slice(&crc.to_be_bytes());
    out
}

/// The log files in `dir`, oldest first: (first sequence number, path).
pub fn list_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LogError::io(dir)(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(LogError::io(dir))?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_name) {
            files.push((first, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// The name a new file has while it is being filled with zeros.
const SPARE_NAME: &str = "intent-spare.log.new";

/// A file full of zeros (`PREALLOCATE` bytes), flushed, so a flush of the
/// records later written into it moves data only (no file-system journal
/// commit for a growing size or for new extents). On a disk without room
/// for the zeros, an empty file: records then grow it (each flush also
/// commits the file system's journal), and a mount of a full store works.
fn prepare_spare(dir: &Path) -> Result<File> {
    let path = dir.join(SPARE_NAME);
    match fill_spare(&path) {
        Err(LogError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOSPC) => {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(LogError::io(&path))?;
            file.set_len(0)
                .and_then(|()| file.sync_all())
                .map_err(LogError::io(&path))?;
            Ok(file)
        }
        other => other,
    }
}

fn fill_spare(path: &Path) -> Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(LogError::io(path))?;
    let zeros = vec![0u8; 1 << 20];
    let mut filled = 0;
    while filled < PREALLOCATE {
        file.write_all(&zeros).map_err(LogError::io(path))?;
        filled += zeros.len() as u64;
    }
    file.sync_all().map_err(LogError::io(path))?;
    Ok(file)
}

/// Removes files a crash left half-made (`*.log.new`: never named as log
/// files, so they hold no record).
fn remove_unfinished(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(LogError::io(dir))? {
        let entry = entry.map_err(LogError::io(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("intent-") && name.ends_with(".log.new") {
            std::fs::remove_file(entry.path()).map_err(LogError::io(&entry.path()))?;
        }
    }
    Ok(())
}

/// One record as read back.
pub struct Record {
    pub seq: u64,
    pub body: Vec<u8>,
}

/// Everything the log directory holds, checked (CRCs, headers, sequence).
pub struct Scan {
    pub records: Vec<Record>,
    /// A torn record at the end of the newest file: (file, offset).
    pub torn_tail: Option<(PathBuf, u64)>,
    pub files: usize,
    pub bytes: u64,
}

/// Reads and checks every log file in `dir` (no key needed). Records at or
/// below `skip_through` are checked but not kept.
pub fn scan(dir: &Path, store_id: &[u8; 16], skip_through: u64) -> Result<Scan> {
    let files = list_files(dir)?;
    let mut out = Scan {
        records: Vec::new(),
        torn_tail: None,
        files: files.len(),
        bytes: 0,
    };
    let mut expected: Option<u64> = None;
    for (i, (first, path)) in files.iter().enumerate() {
        let newest = i + 1 == files.len();
        let data = std::fs::read(path).map_err(LogError::io(path))?;
        out.bytes += data.len() as u64;
        check_header(path, &data, store_id, *first)?;
        if let Some(e) = expected {
            if e != *first {
                let why = format!(
                    "starts at record {first}, the file before ended at {}",
                    e - 1
                );
                return Err(LogError::damaged(path, why));
            }
        }
        let mut next = *first;
        let mut at = HEADER_LEN as usize;
        while at < data.len() {
            match parse_record(&data[at..]) {
                Parsed::End => break,
                Parsed::Good(seq, body, len) => {
                    if seq != next {
                        let why = format!("record {seq} at byte {at} where {next} was due");
                        return Err(LogError::damaged(path, why));
                    }
                    if seq > skip_through {
                        out.records.push(Record {
                            seq,
                            body: body.to_vec(),
                        });
                    }
                    next += 1;
                    at += len;
                }
                Parsed::Bad(why) => {
                    if newest && !any_good_record_after(&data, at + 1) {
                        out.torn_tail = Some((path.clone(), at as u64));
                        break;
                    }
                    let why = format!("record {next} at byte {at}: {why}");
                    return Err(LogError::damaged(path, why));
                }
            }
        }
        expected = Some(next);
    }
    Ok(out)
}

fn check_header(path: &Path, data: &[u8], store_id: &[u8; 16], first: u64) -> Result<()> {
    if data.len() < HEADER_LEN as usize {
        return Err(LogError::damaged(path, "shorter than its header"));
    }
    let h = &data[..HEADER_LEN as usize];
    if &h[..8] != FILE_MAGIC {
        return Err(LogError::damaged(path, "not an intent log (bad magic)"));
    }
    let crc = u32::from_be_bytes(h[36..40].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&h[..36]) {
        return Err(LogError::damaged(path, "header checksum mismatch"));
    }
    if &h[8..24] != store_id {
        return Err(LogError::damaged(path, "belongs to another store"));
    }
    if h[24..32] != first.to_be_bytes() {
        return Err(LogError::damaged(
            path,
            "header does not match the file name",
        ));
    }
    Ok(())
}

enum Parsed<'a> {
    /// Zeros or nothing: the end of the records.
    End,
    /// (sequence number, body, framed length)
    Good(u64, &'a [u8], usize),
    Bad(&'static str),
}

fn parse_record(rest: &[u8]) -> Parsed<'_> {
    if rest.iter().take(RECORD_HEADER_LEN).all(|b| *b == 0) {
        return Parsed::End;
    }
    if rest.len() < RECORD_HEADER_LEN {
        return Parsed::Bad("incomplete record header");
    }
    if &rest[..4] != RECORD_MAGIC {
        return Parsed::Bad("no record marker");
    }
    let len = u32::from_be_bytes(rest[4..8].try_into().expect("4 bytes"));
    if len > MAX_BODY || RECORD_HEADER_LEN + len as usize > rest.len() {
        return Parsed::Bad("record runs past the end of the file");
    }
    let total = RECORD_HEADER_LEN + len as usize;
    let crc = u32::from_be_bytes(rest[8..12].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&rest[12..total]) {
        return Parsed::Bad("checksum mismatch");
    }
    let seq = u64::from_be_bytes(rest[12..20].try_into().expect("8 bytes"));
    Parsed::Good(seq, &rest[RECORD_HEADER_LEN..total], total)
}

/// Whether a whole, checksummed record starts anywhere at or after `from`
/// (a damaged record with good ones after it is not a torn tail).
fn any_good_record_after(data: &[u8], from: usize) -> bool {
    let mut at = from;
    while let Some(pos) = data
        .get(at..)
        .and_then(|d| d.windows(4).position(|w| w == RECORD_MAGIC))
    {
        if matches!(parse_record(&data[at + pos..]), Parsed::Good(..)) {
            return true;
        }
        at += pos + 1;
    }
    false
}

/// The file records are appended to.
struct Tail {
    file: File,
    path: PathBuf,
    first_seq: u64,
    len: u64,
    /// The sequence number the next record gets.
    next_seq: u64,
    /// Set by a failure that may have left the file in doubt.
    stopped: Option<String>,
}

/// Group commit: how far the log is known durable.
#[derive(Default)]
struct Flushed {
    /// Every record below this is on the device.
    durable_below: u64,
    flushing: bool,
}

/// The open log: appends in order, flushes in groups, drops covered files.
pub struct IntentLog {
    dir: PathBuf,
    store_id: [u8; 16],
    tail: Mutex<Tail>,
    flushed: Mutex<Flushed>,
    flush_done: Condvar,
    /// Files before the tail: (first seq, path).
    older: Mutex<Vec<(u64, PathBuf)>>,
    /// Every record below this is appended (readable without the
    /// appender lock, so a commit holding other locks can ask).
    appended: AtomicU64,
}

/// The right to append the next record (holds the appender lock).
pub struct Slot<'a> {
    tail: MutexGuard<'a, Tail>,
    appended: &'a AtomicU64,
}

impl Slot<'_> {
    /// The sequence number `append` gives the record.
    pub fn seq(&self) -> u64 {
        self.tail.next_seq
    }

    /// Writes the record (not yet flushed); returns its sequence number.
    pub fn append(mut self, body: &[u8]) -> Result<u64> {
        let t = &mut *self.tail;
        if let Some(why) = &t.stopped {
            return Err(LogError::Stopped(why.clone()));
        }
        let seq = t.next_seq;
        let bytes = frame(seq, body);
        if let Err(e) = t.file.write_all_at(&bytes, t.len) {
            // Cut the partial record off again; if that fails too, nothing
            // more is appended (a later record after it would be damage).
            if let Err(cut) = t.file.set_len(t.len) {
                t.stopped = Some(format!("cannot cut a failed append: {cut}"));
            }
            return Err(LogError::io(&t.path)(e));
        }
        t.len += bytes.len() as u64;
        t.next_seq += 1;
        self.appended.store(t.next_seq, Ordering::Release);
        Ok(seq)
    }
}

impl IntentLog {
    /// Opens the log in `dir` (created if missing) for appending; the
    /// first record gets `next_seq`, in a new file. Existing files stay
    /// until `retire` finds them covered.
    pub fn open(dir: &Path, store_id: [u8; 16], next_seq: u64) -> Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(LogError::io(dir))?;
        remove_unfinished(dir)?;
        // A file named for `next_seq` holds no record (replay went up to
        // the one before): the new tail replaces it.
        let mut older = list_files(dir)?;
        older.retain(|(first, _)| *first != next_seq);
        let tail = Self::new_file(dir, &store_id, next_seq)?;
        Ok(IntentLog {
            dir: dir.to_path_buf(),
            store_id,
            tail: Mutex::new(tail),
            flushed: Mutex::new(Flushed {
                durable_below: next_seq,
                flushing: false,
            }),
            flush_done: Condvar::new(),
            older: Mutex::new(older),
            appended: AtomicU64::new(next_seq),
        })
    }

    /// A new log file for records from `first_seq` (made ready now).
    fn new_file(dir: &Path, store_id: &[u8; 16], first_seq: u64) -> Result<Tail> {
        Self::install(dir, store_id, first_seq, prepare_spare(dir)?)
    }

    /// Names a prepared file as the log file for records from `first_seq`:
    /// header, flush (data only: the file is already full of zeros), rename,
    /// directory flush.
    fn install(dir: &Path, store_id: &[u8; 16], first_seq: u64, file: File) -> Result<Tail> {
        let path = dir.join(file_name(first_seq));
        file.write_all_at(&header(store_id, first_seq), 0)
            .and_then(|()| file.sync_data())
            .and_then(|()| std::fs::rename(dir.join(SPARE_NAME), &path))
            .and_then(|()| crate::fsutil::sync_dir(dir))
            .map_err(LogError::io(&path))?;
        Ok(Tail {
            file,
            path,
            first_seq,
            len: HEADER_LEN,
            next_seq: first_seq,
            stopped: None,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the appender lock: records go in in the order slots are taken.
    pub fn begin(&self) -> Slot<'_> {
        Slot {
            tail: self.tail.locked(),
            appended: &self.appended,
        }
    }

    /// Every record below this is appended (perhaps not yet flushed).
    pub fn appended_below(&self) -> u64 {
        self.appended.load(Ordering::Acquire)
    }

    /// Returns once every record up to `seq` is on the device. One caller
    /// flushes for all who wait meanwhile (group commit); true for it.
    pub fn sync_through(&self, seq: u64) -> Result<bool> {
        let mut f = self.flushed.locked();
        loop {
            if f.durable_below > seq {
                return Ok(false);
            }
            if !f.flushing {
                break;
            }
            f = self.flush_done.wait(f).unwrap_or_else(|e| e.into_inner());
        }
        f.flushing = true;
        drop(f);
        let result = self.flush_tail();
        let mut f = self.flushed.locked();
        f.flushing = false;
        if let Ok(below) = result {
            f.durable_below = f.durable_below.max(below);
        }
        self.flush_done.notify_all();
        drop(f);
        result.map(|_| true)
    }

    /// Flushes the tail file; rotates it when it is large. Returns the
    /// sequence number below which everything is durable.
    fn flush_tail(&self) -> Result<u64> {
        let (file, below, path) = {
            let t = self.tail.locked();
            if let Some(why) = &t.stopped {
                return Err(LogError::Stopped(why.clone()));
            }
            (t.file.try_clone(), t.next_seq, t.path.clone())
        };
        let file = file.map_err(LogError::io(&path))?;
        if let Err(e) = file.sync_data() {
            // What the device holds is unknown: stop, as PostgreSQL does.
            self.tail.locked().stopped = Some(format!("flush failed: {e}"));
            return Err(LogError::io(&path)(e));
        }
        if self.tail.locked().len >= ROTATE_AT {
            self.rotate()?;
        }
        Ok(below)
    }

    /// Moves appends to a new file. The zeros of the new file are written
    /// without the appender lock; under it, the old file is flushed once
    /// more if records came meanwhile, so every file but the newest ends
    /// with a complete, flushed record.
    fn rotate(&self) -> Result<()> {
        let spare = prepare_spare(&self.dir)?;
        let mut t = self.tail.locked();
        if let Err(e) = t.file.sync_data() {
            t.stopped = Some(format!("flush failed: {e}"));
            return Err(LogError::io(&t.path)(e));
        }
        let next = Self::install(&self.dir, &self.store_id, t.next_seq, spare)?;
        let old = std::mem::replace(&mut *t, next);
        drop(t);
        self.older.locked().push((old.first_seq, old.path));
        Ok(())
    }

    /// Once every record is at or below `covered`: a new tail file, and
    /// every older file deleted (no record stays on the disk). Records
    /// appended meanwhile stay (their file is not covered).
    pub fn drain(&self, covered: u64) -> Result<()> {
        let records_covered = {
            let t = self.tail.locked();
            t.len > HEADER_LEN && t.next_seq <= covered.saturating_add(1)
        };
        if records_covered {
            self.rotate()?;
        }
        self.retire(covered)
    }

    /// Removes the files whose every record is at or below `covered`
    /// (the metadata database holds their effect durably). The tail file
    /// is kept (its header is where the next record goes).
    pub fn retire(&self, covered: u64) -> Result<()> {
        // (Lock order: tail before older, never both held.)
        let tail_first = self.tail.locked().first_seq;
        let mut older = self.older.locked();
        let mut removed = false;
        while let Some((_, path)) = older.first() {
            let next_first = older.get(1).map_or(tail_first, |(f, _)| *f);
            if next_first > covered.saturating_add(1) {
                break;
            }
            match std::fs::remove_file(path) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::io(path)(e)),
            }
            older.remove(0);
        }
        if removed {
            crate::fsutil::sync_dir(&self.dir).map_err(LogError::io(&self.dir))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: [u8; 16] = [7; 16];

    fn write_records(dir: &Path, from: u64, bodies: &[&[u8]]) -> IntentLog {
        let log = IntentLog::open(dir, ID, from).unwrap();
        for b in bodies {
            let seq = log.begin().append(b).unwrap();
            log.sync_through(seq).unwrap();
        }
        log
    }

    /// Where a file's records end (its zeros begin).
    fn records_end(data: &[u8]) -> usize {
        let mut at = HEADER_LEN as usize;
        while let Parsed::Good(_, _, len) = parse_record(&data[at..]) {
            at += len;
        }
        at
    }

    fn seqs(scan: &Scan) -> Vec<u64> {
        scan.records.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn records_read_back_in_order_and_covered_ones_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        write_records(dir.path(), 5, &[b"a", b"bb", b"ccc"]);
        let all = scan(dir.path(), &ID, 0).unwrap();
        assert_eq!(seqs(&all), [5, 6, 7]);
        assert_eq!(all.records[1].body, b"bb");
        assert!(all.torn_tail.is_none());
        assert_eq!(seqs(&scan(dir.path(), &ID, 6).unwrap()), [7]);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_damage_before_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = write_records(dir.path(), 1, &[b"first", b"second", b"third"]);
        let path = log.tail.locked().path.clone();
        drop(log);
        let good = std::fs::read(&path).unwrap();
        let end = records_end(&good);
        // Torn: the last record cut in the middle (the file cut there, or
        // its last bytes never written over the zeros).
        std::fs::write(&path, &good[..end - 3]).unwrap();
        let s = scan(dir.path(), &ID, 0).unwrap();
        assert_eq!(seqs(&s), [1, 2]);
        assert!(s.torn_tail.is_some());
        let mut torn = good.clone();
        torn[end - 3..end].fill(0);
        std::fs::write(&path, &torn).unwrap();
        let s = scan(dir.path(), &ID, 0).unwrap();
        assert_eq!(
            (seqs(&s), s.torn_tail.map(|t| t.1)),
            (vec![1, 2], Some(end as u64 - 25))
        );
        // Flipped: a byte of the first record's body, good ones after it.
        let mut bad = good.clone();
        bad[HEADER_LEN as usize + RECORD_HEADER_LEN] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let e = scan(dir.path(), &ID, 0).err().expect("damage refused");
        assert!(e.to_string().contains("record 1 at byte 40"), "{e}");
        // Another store's log.
        std::fs::write(&path, &good).unwrap();
        let e = scan(dir.path(), &[8; 16], 0)
            .err()
            .expect("foreign refused");
        assert!(e.to_string().contains("another store"), "{e}");
    }

    #[test]
    fn a_missing_file_in_the_middle_is_damage_and_retired_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let log = write_records(dir.path(), 1, &[b"x"]);
        let first = log.tail.locked().path.clone();
        drop(log);
        let log = write_records(dir.path(), 2, &[b"y"]);
        drop(log);
        write_records(dir.path(), 3, &[b"z"]);
        assert_eq!(seqs(&scan(dir.path(), &ID, 0).unwrap()), [1, 2, 3]);
        let second = dir.path().join(file_name(2));
        std::fs::rename(&second, dir.path().join("aside")).unwrap();
        let e = scan(dir.path(), &ID, 0).err().expect("gap refused");
        assert!(e.to_string().contains("starts at record 3"), "{e}");
        std::fs::rename(dir.path().join("aside"), &second).unwrap();
        let log = IntentLog::open(dir.path(), ID, 4).unwrap();
        log.retire(2).unwrap();
        assert!(!first.exists() && !second.exists());
        assert_eq!(list_files(dir.path()).unwrap().len(), 2);
    }

    #[test]
    fn a_full_file_is_rotated_and_reading_goes_on_in_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![0x5a; 1 << 20];
        let bodies: Vec<&[u8]> = (0..40).map(|_| &big[..]).collect();
        let log = write_records(dir.path(), 1, &bodies);
        assert!(log.older.locked().len() == 1);
        let s = scan(dir.path(), &ID, 0).unwrap();
        assert_eq!(s.files, 2);
        assert_eq!(seqs(&s), (1..=40).collect::<Vec<_>>());
        log.retire(40).unwrap();
        assert_eq!(list_files(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn a_drained_log_keeps_no_record_on_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let log = write_records(dir.path(), 1, &[b"one", b"two"]);
        log.drain(1).unwrap(); // record 2 is not covered: it stays
        assert_eq!(seqs(&scan(dir.path(), &ID, 0).unwrap()), [1, 2]);
        log.drain(2).unwrap();
        let s = scan(dir.path(), &ID, 0).unwrap();
        assert!(s.records.is_empty() && s.files == 1);
        let seq = log.begin().append(b"three").unwrap();
        assert_eq!(seq, 3);
    }

    #[test]
    fn concurrent_syncs_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let log = std::sync::Arc::new(IntentLog::open(dir.path(), ID, 1).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let seq = log.begin().append(&[i; 100]).unwrap();
                        log.sync_through(seq).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(scan(dir.path(), &ID, 0).unwrap().records.len(), 400);
    }
}
