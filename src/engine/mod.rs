//! The chunk engine: CDC -> keyed fingerprint -> dedup -> LZ4 -> AES-XTS ->
//! segment append, and back. Usable and tested without FUSE.
//!
//! Owns the store's `segments/` and `meta/` directories while open.
//!
//! Invariants:
//! - Only one process opens a store (an exclusive flock on `<store>/lock`).
//! - A chunk enters the durable index only after its record bytes were
//!   fdatasync'ed (`commit(true)` syncs segments, then commits the index).
//! - At open (read-write), segment bytes past their committed length are
//!   cut: they belong to no committed chunk. A database older than its
//!   checkpoint is refused first (see `checkpoint`), so this never cuts
//!   what a newer database committed. A segment file without a row
//!   is never deleted unless it holds no record (the index may be the part
//!   that is damaged or old); a missing database is never recreated for a
//!   store that holds records.
//! - A read-only open (`open_read_only`) writes nothing under the store:
//!   no segment is created, nothing is cut, the database is read through
//!   `meta::OpenMode::ReadOnly`, and writes fail with `ReadOnly`.
//! - Any failed write to a segment or the index poisons the engine: it
//!   refuses further writes, and reads of chunks not yet committed, until
//!   reopened, and reopening restores exactly the last durable commit (fail
//!   closed; committed data is never touched). Committed chunks stay
//!   readable meanwhile: every read verifies the chunk's fingerprint.
//! - Lock order: gc_gate, commit_lock, writer, pending.

mod checkpoint;
mod chunker;
pub mod compress;
mod convert;
mod damaged;
mod gc;
mod read;
mod readers;
mod scrub;
pub mod stats;
mod successors;
mod write;

use crate::poison::{Recover, RecoverRw};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::config::{EngineConfig, StoreConfig};
use crate::crypto::{ChunkCrypto, Fingerprint, KeyRing};
use crate::meta::{ChunkChange, CommitRows, Meta, MetaError, NewRecord, OpenMode, VolumeChanges};
use crate::store::segment::{self, SegmentWriter};
use readers::{ReaderCache, SegmentReaders};

pub use checkpoint::older_than_checkpoint;
pub use convert::{GenerationCount, GenerationScan, SegmentScan};
pub use damaged::DamagedChunk;
pub use gc::GcReport;
pub use scrub::{BadRecord, ScrubReport};
pub use stats::{Stats, StatsSnapshot};

