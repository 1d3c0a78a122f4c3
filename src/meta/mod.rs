//! The metadata database (redb) behind typed accessors.
//!
//! Owns the chunk index and the segment table:
//! - `chunks`:   fingerprint -> (segment, offset, record_len, plain_len, refcount)
//! - `segments`: segment id  -> (committed_len, live_bytes)
//! - `retired_segments`: ids of segments GC emptied (file maybe not yet gone)
//! - `damaged_chunks`: fingerprints whose record failed verification; a
//!   commit that brings a new record for one moves its entry there
//! - `engine_state`: `checkpoint_seq`, the newest checkpoint frame this
//!   database's content went into (see `checkpoint`)
//!
//! Invariants (kept by `apply_commit` and `apply_relocation`, the only
//! writers):
//! - an index entry points at a record whose bytes were fdatasync'ed before
//!   the durable commit that made the entry durable;
//! - `live_bytes` of a segment is the sum of `record_len` over its entries
//!   with refcount > 0;
//! - entries with refcount 0 stay until GC removes them (so a concurrent
//!   writer that deduplicated against one can revive it safely).

/// Where a store keeps its metadata database.
pub fn database_path(store: &Path) -> PathBuf {
    store.join("meta").join("index.redb")
}

pub mod checkpoint;
mod read_only;
mod volume_rows;

pub use volume_rows::VolumeChanges;

use crate::poison::RecoverRw;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use redb::{Database, Durability, ReadTransaction, ReadableTable, TableDefinition};

use crate::chunk::Fingerprint;

/// Page cache of the metadata database.
const CACHE_BYTES: usize = 64 << 20;

const CHUNKS: TableDefinition<[u8; 32], [u8; 32]> = TableDefinition::new("chunks");
const SEGMENTS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("segments");
/// Segments GC emptied whose file may still exist (a crash between GC's
/// commit and the unlink): id -> (). The one positive proof that a segment
/// file without a row holds nothing anyone needs.
const RETIRED: TableDefinition<u64, ()> = TableDefinition::new("retired_segments");
/// Chunks whose record failed verification (`datastore repair`): the next
/// write of the same data stores a new record and the entry moves to it.
const DAMAGED: TableDefinition<[u8; 32], ()> = TableDefinition::new("damaged_chunks");
/// Engine counters: `checkpoint_seq` (see `checkpoint`).
const STATE: TableDefinition<&str, u64> = TableDefinition::new("engine_state");
const CHECKPOINT_SEQ: &str = "checkpoint_seq";
/// Remote mirror: (segment id, start offset) -> (end offset, pack object id).
const REMOTE_PACKS: TableDefinition<(u64, u64), (u64, [u8; 16])> =
    TableDefinition::new("remote_packs");

/// One pack object in the bucket: bytes `start..end` of a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackRow {
    pub segment: u64,
    pub start: u64,
    pub end: u64,
    pub id: [u8; 16],
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata database: {0}")]
    Db(#[source] Box<redb::Error>),
    #[error("metadata database: {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata database: {0}")]
    Encoding(#[from] postcard::Error),
    /// A row whose sealed value or layout is not what this build reads.
    #[error("metadata database: {0}")]
    Row(Box<dyn std::error::Error + Send + Sync>),
    #[error("metadata database {0} already exists")]
    Exists(PathBuf),
    /// The file of a store that holds data is gone or empty: nothing was
    /// created in its place and no segment was touched.
    #[error("metadata database {0} is missing or empty; the segment files were left untouched (`datastore repair` puts back its checkpoint)")]
    Missing(PathBuf),
    #[error("metadata database {path} is corrupt ({why}); the segment files were left untouched (`datastore repair` puts back its checkpoint)")]
    Corrupt { path: PathBuf, why: String },
    /// The checkpoint cannot be replayed (missing, damaged, another store's).
    #[error("{0}")]
    Checkpoint(String),
    /// The database is older than its checkpoint: it was put back from an
    /// earlier copy. Opening it would forget (and later reclaim) data
    /// committed since.
    #[error("metadata database {path} is older than its checkpoint (it holds checkpoint {db}, the checkpoint {checkpoint}): it was put back from an earlier copy; nothing was changed")]
    Older {
        path: PathBuf,
        db: u64,
        checkpoint: u64,
    },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for MetaError {
            fn from(e: $t) -> Self { MetaError::Db(Box::new(e.into())) }
        }
    )*};
}
db_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl MetaError {
    /// An I/O failure below the database, by its errno (a full disk is
    /// ENOSPC to whoever wrote, not EIO).
    pub fn os_error(&self) -> Option<i32> {
        match self {
            MetaError::Io { source, .. } => source.raw_os_error(),
            MetaError::Db(e) => match &**e {
                redb::Error::Io(source) => source.raw_os_error(),
                _ => None,
            },
            _ => None,
        }
    }

    fn io(what: &'static str) -> impl Fn(std::io::Error) -> MetaError + Copy {
        move |source| MetaError::Io { what, source }
    }
}

