//! POSIX semantics over the chunk engine, without FUSE: inodes, directory
//! entries, extents, open-file write buffers, and their sealed persistence.
//! Tested in-process; `fs` translates FUSE requests into these calls.
//!
//! Invariants:
//! - One lock (`state`) orders every metadata change. A chunk is put
//!   before any extent referencing it is installed, so a commit (which
//!   takes the changes under the lock, then writes them with the engine's
//!   batch without it) never writes an extent without its chunk. A
//!   reference a change drops is released in the batch of the commit that
//!   writes that change, never earlier.
//! - A file's content is its extents (offset -> chunk) overlaid by its
//!   write buffer; gaps are holes and read as zeros.
//! - Every extent holds one engine reference to its chunk; replacing or
//!   dropping an extent releases it.
//! - An inode with nlink 0 lives until its last open handle is released;
//!   at open, leftovers of a crash (nlink 0) are removed.

mod acl;
mod attrs;
mod commit;
pub mod convert;
mod error;
pub mod inode;
mod intent;
mod readahead;
mod store;

use crate::poison::{Recover, RecoverRw};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use error::err;
pub use error::{VResult, VolError};
pub use inode::{Extent, Inode, Kind, Time};
pub use intent::{ReplayReport, LOGGED_BUFFER_AGE};

use crate::crypto::seal::{MetaSealer, NONCE_BLOCK};
use crate::engine::{ChunkRef, Engine};

pub const ROOT: u64 = 1;
/// How full a freshly rewritten metadata database's leaves are (about;
/// see `meta::copy_table`).
const FRESH_FILL: f64 = 0.85;
/// What a fresh metadata database holds besides its tables' pages
/// (the database's header and allocator state: 1.5-1.8 MB measured).
const FRESH_BASE: u64 = 2 << 20;
/// A file's write buffer is turned into chunks once it holds this much.
const DIRTY_LIMIT: usize = 32 << 20;
/// The same for a buffer of scattered writes (more than one piece): each
/// flush re-chunks every stored chunk a write landed in, so twice the
/// writes per flush cost far less than twice the work (4 KiB random
/// writes over 2 x 256 MiB: ~20% less daemon CPU per write, the same
/// peak memory, which `TOTAL_DIRTY_LIMIT` bounds).
const SCATTERED_DIRTY_LIMIT: usize = 64 << 20;
/// Past this much buffered or being flushed in all files, writers flush
/// their own buffers (this bounds the daemon's memory).
const TOTAL_DIRTY_LIMIT: usize = 128 << 20;
/// Dirty ranges closer than this are re-chunked as one window.
const WINDOW_GAP: u64 = 256 << 10;
const NAME_MAX: usize = 255;
const XATTR_MAX: usize = 64 << 10;
/// File capabilities, dropped on write, truncate and chown.
const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// Attributes as the FUSE edge reports them.
#[derive(Clone, Debug)]
pub struct Attr {
    pub ino: u64,
    pub inode: Inode,
    pub blocks: u64,
}

/// What `setattr` may change.
#[derive(Default, Debug, Clone)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Option<Time>>, // Some(None) = now
    pub mtime: Option<Option<Time>>,
    pub ctime: Option<Time>,
}

/// setxattr's XATTR_CREATE and XATTR_REPLACE.
#[derive(Default, Clone, Copy, Debug)]
pub struct XattrFlags {
    pub create: bool,
    pub replace: bool,
}

/// Who is asking (for the ownership rules the kernel does not check).
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// One directory entry as `read_dir` lists it: (inode, kind, name).
pub type DirEntry = (u64, Kind, Vec<u8>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    Replace,
    NoReplace,
    Exchange,
}

#[derive(Default)]
struct State {
    cached: CachedRows,
    writes: WriteBuffers,
    pending: PendingChanges,
    synced: intent::SyncTracking,
    open_counts: HashMap<u64, u32>,
    next_ino: u64,
}