pub use crate::chunk::ChunkRef;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("integrity error in chunk {chunk}: {reason}")]
    Integrity { chunk: String, reason: String },
    #[error("chunk {0} is not in the index")]
    NotFound(String),
    #[error(
        "the engine stopped after a failed write; reopen the store (committed data is intact)"
    )]
    Poisoned,
    #[error("the store is locked: no key is loaded")]
    Locked,
    #[error("store {0} is in use by another process")]
    InUse(PathBuf),
    #[error("the store was opened read-only")]
    ReadOnly,
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    StoreConfig(#[from] crate::config::ConfigError),
    #[error(transparent)]
    InvalidConfig(#[from] crate::config::InvalidEngineConfig),
    #[error(transparent)]
    Key(#[from] keystore::KeystoreError),
    #[error("{0}")]
    Remote(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
    let what = what.into();
    move |source| EngineError::Io { what, source }
}

pub(crate) fn integrity(fp: &Fingerprint, reason: impl Into<String>) -> EngineError {
    EngineError::Integrity {
        chunk: hex::encode(&fp[..8]),
        reason: reason.into(),
    }
}

/// Index changes made since the last commit.
#[derive(Default)]
pub(crate) struct Pending {
    pub current: HashMap<Fingerprint, ChunkChange>,
    /// The batch a running commit is writing; still visible to lookups.
    pub committing: Option<Arc<HashMap<Fingerprint, ChunkChange>>>,
}

impl Pending {
    /// A change to `fp` in either batch (the newest first): Some means
    /// the chunk is stored, pending or indexed.
    pub fn get(&self, fp: &Fingerprint) -> Option<&ChunkChange> {
        self.current
            .get(fp)
            .or_else(|| self.committing.as_ref().and_then(|c| c.get(fp)))
    }

    /// Where a chunk stored since the last finished commit is: its record
    /// may be in the batch being committed while the newest batch holds
    /// only a further reference to it, so both are looked at.
    pub fn record(&self, fp: &Fingerprint) -> Option<NewRecord> {
        let in_batch = |b: &HashMap<Fingerprint, ChunkChange>| b.get(fp).and_then(|c| c.new_record);
        in_batch(&self.current).or_else(|| self.committing.as_deref().and_then(in_batch))
    }
}

pub struct Engine {
    store: PathBuf,
    segments_dir: PathBuf,
    config: EngineConfig,
    /// datastore.toml's store id (files of this store name it).
    store_id: [u8; 16],
    keys: RwLock<Option<Arc<KeyRing>>>,
    meta: Meta,
    /// None: opened read-only.
    writer: Mutex<Option<SegmentWriter>>,
    pending: Mutex<Pending>,
    commit_lock: Mutex<()>,
    gc_gate: RwLock<()>,
    /// Open read handles per segment: through the page cache, and direct.
    readers: Mutex<ReaderCache>,
    poisoned: AtomicBool,
    /// The failure that poisoned the engine (the first one), for status.
    stop_reason: Mutex<Option<String>>,
    /// The bucket mirror, once the daemon has loaded its key.
    remote: RwLock<Option<Arc<crate::remote::Remote>>>,
    /// Bumped by every index change; `index_summary` reuses its last scan
    /// while this has not moved (the dashboard polls it every 2 s).
    index_generation: AtomicU64,
    summary: Mutex<Option<(u64, IndexSummary)>>,
    /// Which chunk followed which, to skip cutting data written again.
    successors: successors::Successors,
    /// Chunks marked damaged (`datastore repair`) and not yet healed: a
    /// write of their data stores a new record instead of deduplicating.
    damaged: damaged::DamagedSet,
    /// The checkpoint writer, and the index generation its last frame
    /// holds (at open: the opening generation, so an untouched store takes
    /// no frame).
    checkpoint: Mutex<(crate::meta::checkpoint::CheckpointWriter, Option<u64>)>,
    pub stats: Stats,
    _lock: File,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding an engine lock poisons the mutex; the data it
    // guards is still consistent (every critical section is short and
    // checked), and the engine's own poison flag covers failed writes.
    m.locked()
}

impl Engine {
    /// Creates a new store directory layout with `config` (no keystore).
    pub fn create(store: &Path, store_id: &str, config: &EngineConfig) -> Result<()> {
        config.validate()?;
        for d in ["", "segments", "meta"] {
            std::fs::create_dir_all(store.join(d))
                .map_err(io_err(format!("create {}", store.join(d).display())))?;
        }
        Meta::create(&crate::meta::database_path(store))?;
        StoreConfig::new(store_id.to_string(), config.clone())
            .save(store)
            .map_err(io_err("write datastore.toml"))?;
        Ok(())
    }

    /// Opens a store for reading and writing; `crypto` is None for a
    /// locked store (scrub of headers and CRCs works, data does not).
    pub fn open(store: &Path, crypto: Option<Arc<ChunkCrypto>>) -> Result<Self> {
        Self::open_in(store, crypto, OpenMode::ReadWrite)
    }

    /// Opens a store to look at it: nothing under `store` changes (see
    /// the module comment); works on read-only media and beside another
    /// read-only open, not beside a read-write one.
    pub fn open_read_only(store: &Path) -> Result<Self> {
        Self::open_in(store, None, OpenMode::ReadOnly)
    }

    fn open_in(store: &Path, crypto: Option<Arc<ChunkCrypto>>, mode: OpenMode) -> Result<Self> {
        let cfg = StoreConfig::load(store)?;
        let config = cfg.engine.clone();
        let lock_file = lock_store(store, mode)?;
        let segments_dir = store.join("segments");
        let meta = open_meta(store, &segments_dir, mode)?;
        checkpoint::refuse_older_database(&meta, &cfg.id_bytes())?;
        let writer = match mode {
            OpenMode::ReadOnly => None,
            OpenMode::ReadWrite => {
                let next_id = recover_segments(&segments_dir, &meta)?;
                let w = SegmentWriter::create(&segments_dir, next_id, config.segment_size)
                    .map_err(io_err("create segment"))?;
                crate::fsutil::sync_dir(&segments_dir).map_err(io_err("sync segments dir"))?;
                Some(w)
            }
        };
        let damaged = damaged::DamagedSet::new(meta.damaged_chunks()?);
        Ok(Engine {
            store: store.to_path_buf(),
            segments_dir,
            config,
            store_id: cfg.id_bytes(),
            keys: RwLock::new(crypto.map(|c| Arc::new(KeyRing::single(c)))),
            meta,
            writer: Mutex::new(writer),
            pending: Mutex::new(Pending::default()),
            commit_lock: Mutex::new(()),
            gc_gate: RwLock::new(()),
            readers: Mutex::new(ReaderCache::default()),
            poisoned: AtomicBool::new(false),
            stop_reason: Mutex::new(None),
            remote: RwLock::new(None),
            index_generation: AtomicU64::new(0),
            summary: Mutex::new(None),
            successors: Default::default(),
            damaged,
            checkpoint: Mutex::new((
                crate::meta::checkpoint::CheckpointWriter::new(
                    &crate::meta::database_path(store),
                    cfg.id_bytes(),
                ),
                Some(0),
            )),
            stats: Stats::default(),
            _lock: lock_file,
        })
    }

    /// Opened with `open_read_only`: nothing under the store changes.
    pub fn is_read_only(&self) -> bool {
        lock(&self.writer).is_none()
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn store_dir(&self) -> &Path {
        &self.store
    }

    pub fn store_id(&self) -> [u8; 16] {
        self.store_id
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Loads or drops the chunk keys (unlock / lock) of a store with one
    /// key generation.
    pub fn set_crypto(&self, crypto: Option<Arc<ChunkCrypto>>) {
        self.set_keys(crypto.map(|c| Arc::new(KeyRing::single(c))));
    }

    /// Loads (or drops) the key ring: new records use its current keys;
    /// records of its retiring generation stay readable.
    pub fn set_keys(&self, keys: Option<Arc<KeyRing>>) {
        *self.keys.write_locked() = keys;
        // Its fingerprints were made with the keys before, and it holds
        // digests of plaintext: a locked engine keeps none of it.
        self.successors.clear();
    }

    /// Attaches (or detaches) the bucket mirror: from then on every durable
    /// commit returns only once the bucket has it too.
    pub fn set_remote(&self, remote: Option<Arc<crate::remote::Remote>>) {
        *self.remote.write_locked() = remote;
    }

    pub fn remote(&self) -> Option<Arc<crate::remote::Remote>> {
        self.remote.read_locked().clone()
    }

    /// The keys new records are written with.
    pub(crate) fn crypto(&self) -> Result<Arc<ChunkCrypto>> {
        Ok(self.keys()?.current.clone())
    }

    pub(crate) fn keys(&self) -> Result<Arc<KeyRing>> {
        self.keys.read_locked().clone().ok_or(EngineError::Locked)
    }

    pub(crate) fn check_poisoned(&self) -> Result<()> {
        if self.poisoned.load(Ordering::SeqCst) {
            Err(EngineError::Poisoned)
        } else {
            Ok(())
        }
    }

    pub(crate) fn poison(&self, e: EngineError) -> EngineError {
        lock(&self.stop_reason).get_or_insert_with(|| e.to_string());
        self.poisoned.store(true, Ordering::SeqCst);
        e
    }

    /// Why the engine stopped accepting writes (the first failed write),
    /// or None while it works.
    pub fn stopped(&self) -> Option<String> {
        lock(&self.stop_reason).clone()
    }

    /// Makes every put and release so far part of the index. With
    /// `durable`, segments are fdatasync'ed first and the index commit is
    /// durable when this returns.
    pub fn commit(&self, durable: bool) -> Result<()> {
        let _c = lock(&self.commit_lock);
        self.commit_locked(durable, &[], CommitRows::default(), &mut || {})
    }

    /// `commit`, with the volume's row changes in the same transaction (so
    /// a file's extents become durable with its chunks), also dropping one
    /// reference per chunk of `releases`. The releases join the batch under
    /// the commit lock, so no other commit (GC's) can make them durable
    /// without the volume's rows: a chunk is never dropped while committed
    /// metadata still names it.
    pub fn commit_volume(
        &self,
        durable: bool,
        releases: &[ChunkRef],
        rows: &VolumeChanges,
    ) -> Result<()> {
        let _c = lock(&self.commit_lock);
        let rows = CommitRows {
            volume: Some(rows),
            ..Default::default()
        };
        self.commit_locked(durable, releases, rows, &mut || {})
    }

    /// `commit`, calling `during` while the batch is being committed (it
    /// was taken from the pending changes, the index does not hold it
    /// yet): for tests of what readers see at that moment.
    #[doc(hidden)]
    pub fn commit_observed(&self, durable: bool, during: &mut dyn FnMut()) -> Result<()> {
        let _c = lock(&self.commit_lock);
        self.commit_locked(durable, &[], CommitRows::default(), during)
    }

    /// A commit, for a caller that holds the commit lock.
    fn commit_locked(
        &self,
        durable: bool,
        releases: &[ChunkRef],
        rows: CommitRows,
        during: &mut dyn FnMut(),
    ) -> Result<()> {
        self.check_poisoned()?;
        self.release(releases)?;
        let start = std::time::Instant::now();
        let (view, batch) = {
            let mut w = lock(&self.writer);
            let mut p = lock(&self.pending);
            let view = writable(&mut w)?
                .prepare_commit(durable)
                .map_err(|e| self.poison(io_err("write segment")(e)))?;
            let batch = Arc::new(std::mem::take(&mut p.current));
            p.committing = Some(batch.clone());
            (view, batch)
        };
        for f in &view.to_sync {
            f.sync_data()
                .map_err(|e| self.poison(io_err("fdatasync segment")(e)))?;
        }
        let changes: Vec<_> = batch.iter().map(|(k, v)| (*k, *v)).collect();
        during();
        let result = self
            .meta
            .apply_commit(&changes, &view.lengths, durable, &rows);
        lock(&self.pending).committing = None;
        // After the index changed, never before (see `index_summary`).
        self.bump_index_generation();
        let anomalies = result.map_err(|e| self.poison(e.into()))?;
        stats::add(&self.stats.commit_anomalies, anomalies.released_unknown);
        self.damaged.healed(&anomalies.healed);
        stats::add_since(&self.stats.ns_commit, start);
        Ok(())
    }

    /// Whether a write may be accepted (the bucket mirror's backlog limit;
    /// always without a mirror).
    pub fn admit_write(&self) -> bool {
        self.remote().is_none_or(|r| r.admit_write())
    }

    /// Whether the bucket mirror wants an upload now (its cache or backlog
    /// limit; never without a mirror).
    pub fn mirror_upload_due(&self) -> bool {
        self.remote().is_some_and(|r| r.upload_due(self))
    }

    /// Makes every durable commit so far durable in the bucket mirror too
    /// (no-op without one). Holds the commit lock, so the mirror reads a
    /// stable database; a failure leaves the local store intact and is
    /// retried by the next call.
    pub fn sync_remote(&self) -> Result<()> {
        let Some(remote) = self.remote() else {
            return Ok(());
        };
        let _c = lock(&self.commit_lock);
        remote
            .sync(self)
            .map_err(|e| EngineError::Remote(e.to_string()))
    }

    /// Drops one reference per chunk of `recipe` (effective at the next commit).
    pub fn release(&self, recipe: &[ChunkRef]) -> Result<()> {
        self.check_poisoned()?;
        let mut p = lock(&self.pending);
        for c in recipe {
            p.current
                .entry(c.fingerprint)
                .or_insert(ChunkChange {
                    new_record: None,
                    delta: 0,
                })
                .delta -= 1;
        }
        Ok(())
    }

    /// The segment file for reading. A segment the bucket mirror's cache
    /// evicted is fetched back from the bucket first.
    pub fn segment_file(&self, id: u64) -> Result<Arc<File>> {
        Ok(self.segment_files(id, false)?.0)
    }

    /// A segment's read handle, and with `direct` its direct-I/O handle
    /// where the file system has one.
    pub(crate) fn segment_files(
        &self,
        id: u64,
        direct: bool,
    ) -> Result<(Arc<File>, Option<Arc<File>>)> {
        let remote = self.remote();
        if let Some(r) = &remote {
            r.touch(id);
        }
        let handles = |r: &SegmentReaders| {
            let d = if direct {
                r.direct.clone().flatten()
            } else {
                None
            };
            (r.cached.clone(), d)
        };
        let known = lock(&self.readers).get(id);
        if let Some(r) = &known {
            if !direct || r.direct.is_some() {
                return Ok(handles(r));
            }
        }
        let path = segment::segment_path(&self.segments_dir, id);
        let cached = match known {
            Some(r) => r.cached,
            None => Arc::new(match (File::open(&path), &remote) {
                (Ok(f), _) => f,
                (Err(e), Some(r)) if e.kind() == std::io::ErrorKind::NotFound => {
                    r.fetch_segment(self, id)
                        .map_err(|e| EngineError::Remote(e.to_string()))?;
                    File::open(&path).map_err(io_err(format!("open {}", path.display())))?
                }
                (Err(e), _) => return Err(io_err(format!("open {}", path.display()))(e)),
            }),
        };
        let readers = SegmentReaders {
            cached,
            direct: direct.then(|| segment::open_direct(&path).map(Arc::new)),
        };
        lock(&self.readers).insert(id, readers.clone());
        Ok(handles(&readers))
    }

    /// Marks the index as changed (for `index_summary`'s reuse).
    pub(crate) fn bump_index_generation(&self) {
        self.index_generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The segment new records are appended to (never evicted).
    pub fn active_segment(&self) -> u64 {
        lock(&self.writer).as_ref().map_or(0, |w| w.id())
    }

    /// Drops the cached read handle of a segment (before its file goes).
    pub fn forget_reader(&self, id: u64) {
        lock(&self.readers).remove(id);
    }

    pub fn segments_dir(&self) -> &Path {
        &self.segments_dir
    }

    /// Physical bytes in segment files.
    pub fn segment_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for (_, path) in
            segment::list_segments(&self.segments_dir).map_err(io_err("list segments"))?
        {
            total += std::fs::metadata(&path)
                .map_err(io_err("stat segment"))?
                .len();
        }
        Ok(total)
    }
}

impl crate::remote::LocalStore for Engine {
    fn meta(&self) -> &Meta {
        Engine::meta(self)
    }
    fn store_dir(&self) -> &Path {
        Engine::store_dir(self)
    }
    fn segments_dir(&self) -> &Path {
        Engine::segments_dir(self)
    }
    fn active_segment(&self) -> u64 {
        Engine::active_segment(self)
    }
    fn forget_reader(&self, id: u64) {
        Engine::forget_reader(self, id)
    }
    fn segment_file(&self, id: u64) -> std::io::Result<Arc<File>> {
        Engine::segment_file(self, id).map_err(|e| std::io::Error::other(e.to_string()))
    }
    fn local_segment_bytes(&self) -> std::io::Result<u64> {
        Engine::segment_bytes(self).map_err(std::io::Error::other)
    }
}

/// The open segment's writer, or `ReadOnly`.
pub(crate) fn writable(w: &mut Option<SegmentWriter>) -> Result<&mut SegmentWriter> {
    w.as_mut().ok_or(EngineError::ReadOnly)
}

/// Takes the store's lock: exclusive for a read-write open, shared for a
/// read-only one (which, on read-only media without a lock file, needs
/// none: nothing can write there). Also held by work on files no open
/// engine may have open (`repair` putting back the database).
pub fn lock_store(store: &Path, mode: OpenMode) -> Result<File> {
    let path = store.join("lock");
    let (file, exclusive) = match mode {
        OpenMode::ReadWrite => (
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path),
            true,
        ),
        OpenMode::ReadOnly => match File::open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (File::open(store.join("datastore.toml")), false)
            }
            other => (other, false),
        },
    };
    let file = file.map_err(io_err("open store lock file"))?;
    if !crate::fsutil::try_flock(&file, exclusive) {
        return Err(EngineError::InUse(store.to_path_buf()));
    }
    Ok(file)
}

/// Opens the metadata database. Only a store without a single record may
/// get a new one in place of a missing or empty file (a store made by a
/// build that created it at first mount); otherwise that is `Missing`.
fn open_meta(store: &Path, segments_dir: &Path, mode: OpenMode) -> Result<Meta> {
    let path = crate::meta::database_path(store);
    match Meta::open(&path, mode) {
        Err(MetaError::Missing(p))
            if mode == OpenMode::ReadWrite && holds_no_record(segments_dir)? =>
        {
            Meta::create(&p)?;
            Ok(Meta::open(&p, mode)?)
        }
        other => Ok(other?),
    }
}

/// True when no segment file holds more than its header.
fn holds_no_record(dir: &Path) -> Result<bool> {
    for (_, path) in
        segment::list_segments(dir).map_err(io_err(format!("list {}", dir.display())))?
    {
        let len = std::fs::metadata(&path)
            .map_err(io_err(format!("stat {}", path.display())))?
            .len();
        if len > segment::SEGMENT_HEADER_LEN {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Brings segment files in line with the last durable commit: cuts bytes
/// past the committed length (a crash's unfinished batch: no committed
/// entry names them, and a store that filled its disk needs that space
/// back to open; a database older than that is refused before this, see
/// `checkpoint`), removes files that hold no record (with their rows),
/// keeps files without a row that hold records (reported). Returns the
/// next free segment id.
fn recover_segments(dir: &Path, meta: &Meta) -> Result<u64> {
    let rows: HashMap<u64, (u64, u64)> = meta
        .segments()?
        .into_iter()
        .map(|(id, c, l)| (id, (c, l)))
        .collect();
    let retired: std::collections::HashSet<u64> = meta.retired_segments()?.into_iter().collect();
    let files = segment::list_segments(dir).map_err(io_err(format!("list {}", dir.display())))?;
    let mut next = rows.keys().chain(&retired).max().map_or(1, |m| m + 1);
    let mut present = std::collections::HashSet::new();
    for (id, path) in files {
        next = next.max(id + 1);
        let len = std::fs::metadata(&path)
            .map_err(io_err(format!("stat {}", path.display())))?
            .len();
        let holds_records = len > segment::SEGMENT_HEADER_LEN;
        match rows.get(&id) {
            // GC moved every record out and committed that: it knows.
            None if retired.contains(&id) => std::fs::remove_file(&path)
                .map_err(io_err(format!("remove compacted {}", path.display())))?,
            None if holds_records => crate::log_line!(
                "datastore: {} is not in the index ({len} bytes): left in place",
                path.display()
            ),
            None => std::fs::remove_file(&path)
                .map_err(io_err(format!("remove empty {}", path.display())))?,
            Some(&(committed, live)) if live == 0 && committed <= segment::SEGMENT_HEADER_LEN => {
                std::fs::remove_file(&path)
                    .map_err(io_err(format!("remove empty {}", path.display())))?;
            }
            Some(&(committed, _)) => {
                present.insert(id);
                if len > committed {
                    cut_uncommitted_tail(&path, committed)?;
                }
                // A file shorter than committed is damage: scrub reports it.
            }
        }
    }
    let gone: Vec<u64> = rows
        .iter()
        .filter(|(id, (_, live))| !present.contains(*id) && *live == 0)
        .map(|(id, _)| *id)
        .collect();
    let retired: Vec<u64> = retired.into_iter().collect();
    if !gone.is_empty() || !retired.is_empty() {
        meta.forget_segments(&gone, &retired)?;
    }
    crate::fsutil::sync_dir(dir).map_err(io_err("sync segments dir"))?;
    Ok(next)
}

fn cut_uncommitted_tail(path: &Path, committed: u64) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(format!("open {}", path.display())))?;
    f.set_len(committed)
        .and_then(|_| f.sync_all())
        .map_err(io_err(format!(
            "cut uncommitted tail of {}",
            path.display()
        )))
}

impl Engine {
    /// What the index holds: chunk counts and logical vs unique bytes.
    pub fn index_summary(&self) -> Result<IndexSummary> {
        let generation = self.index_generation.load(Ordering::SeqCst);
        if let Some((g, mut s)) = *lock(&self.summary) {
            if g == generation {
                s.physical_bytes = self.segment_bytes()?;
                return Ok(s);
            }
        }
        let mut s = IndexSummary::default();
        self.meta.for_each_chunk(|_, e| {
            s.chunks += 1;
            if e.refcount > 0 {
                s.live_chunks += 1;
                s.unique_bytes += e.plain_len as u64;
                s.logical_bytes += e.plain_len as u64 * e.refcount;
            }
        })?;
        s.segments = self.meta.segments()?.len() as u64;
        s.physical_bytes = self.segment_bytes()?;
        *lock(&self.summary) = Some((generation, s));
        Ok(s)
    }
}

/// Capacity and data-reduction figures (for `status`).
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct IndexSummary {
    /// Index entries, live or awaiting GC.
    pub chunks: u64,
    pub live_chunks: u64,
    /// Bytes as written by users (each reference counted).
    pub logical_bytes: u64,
    /// Bytes of distinct live chunks before compression.
    pub unique_bytes: u64,
    /// Bytes of segment files on disk.
    pub physical_bytes: u64,
    pub segments: u64,
}

impl IndexSummary {
    pub fn dedup_ratio(&self) -> f64 {
        ratio(self.logical_bytes, self.unique_bytes)
    }
    pub fn compression_ratio(&self) -> f64 {
        ratio(self.unique_bytes, self.physical_bytes)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}