/// Where a chunk's record is and how many references it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub segment: u64,
    pub offset: u64,
    pub record_len: u32,
    pub plain_len: u32,
    pub refcount: u64,
}

impl IndexEntry {
    fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(&self.segment.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..20].copy_from_slice(&self.record_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.plain_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.refcount.to_le_bytes());
        b
    }
    fn decode(b: &[u8; 32]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        IndexEntry {
            segment: u64_at(0),
            offset: u64_at(8),
            record_len: u32_at(16),
            plain_len: u32_at(20),
            refcount: u64_at(24),
        }
    }
}

/// A chunk change gathered since the last commit.
#[derive(Clone, Copy, Debug)]
pub struct ChunkChange {
    /// Set when this batch wrote the chunk's record.
    pub new_record: Option<NewRecord>,
    /// Net references added (+) or released (-).
    pub delta: i64,
}

#[derive(Clone, Copy, Debug)]
pub struct NewRecord {
    pub segment: u64,
    pub offset: u64,
    pub record_len: u32,
    pub plain_len: u32,
}

/// What a commit writes besides the chunk index, in the same transaction.
#[derive(Default, Clone, Copy)]
pub struct CommitRows<'a> {
    /// The volume's row changes (its files' metadata, made durable with
    /// the chunks they name).
    pub volume: Option<&'a VolumeChanges>,
    /// The checkpoint frame this commit's state goes into (see
    /// `checkpoint`): set by the commit right before a frame is read.
    pub checkpoint_seq: Option<u64>,
}

/// What a commit found that should not happen, and the damaged chunks it
/// healed.
#[derive(Default, Debug, Clone)]
pub struct CommitAnomalies {
    pub released_unknown: u64,
    pub healed: Vec<Fingerprint>,
}

pub struct Meta {
    path: PathBuf,
    /// Replaced only by `rewrite_fresh` (readers holding the old one see
    /// the same, unchanging content until they drop it).
    db: RwLock<Arc<Database>>,
}

fn builder() -> redb::Builder {
    // redb's default page cache is 1 GiB; the daemon's memory budget is far
    // smaller (the index and metadata pages it reads are hot).
    let mut b = Database::builder();
    b.set_cache_size(CACHE_BYTES);
    b
}

/// A new, empty database file (a store being created, or a fresh copy).
fn create_db(path: &Path) -> Result<Database, MetaError> {
    Ok(builder().create(path)?)
}

/// How a store's existing database is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Reads and writes (the mounted daemon, gc, conversions).
    ReadWrite,
    /// Nothing reaches the file (status, scrub, show, scan): writes redb
    /// makes while opening stay in memory.
    ReadOnly,
}

/// Opens an existing database; a missing, empty or damaged file is an
/// error, never replaced. redb panics on some damage: that is caught and
/// reported as corruption too.
fn open_existing(path: &Path, mode: OpenMode) -> Result<Database, MetaError> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() > 0 => {}
        Ok(_) => return Err(MetaError::Missing(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(MetaError::Missing(path.to_path_buf()))
        }
        Err(e) => return Err(MetaError::io("stat the database file")(e)),
    }
    let corrupt = |why: String| MetaError::Corrupt {
        path: path.to_path_buf(),
        why,
    };
    // redb asserts on some damage; its panic is reported as corruption, so
    // the default hook's message (and backtrace) is kept off stderr while
    // it opens (this runs at startup, before other threads could panic).
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| match mode {
        OpenMode::ReadWrite => builder().open(path),
        OpenMode::ReadOnly => builder().create_with_backend(read_only::ReadOnlyFile::open(path)?),
    });
    std::panic::set_hook(hook);
    let opened = opened.map_err(|p| corrupt(panic_text(&p)))?;
    match opened {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(why))) => Err(corrupt(why)),
        Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
            if e.kind() == std::io::ErrorKind::UnexpectedEof
                || e.kind() == std::io::ErrorKind::InvalidData =>
        {
            Err(corrupt(e.to_string()))
        }
        Err(redb::DatabaseError::UpgradeRequired(v)) => {
            Err(corrupt(format!("unknown file format version {v}")))
        }
        Err(e) => Err(e.into()),
    }
}