/// The metadata rows loaded so far (decoded, with every change applied):
/// what requests read and change. Dropped only with the volume.
#[derive(Default)]
struct CachedRows {
    inodes: HashMap<u64, Inode>,
    dirs: HashMap<u64, BTreeMap<Vec<u8>, u64>>,
    extents: HashMap<u64, BTreeMap<u64, Extent>>,
    /// Files with no extents-table rows: their inode row (as last
    /// committed, or as the commit being written) holds their extents, or
    /// they were created since the last commit. Every other file's extents
    /// are table rows.
    inline: HashSet<u64>,
    /// Directories with no dirents-table rows: their inode row holds their
    /// entries, or they were created since the last commit. Every other
    /// directory's entries are table rows.
    inline_dirs: HashSet<u64>,
}

/// File data written and not yet chunked into the store (see data.rs).
#[derive(Default)]
struct WriteBuffers {
    buffers: HashMap<u64, BTreeMap<u64, Vec<u8>>>,
    /// Buffers being chunked right now (reads overlay them under `buffers`).
    flushing: HashMap<u64, Arc<BTreeMap<u64, Vec<u8>>>>,
    /// Bytes of each buffer in `flushing` (for the memory budget).
    flushing_bytes: HashMap<u64, usize>,
    /// Inodes queued for the flusher thread.
    flush_queued: HashSet<u64>,
    buffered: HashMap<u64, usize>,
    /// For files with buffered writes: the size their stored data covers.
    /// Commits persist this size, so a crash never leaves a file longer
    /// than its stored data (reading zeros that were never written).
    stored_size: HashMap<u64, u64>,
    /// Flushed stream buffers kept for reuse (see data::recycle).
    spare_buffers: Vec<Vec<u8>>,
}

/// What the next commit writes; taken (and cleared) by the commit.
#[derive(Default)]
struct PendingChanges {
    dirty_inodes: HashSet<u64>,
    removed_inodes: HashSet<u64>,
    /// Ordered by directory, so loading one overlays only its own changes.
    dirent_changes: BTreeMap<(u64, Vec<u8>), Option<u64>>,
    extent_changes: HashMap<(u64, u64), Option<Extent>>,
    /// Chunk references the changes above dropped: released in the engine
    /// batch of the commit that writes those changes, never earlier (a
    /// commit writing the old extents must not also drop their chunks).
    deferred_releases: Vec<ChunkRef>,
    /// Counters of the `volume` table to write (None: remove) with the
    /// next commit, so they change atomically with the metadata they count.
    counter_changes: HashMap<&'static str, Option<u64>>,
}

pub struct Volume {
    engine: Arc<Engine>,
    /// Replaced (under the commit and state locks) only when a key
    /// conversion starts or ends.
    sealer: std::sync::RwLock<Arc<MetaSealer>>,
    /// Reads and writes served (a conversion backs off while they move).
    foreground_ops: std::sync::atomic::AtomicU64,
    state: Mutex<State>,
    cache: readahead::ChunkCache,
    /// Signalled whenever a flush ends.
    flushed: std::sync::Condvar,
    flusher: Mutex<Option<std::sync::mpsc::Sender<u64>>>,
    /// Held for a whole commit, so commits are written in order.
    commit_lock: Mutex<()>,
    /// Where synchronous writes go first (set by `open_intent_log`).
    intent_log: std::sync::RwLock<Option<Arc<crate::store::intent_log::IntentLog>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.locked()
}

/// Sealed values of the volume's tables by key generation.
pub fn count_sealed_in(
    meta: &crate::meta::Meta,
) -> VResult<std::collections::BTreeMap<Option<crate::crypto::KeyGen>, u64>> {
    let mut out = std::collections::BTreeMap::new();
    meta.for_each_sealed(&mut |v| {
        *out.entry(crate::crypto::seal::sealed_generation(v))
            .or_insert(0) += 1
    })?;
    Ok(out)
}

/// Every sealed value of the volume's tables (as stored: no key needed).
pub fn sealed_values_in(meta: &crate::meta::Meta) -> VResult<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    meta.for_each_sealed(&mut |v| out.push(v.to_vec()))?;
    Ok(out)
}

/// Durably reserves the next block of metadata nonces; returns its first
/// counter value (a sealer may use it and the NONCE_BLOCK - 1 after it).
pub(crate) fn reserve_nonce_block(engine: &Engine) -> VResult<u64> {
    let nonce_next = engine.meta().counter("nonce_next")?.unwrap_or(0);
    let reserve_to = nonce_next
        .checked_add(NONCE_BLOCK)
        .ok_or_else(|| VolError::io("metadata nonce space exhausted"))?;
    let rows = crate::meta::VolumeChanges {
        counters: vec![("nonce_next".into(), Some(reserve_to))],
        ..Default::default()
    };
    engine.commit_volume(true, &[], &rows)?;
    Ok(nonce_next)
}

fn blocks_of(extents: Option<&BTreeMap<u64, Extent>>, buffered: usize) -> u64 {
    let stored: u64 = extents.map_or(0, |m| m.values().map(|e| e.len as u64).sum());
    (stored + buffered as u64).div_ceil(512)
}

/// The metadata file's size on disk, if a fresh copy would save a tenth
/// of it and at least 1 MiB and it is at most `max_bytes`.
fn worth_compacting(engine: &Engine, max_bytes: u64) -> VResult<Option<u64>> {
    let (on_disk, rows) = engine.meta().space()?;
    let fresh = (rows as f64 / FRESH_FILL) as u64 + FRESH_BASE;
    let saving = on_disk.saturating_sub(fresh);
    Ok((on_disk <= max_bytes && saving >= (on_disk / 10).max(1 << 20)).then_some(on_disk))
}

/// `Volume::compact_metadata` for a store no volume has open (`datastore
/// gc`): the volume's values are copied sealed, so no key is needed.
/// Returns (bytes on disk before, after) if it compacted.
pub fn compact_metadata_offline(engine: &Engine) -> VResult<Option<(u64, u64)>> {
    let Some(before) = worth_compacting(engine, u64::MAX)? else {
        return Ok(None);
    };
    engine.rewrite_metadata()?;
    Ok(Some((before, engine.meta().space()?.0)))
}

impl Volume {
    /// Opens the volume of an engine whose keys are loaded. Reserves a new
    /// block of metadata nonces durably before sealing anything, creates the
    /// root directory on first use, and removes crash leftovers.
    pub fn open(engine: Arc<Engine>, metadata_key: &[u8; 32]) -> VResult<Self> {
        let provider = engine.crypto()?.provider;
        Self::open_with(engine, &|first| {
            MetaSealer::new(provider, metadata_key, first).map_err(VolError::io)
        })
    }