/// `def` in `txn`, or None when the table was never created (a store
/// from a build before it, opened read-only).
fn table_if_any<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, MetaError> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What a caught panic said.
fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "redb panicked".into())
}

fn fresh_path(path: &Path) -> PathBuf {
    path.with_extension("redb.fresh")
}

/// A fresh copy inserts rows in key order in two passes: a first pass of
/// about `FIRST_PASS` / `FIRST_PASS_OF` of the bytes (each row goes in it
/// if that keeps the first pass's bytes so far within that share of all
/// bytes so far), a second pass of the rest. redb splits a full leaf in
/// half, so rows inserted in key order alone leave every leaf half full;
/// the first pass leaves leaves half full of 5/9 of their bytes, the second
/// adds the other 4/9: 0.5 x 9/5 = 90% full. Counting bytes rather than
/// rows keeps that share in every leaf when row sizes vary (directories'
/// rows hold their entries). Measured on the metadata of a Linux source
/// tree: 54.8 MB in key order, 40.9 MB in random order, 27.6 MB in two
/// passes by row count (rows: 23 MB); a tree copied twice, 42.1 MB by row
/// count, 39.1 MB by bytes.
const FIRST_PASS: u64 = 5;
const FIRST_PASS_OF: u64 = 9;
/// redb's bookkeeping per row of a leaf (two 4-byte end offsets).
const ROW_OVERHEAD: u64 = 8;

/// Copies every row of one table (absent in `src`: nothing to copy), in
/// the two passes above; memory stays flat (each pass streams the table).
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    src: &ReadTransaction,
    dst: &redb::WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<(), MetaError> {
    let Some(from) = table_if_any(src, def)? else {
        return Ok(());
    };
    let mut to = dst.open_table(def)?;
    for first_pass in [true, false] {
        let (mut all, mut first) = (0u64, 0u64);
        for row in from.iter()? {
            let (k, v) = row?;
            let (k, v) = (k.value(), v.value());
            let len = K::as_bytes(&k).as_ref().len() + V::as_bytes(&v).as_ref().len();
            let len = len as u64 + ROW_OVERHEAD;
            all += len;
            let in_first = (first + len) * FIRST_PASS_OF <= all * FIRST_PASS;
            if in_first {
                first += len;
            }
            if in_first == first_pass {
                to.insert(k, v)?;
            }
        }
    }
    Ok(())
}

/// A consistent read view of the index.
pub struct MetaRead {
    txn: ReadTransaction,
}

/// A replay of the byte copy earlier builds wrote: one base frame.
fn legacy_replay(
    copy: &Path,
    taken: Option<std::time::SystemTime>,
) -> std::io::Result<checkpoint::Replayed> {
    let time = taken
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Ok(checkpoint::Replayed {
        frames: vec![checkpoint::FrameInfo {
            kind: checkpoint::KIND_BASE,
            seq: 0,
            time,
            db_len: std::fs::metadata(copy)?.len(),
            body_len: 0,
        }],
        stopped: None,
        damaged: false,
        end: 0,
    })
}

impl MetaRead {
    pub fn lookup(&self, fp: &Fingerprint) -> Result<Option<IndexEntry>, MetaError> {
        let Some(table) = table_if_any(&self.txn, CHUNKS)? else {
            return Ok(None);
        };
        Ok(table.get(*fp)?.map(|v| IndexEntry::decode(&v.value())))
    }
}