    /// `open`, with the sealer `make_sealer` builds from the first counter
    /// value of the nonce block this open reserved.
    pub fn open_with(
        engine: Arc<Engine>,
        make_sealer: &dyn Fn(u64) -> VResult<MetaSealer>,
    ) -> VResult<Self> {
        // Rows this build writes are unreadable to a build before format 3.
        crate::config::StoreConfig::upgrade_format(engine.store_dir()).map_err(VolError::io)?;
        let next_ino = engine.meta().counter("next_ino")?.unwrap_or(ROOT + 1);
        let sealer = make_sealer(reserve_nonce_block(&engine)?)?;
        let vol = Volume {
            engine,
            sealer: std::sync::RwLock::new(Arc::new(sealer)),
            foreground_ops: Default::default(),
            state: Mutex::new(State {
                next_ino,
                ..Default::default()
            }),
            cache: Default::default(),
            flushed: std::sync::Condvar::new(),
            flusher: Mutex::new(None),
            commit_lock: Mutex::new(()),
            intent_log: Default::default(),
        };
        {
            let mut st = lock(&vol.state);
            // Only a store without a root row gets a new root: a root
            // that does not open (damage, another key) is an error, never
            // replaced by an empty directory.
            let absent = match vol.load_inode(&mut st, ROOT) {
                Ok(_) => false,
                Err(e) if e.errno == libc::ENOENT && e.cause.is_none() => true,
                Err(e) => return Err(e),
            };
            if absent {
                let mut root = Inode::new(Kind::Dir, 0o755, 0, 0, ROOT);
                root.nlink = 2;
                st.cached.inodes.insert(ROOT, root);
                st.pending.dirty_inodes.insert(ROOT);
                st.cached.dirs.insert(ROOT, BTreeMap::new());
                st.cached.inline_dirs.insert(ROOT);
            }
            vol.remove_orphans(&mut st)?;
        }
        vol.commit(true)?;
        Ok(vol)
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub(crate) fn sealer(&self) -> Arc<MetaSealer> {
        self.sealer.read_locked().clone()
    }

    /// Sets (None: removes) counters of the `volume` table in the next
    /// commit, together with the changes made so far.
    pub fn set_counters(&self, changes: &[(&'static str, Option<u64>)]) {
        let mut st = lock(&self.state);
        for (k, v) in changes {
            st.pending.counter_changes.insert(k, *v);
        }
    }

    /// A counter of the `volume` table as the next commit will leave it.
    pub fn counter(&self, name: &str) -> VResult<Option<u64>> {
        if let Some(v) = lock(&self.state).pending.counter_changes.get(name) {
            return Ok(*v);
        }
        Ok(self.engine.meta().counter(name)?)
    }

    /// Sealed values by the key generation they are under (None: a value
    /// too short to carry a tag, which no writer produces).
    pub fn count_sealed(
        &self,
    ) -> VResult<std::collections::BTreeMap<Option<crate::crypto::KeyGen>, u64>> {
        count_sealed_in(self.engine.meta())
    }

    /// Rewrites the metadata database into a fresh file (no stale pages of
    /// older versions stay on disk). Commits everything first.
    pub fn rewrite_metadata(&self) -> VResult<()> {
        let _one_at_a_time = lock(&self.commit_lock);
        self.commit_locked(true)?;
        self.engine.rewrite_metadata()?;
        Ok(())
    }

    /// Commits everything durably and copies the metadata database to its
    /// checkpoint (see `Engine::write_checkpoint`).
    pub fn write_checkpoint(&self) -> VResult<()> {
        let _one_at_a_time = lock(&self.commit_lock);
        self.commit_locked(true)?;
        self.engine.write_checkpoint()?;
        Ok(())
    }

    /// Rewrites the metadata database into a fresh, dense file (see
    /// `rewrite_metadata`) when that would save a tenth of it and at
    /// least 1 MiB, and the file is at most `max_bytes` (a rewrite takes about a
    /// second per 100 MB). Returns (bytes on disk before, after) if it did.
    pub fn compact_metadata(&self, max_bytes: u64) -> VResult<Option<(u64, u64)>> {
        let Some(before) = worth_compacting(&self.engine, max_bytes)? else {
            return Ok(None);
        };
        self.rewrite_metadata()?;
        Ok(Some((before, self.engine.meta().space()?.0)))
    }

    /// Garbage collection of `ids` on a live volume: a durable commit first
    /// (so the references the volume dropped are released), then
    /// `Engine::gc_segments` without the volume's commit lock, so fsync and
    /// group commits go on between segments. What GC commits early of the
    /// engine's pending changes are new references only (a crash leaks
    /// them, space only): a release joins the batch of the commit that
    /// writes the metadata change behind it (`commit_releasing`).
    pub fn gc_segments(
        &self,
        ids: &std::collections::BTreeSet<u64>,
    ) -> VResult<crate::engine::GcReport> {
        self.commit(true)?;
        Ok(self.engine.gc_segments(ids)?)
    }

    /// Forgets the retiring keys once a conversion has converted everything.
    pub fn forget_retiring_keys(&self) -> VResult<()> {
        let _one_at_a_time = lock(&self.commit_lock);
        let _st = lock(&self.state);
        let ring = self.engine.keys()?;
        self.engine
            .set_keys(Some(Arc::new(crate::crypto::KeyRing::single(
                ring.current.clone(),
            ))));
        self.sealer().forget_retiring();
        Ok(())
    }

    /// Reads and writes served so far.
    pub fn foreground_ops(&self) -> u64 {
        self.foreground_ops
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn count_foreground_op(&self) {
        self.foreground_ops
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Inode numbers the volume has in memory (the kernel can only have
    /// cached pages of inodes it looked up through us).
    pub fn cached_inodes(&self) -> Vec<u64> {
        lock(&self.state).cached.inodes.keys().copied().collect()
    }

    // ---- loading -------------------------------------------------------

    fn load_inode<'s>(&self, st: &'s mut State, ino: u64) -> VResult<&'s mut Inode> {
        if !st.cached.inodes.contains_key(&ino) {
            if st.pending.removed_inodes.contains(&ino) {
                return err(libc::ENOENT);
            }
            let sealed = self
                .engine
                .meta()
                .inode_row(ino)?
                .ok_or(VolError::new(libc::ENOENT))?;
            let row = store::open_inode(&self.sealer(), ino, &sealed)?;
            if let Some(map) = row.extents {
                st.cached.inline.insert(ino);
                st.cached.extents.entry(ino).or_insert(map);
            }
            if let Some(mut entries) = row.entries {
                st.cached.inline_dirs.insert(ino);
                if !st.cached.dirs.contains_key(&ino) {
                    Self::apply_dirent_changes(st, ino, &mut entries);
                    st.cached.dirs.insert(ino, entries);
                }
            }
            st.cached.inodes.insert(ino, row.inode);
        }
        Ok(st.cached.inodes.get_mut(&ino).expect("just inserted"))
    }

    fn load_dir<'s>(&self, st: &'s mut State, ino: u64) -> VResult<&'s mut BTreeMap<Vec<u8>, u64>> {
        if self.load_inode(st, ino)?.kind != Kind::Dir {
            return err(libc::ENOTDIR);
        }
        if !st.cached.dirs.contains_key(&ino) {
            // (A directory whose row holds its entries got them loaded
            // with its inode.)
            let mut entries = BTreeMap::new();
            if !st.cached.inline_dirs.contains(&ino) {
                for (mac, sealed) in self.engine.meta().dirent_rows(ino)? {
                    let rec = store::open_dirent(&self.sealer(), ino, &mac, &sealed)?;
                    entries.insert(rec.name, rec.ino);
                }
            }
            Self::apply_dirent_changes(st, ino, &mut entries);
            st.cached.dirs.insert(ino, entries);
        }
        Ok(st.cached.dirs.get_mut(&ino).expect("just inserted"))
    }

    /// Uncommitted changes win over what the database says.
    fn apply_dirent_changes(st: &State, dir: u64, entries: &mut BTreeMap<Vec<u8>, u64>) {
        let from = (dir, Vec::new());
        for ((_, name), change) in st
            .pending
            .dirent_changes
            .range(from..)
            .take_while(|((p, _), _)| *p == dir)
        {
            match change {
                Some(child) => entries.insert(name.clone(), *child),
                None => entries.remove(name),
            };
        }
    }

    fn load_extents<'s>(
        &self,
        st: &'s mut State,
        ino: u64,
    ) -> VResult<&'s mut BTreeMap<u64, Extent>> {
        if !st.cached.inodes.contains_key(&ino) && !st.pending.removed_inodes.contains(&ino) {
            // An inode row that holds its extents brings them along.
            self.load_inode(st, ino)?;
        }
        if !st.cached.extents.contains_key(&ino) {
            let mut map = BTreeMap::new();
            for (off, sealed) in self.engine.meta().extent_rows(ino)? {
                map.insert(off, store::open_extent(&self.sealer(), ino, off, &sealed)?);
            }
            for ((i, off), change) in &st.pending.extent_changes {
                if *i == ino {
                    match change {
                        Some(e) => map.insert(*off, *e),
                        None => map.remove(off),
                    };
                }
            }
            st.cached.extents.insert(ino, map);
        }
        Ok(st.cached.extents.get_mut(&ino).expect("just inserted"))
    }

    fn attr_of(&self, st: &mut State, ino: u64) -> VResult<Attr> {
        let inode = self.load_inode(st, ino)?.clone();
        let blocks = if inode.kind == Kind::File {
            let buffered = st.writes.buffered.get(&ino).copied().unwrap_or(0);
            blocks_of(Some(self.load_extents(st, ino)?), buffered)
        } else {
            0
        };
        Ok(Attr { ino, inode, blocks })
    }

    fn touch(st: &mut State, ino: u64) {
        st.pending.dirty_inodes.insert(ino);
    }

    fn set_dirent(st: &mut State, parent: u64, name: &[u8], child: Option<u64>) {
        if let Some(d) = st.cached.dirs.get_mut(&parent) {
            match child {
                Some(c) => d.insert(name.to_vec(), c),
                None => d.remove(name),
            };
        }
        st.pending
            .dirent_changes
            .insert((parent, name.to_vec()), child);
    }

    fn check_name(name: &[u8]) -> VResult<()> {
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return err(libc::EINVAL);
        }
        if name.len() > NAME_MAX {
            return err(libc::ENAMETOOLONG);
        }
        Ok(())
    }

    // ---- namespace -----------------------------------------------------

    /// The state, for an operation that changes the file system: refused
    /// with EROFS once the engine stopped accepting writes (a full disk, a
    /// failed write), as a change accepted then could never be committed
    /// and would be undone at the next mount.
    fn state_for_change(&self) -> VResult<MutexGuard<'_, State>> {
        self.refuse_changes_if_stopped()?;
        Ok(lock(&self.state))
    }

    /// EROFS once the engine stopped accepting writes.
    fn refuse_changes_if_stopped(&self) -> VResult<()> {
        if self.engine.check_poisoned().is_err() {
            return err(libc::EROFS);
        }
        Ok(())
    }

    /// The paths (from the root, `/`-separated bytes) of every file whose
    /// extents name one of `chunks` (a hard link is listed once per name).
    pub fn files_using(
        &self,
        chunks: &std::collections::HashSet<crate::crypto::Fingerprint>,
    ) -> VResult<Vec<Vec<u8>>> {
        let mut found = Vec::new();
        let mut dirs = vec![(ROOT, Vec::new())];
        while let Some((dir, path)) = dirs.pop() {
            for (ino, kind, name) in self.read_dir(dir)? {
                if name == b"." || name == b".." {
                    continue;
                }
                let child = [&path[..], b"/", &name[..]].concat();
                match kind {
                    Kind::Dir => dirs.push((ino, child)),
                    Kind::File if self.uses_any(ino, chunks)? => found.push(child),
                    _ => {}
                }
            }
        }
        found.sort();
        Ok(found)
    }

    fn uses_any(
        &self,
        ino: u64,
        chunks: &std::collections::HashSet<crate::crypto::Fingerprint>,
    ) -> VResult<bool> {
        let mut st = lock(&self.state);
        let map = self.load_extents(&mut st, ino)?;
        Ok(map.values().any(|e| chunks.contains(&e.fingerprint)))
    }
}

fn inode_kind_is_file(st: &State, ino: u64) -> bool {
    st.cached
        .inodes
        .get(&ino)
        .is_some_and(|i| i.kind == Kind::File)
}

mod data;
mod import;
mod namespace;
pub use data::{Around, StatFs};
pub use import::ImportReport;