impl Meta {
    /// Creates the database of a new store (refuses an existing one).
    pub fn create(path: &Path) -> Result<(), MetaError> {
        if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            return Err(MetaError::Exists(path.to_path_buf()));
        }
        let db = create_db(path)?;
        Self::ensure_tables(&db)?;
        Ok(())
    }

    /// Opens the database of an existing store: it must be there (see
    /// `open_existing`).
    pub fn open(path: &Path, mode: OpenMode) -> Result<Self, MetaError> {
        if mode == OpenMode::ReadWrite {
            // A fresh copy that never replaced the database: a crash hit
            // `rewrite_fresh` before its rename.
            let _ = std::fs::remove_file(fresh_path(path));
        }
        let db = open_existing(path, mode)?;
        // Read-only: the tables, if absent, exist in memory only.
        Self::ensure_tables(&db)?;
        Ok(Meta {
            path: path.to_path_buf(),
            db: RwLock::new(Arc::new(db)),
        })
    }

    fn ensure_tables(db: &Database) -> Result<(), MetaError> {
        let txn = db.begin_write()?;
        {
            txn.open_table(CHUNKS)?;
            txn.open_table(SEGMENTS)?;
        }
        volume_rows::ensure_tables(&txn)?;
        txn.commit()?;
        Ok(())
    }

    /// The database (only meta's own code opens its tables).
    fn database(&self) -> Arc<Database> {
        self.db.read_locked().clone()
    }

    pub fn read(&self) -> Result<MetaRead, MetaError> {
        Ok(MetaRead {
            txn: self.database().begin_read()?,
        })
    }

    /// Replaces the database file with a fresh copy of its current content,
    /// so no page of an older version (freed but not overwritten in a
    /// copy-on-write file) stays on disk: `copy` copies the caller's tables,
    /// this copies the chunk index, segments and pack rows. The caller
    /// guarantees no write transaction runs meanwhile (it holds the
    /// engine's commit lock). Crash-safe: the copy is complete and durable
    /// before it is renamed over the old file, and a leftover copy is
    /// removed at open.
    pub fn rewrite_fresh(&self) -> Result<(), MetaError> {
        let fresh = fresh_path(&self.path);
        let _ = std::fs::remove_file(&fresh);
        let mut slot = self.db.write_locked();
        {
            let new = create_db(&fresh)?;
            let src = slot.begin_read()?;
            let txn = new.begin_write()?;
            copy_table(&src, &txn, CHUNKS)?;
            copy_table(&src, &txn, SEGMENTS)?;
            copy_table(&src, &txn, REMOTE_PACKS)?;
            copy_table(&src, &txn, RETIRED)?;
            copy_table(&src, &txn, DAMAGED)?;
            copy_table(&src, &txn, STATE)?;
            volume_rows::copy_tables(&src, &txn)?;
            txn.commit()?;
        }
        // redb writes some pages of zeros (parts of its allocator state):
        // they need no disk blocks.
        crate::fsutil::punch_zero_pages(&fresh).map_err(MetaError::io("punch zero pages"))?;
        std::fs::rename(&fresh, &self.path).map_err(MetaError::io("rename the fresh file"))?;
        if let Some(dir) = self.path.parent() {
            crate::fsutil::sync_dir(dir).map_err(MetaError::io("sync the meta directory"))?;
        }
        *slot = Arc::new(open_existing(&self.path, OpenMode::ReadWrite)?);
        Ok(())
    }

    /// The newest checkpoint frame this database's content went into (0:
    /// none yet).
    pub fn checkpoint_seq(&self) -> Result<u64, MetaError> {
        let txn = self.database().begin_read()?;
        let Some(table) = table_if_any(&txn, STATE)? else {
            return Ok(0);
        };
        Ok(table.get(CHECKPOINT_SEQ)?.map_or(0, |v| v.value()))
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Puts the checkpoint's image in place of the database file at `path`
    /// (offline, nothing has it open): replayed into `index.redb.restoring`,
    /// made durable, checked to open, renamed over. A store whose only
    /// second copy is the byte copy of earlier builds gets that.
    pub fn restore_checkpoint(
        path: &Path,
        store_id: &[u8; 16],
    ) -> Result<checkpoint::Replayed, MetaError> {
        let io = MetaError::io("restore the checkpoint");
        let tmp = path.with_extension("redb.restoring");
        let legacy = checkpoint::legacy_path(path);
        let replayed = if !checkpoint::path(path).exists() && legacy.exists() {
            drop(open_existing(&legacy, OpenMode::ReadOnly)?);
            std::fs::copy(&legacy, &tmp).map_err(io)?;
            let taken = std::fs::metadata(&legacy).and_then(|m| m.modified()).ok();
            legacy_replay(&tmp, taken).map_err(io)?
        } else {
            checkpoint::restore(path, store_id, &tmp).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                match e {
                    // A full disk is no fault of the checkpoint.
                    checkpoint::CheckpointError::Io(e) => io(e),
                    damage => MetaError::Checkpoint(format!(
                        "{}: {damage}",
                        checkpoint::path(path).display()
                    )),
                }
            })?
        };
        if let Err(e) = open_existing(&tmp, OpenMode::ReadOnly) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent() {
            crate::fsutil::sync_dir(dir).map_err(io)?;
        }
        if replayed.stopped.is_some() && replayed.end > 0 {
            checkpoint::cut_after(path, &replayed).map_err(|e| match e {
                checkpoint::CheckpointError::Io(e) => MetaError::io("cut the checkpoint")(e),
                damage => MetaError::Checkpoint(damage.to_string()),
            })?;
        }
        Ok(replayed)
    }

    /// Whether the database file at `path` opens (None) or why not.
    pub fn check_file(path: &Path) -> Option<MetaError> {
        open_existing(path, OpenMode::ReadOnly).err()
    }

    /// Bytes the database file occupies on disk, and bytes its rows need
    /// (keys, values and per-row bookkeeping, over every table): the
    /// difference is freed pages and the free part of leaves.
    pub fn space(&self) -> Result<(u64, u64), MetaError> {
        use std::os::unix::fs::MetadataExt;
        let on_disk = std::fs::metadata(&self.path)
            .map_err(MetaError::io("stat the database file"))?
            .blocks()
            * 512;
        let txn = self.database().begin_read()?;
        let mut rows = 0;
        for handle in txn.list_tables()? {
            let stats = redb::ReadableTableMetadata::stats(&txn.open_untyped_table(handle)?)?;
            rows += stats.stored_bytes() + stats.metadata_bytes();
        }
        Ok((on_disk, rows))
    }

    /// (id, committed_len, live_bytes) for every segment with a row.
    pub fn segments(&self) -> Result<Vec<(u64, u64, u64)>, MetaError> {
        let txn = self.database().begin_read()?;
        let table = txn.open_table(SEGMENTS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let (committed, live) = v.value();
            out.push((k.value(), committed, live));
        }
        Ok(out)
    }

    /// Calls `f` for every index entry, in fingerprint order.
    pub fn for_each_chunk(
        &self,
        mut f: impl FnMut(&Fingerprint, &IndexEntry),
    ) -> Result<(), MetaError> {
        let txn = self.database().begin_read()?;
        let table = txn.open_table(CHUNKS)?;
        for row in table.iter()? {
            let (k, v) = row?;
            f(&k.value(), &IndexEntry::decode(&v.value()));
        }
        Ok(())
    }

    /// Applies gathered chunk changes and the segments' new committed
    /// lengths in one transaction.
    pub fn apply_commit(
        &self,
        changes: &[(Fingerprint, ChunkChange)],
        segment_lengths: &[(u64, u64)],
        durable: bool,
        rows: &CommitRows,
    ) -> Result<CommitAnomalies, MetaError> {
        let mut anomalies = CommitAnomalies::default();
        let mut txn = self.database().begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        });
        {
            let mut chunks = txn.open_table(CHUNKS)?;
            let mut segs = txn.open_table(SEGMENTS)?;
            for &(id, len) in segment_lengths {
                let live = segs.get(id)?.map(|v| v.value().1).unwrap_or(0);
                segs.insert(id, (len, live))?;
            }
            let mut live_change: std::collections::HashMap<u64, i64> = Default::default();
            let mut damaged = txn.open_table(DAMAGED)?;
            for (fp, change) in changes {
                let existing = chunks.get(*fp)?.map(|v| IndexEntry::decode(&v.value()));
                let healing = existing.is_some()
                    && change.new_record.is_some()
                    && damaged.remove(*fp)?.is_some();
                let after = entry_after(existing, change, healing, &mut live_change);
                if healing {
                    anomalies.healed.push(*fp);
                }
                match after {
                    Some((entry, refs_went_negative)) => {
                        if refs_went_negative {
                            anomalies.released_unknown += 1;
                        }
                        chunks.insert(*fp, entry.encode())?;
                    }
                    None => anomalies.released_unknown += 1,
                }
            }
            for (id, d) in live_change {
                let (committed, live) = segs.get(id)?.map(|v| v.value()).unwrap_or((0, 0));
                segs.insert(id, (committed, (live as i64 + d).max(0) as u64))?;
            }
        }
        if let Some(volume) = rows.volume {
            volume.apply(&txn)?;
        }
        if let Some(seq) = rows.checkpoint_seq {
            txn.open_table(STATE)?.insert(CHECKPOINT_SEQ, seq)?;
        }
        txn.commit()?;
        Ok(anomalies)
    }

    /// GC's commit: moves live entries to their new records, removes dead
    /// entries, sets new segments' lengths and drops compacted segments'
    /// rows. Durable: the old segment files are deleted right after.
    pub fn apply_relocation(
        &self,
        moves: &[(Fingerprint, u64, u64)],
        dead: &[Fingerprint],
        segment_lengths: &[(u64, u64)],
        dropped_segments: &[u64],
    ) -> Result<(), MetaError> {
        let txn = self.database().begin_write()?;
        {
            let mut chunks = txn.open_table(CHUNKS)?;
            let mut segs = txn.open_table(SEGMENTS)?;
            for &(id, len) in segment_lengths {
                let live = segs.get(id)?.map(|v| v.value().1).unwrap_or(0);
                segs.insert(id, (len, live))?;
            }
            for (fp, seg, off) in moves {
                let Some(mut e) = chunks.get(*fp)?.map(|v| IndexEntry::decode(&v.value())) else {
                    continue;
                };
                e.segment = *seg;
                e.offset = *off;
                if e.refcount > 0 {
                    let (c, l) = segs.get(*seg)?.map(|v| v.value()).unwrap_or((0, 0));
                    segs.insert(*seg, (c, l + e.record_len as u64))?;
                }
                chunks.insert(*fp, e.encode())?;
            }
            for fp in dead {
                chunks.remove(*fp)?;
            }
            let mut retired = txn.open_table(RETIRED)?;
            for id in dropped_segments {
                segs.remove(*id)?;
                retired.insert(*id, ())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Brings the segment table in line with the entries (repair, after
    /// entries moved to records found elsewhere): drops entries without
    /// references whose segment file is gone (a writer must never
    /// deduplicate onto a record that is not there), sets each segment's
    /// live bytes from its entries, and drops the rows of segments whose
    /// file is gone and that no entry points into. `files`: the segment
    /// files present. Returns (entries dropped, rows dropped).
    pub fn reconcile_segments(
        &self,
        files: &std::collections::HashSet<u64>,
    ) -> Result<(u64, u64), MetaError> {
        let txn = self.database().begin_write()?;
        let (mut entries_dropped, mut rows_dropped) = (0, 0);
        {
            let mut chunks = txn.open_table(CHUNKS)?;
            let mut segs = txn.open_table(SEGMENTS)?;
            let mut live: std::collections::HashMap<u64, u64> = Default::default();
            let mut gone = Vec::new();
            for row in chunks.iter()? {
                let (k, v) = row?;
                let e = IndexEntry::decode(&v.value());
                if e.refcount == 0 && !files.contains(&e.segment) {
                    gone.push(k.value());
                } else if e.refcount > 0 {
                    *live.entry(e.segment).or_default() += e.record_len as u64;
                } else {
                    live.entry(e.segment).or_default();
                }
            }
            for fp in gone {
                chunks.remove(fp)?;
                entries_dropped += 1;
            }
            let rows: Vec<(u64, u64)> = segs
                .iter()?
                .map(|r| r.map(|(k, v)| (k.value(), v.value().0)))
                .collect::<Result<_, _>>()?;
            for (id, committed) in rows {
                match live.get(&id) {
                    None if !files.contains(&id) => {
                        segs.remove(id)?;
                        rows_dropped += 1;
                    }
                    l => {
                        segs.insert(id, (committed, l.copied().unwrap_or(0)))?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok((entries_dropped, rows_dropped))
    }

    /// Every pack the remote mirror holds, by segment and offset.
    pub fn remote_packs(&self) -> Result<Vec<PackRow>, MetaError> {
        let txn = self.database().begin_read()?;
        let Some(table) = table_if_any(&txn, REMOTE_PACKS)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let ((segment, start), (end, id)) = (k.value(), v.value());
            out.push(PackRow {
                segment,
                start,
                end,
                id,
            });
        }
        Ok(out)
    }

    /// Forgets `remove` and records `add`, in one durable transaction.
    pub fn update_remote_packs(
        &self,
        add: &[PackRow],
        remove: &[PackRow],
    ) -> Result<(), MetaError> {
        let txn = self.database().begin_write()?;
        {
            // Removals first, so a row may be replaced in one transaction.
            let mut t = txn.open_table(REMOTE_PACKS)?;
            for p in remove {
                t.remove((p.segment, p.start))?;
            }
            for p in add {
                t.insert((p.segment, p.start), (p.end, p.id))?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes the rows of segments (used at open for rows whose file and
    /// entries are all gone) and the retired marks of `retired`.
    pub fn forget_segments(&self, ids: &[u64], retired: &[u64]) -> Result<(), MetaError> {
        let txn = self.database().begin_write()?;
        {
            let mut segs = txn.open_table(SEGMENTS)?;
            for id in ids {
                segs.remove(*id)?;
            }
            let mut marks = txn.open_table(RETIRED)?;
            for id in retired {
                marks.remove(*id)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Marks chunks as damaged (durably): the next write of their data
    /// stores a good copy (see `apply_commit`).
    pub fn mark_damaged(&self, fps: &[Fingerprint]) -> Result<(), MetaError> {
        let txn = self.database().begin_write()?;
        {
            let mut t = txn.open_table(DAMAGED)?;
            for fp in fps {
                t.insert(*fp, ())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Chunks marked damaged and not yet written again.
    pub fn damaged_chunks(&self) -> Result<Vec<Fingerprint>, MetaError> {
        let txn = self.database().begin_read()?;
        let Some(table) = table_if_any(&txn, DAMAGED)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in table.iter()? {
            out.push(row?.0.value());
        }
        Ok(out)
    }

    /// Segments GC emptied (their files may still exist).
    pub fn retired_segments(&self) -> Result<Vec<u64>, MetaError> {
        let txn = self.database().begin_read()?;
        let Some(table) = table_if_any(&txn, RETIRED)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in table.iter()? {
            out.push(row?.0.value());
        }
        Ok(out)
    }
}
/// A chunk's index entry after one commit's `change` (None: a release of
/// a chunk the index does not know), and whether its references would
/// have gone below zero. `healing`: the change wrote a good copy of a
/// damaged chunk, so the entry moves to it (the old record is dead bytes
/// from now on). Live-byte changes per segment go to `live_change`.
fn entry_after(
    existing: Option<IndexEntry>,
    change: &ChunkChange,
    healing: bool,
    live_change: &mut std::collections::HashMap<u64, i64>,
) -> Option<(IndexEntry, bool)> {
    let at_record = |r: &NewRecord, refcount: u64| IndexEntry {
        segment: r.segment,
        offset: r.offset,
        record_len: r.record_len,
        plain_len: r.plain_len,
        refcount,
    };
    let (mut entry, old_refs) = match (existing, &change.new_record) {
        (Some(e), Some(r)) if healing => {
            if e.refcount > 0 {
                *live_change.entry(e.segment).or_default() -= e.record_len as i64;
                *live_change.entry(r.segment).or_default() += r.record_len as i64;
            }
            (at_record(r, e.refcount), e.refcount)
        }
        (Some(e), _) => (e, e.refcount),
        (None, Some(r)) => (at_record(r, 0), 0),
        (None, None) => return None,
    };
    let new_refs = (old_refs as i64).saturating_add(change.delta);
    entry.refcount = new_refs.max(0) as u64;
    let len = entry.record_len as i64;
    match (old_refs > 0, entry.refcount > 0) {
        (false, true) => *live_change.entry(entry.segment).or_default() += len,
        (true, false) => *live_change.entry(entry.segment).or_default() -= len,
        _ => {}
    }
    Some((entry, new_refs < 0))
}

#[cfg(test)]
mod tests {
    use super::MetaError;

    #[test]
    fn an_io_error_inside_the_database_keeps_its_errno_and_source() {
        let full = || std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e = MetaError::from(redb::StorageError::Io(full()));
        assert_eq!(e.os_error(), Some(libc::ENOSPC));
        assert!(std::error::Error::source(&e).is_some(), "{e}");
        let e = MetaError::from(redb::CommitError::Storage(redb::StorageError::Io(full())));
        assert_eq!(e.os_error(), Some(libc::ENOSPC));
    }
}
