//! Write-through to the bucket and restore from it.
//!
//! `Remote::sync` runs after every durable local commit, under the engine's
//! commit lock (so the metadata database does not change underneath it):
//! 1. every committed segment byte not yet in the bucket is uploaded as
//!    packs of at most PACK_MAX bytes (PARALLEL_UPLOADS at a time), and the
//!    packs are recorded in the metadata database (durably);
//! 2. the metadata database goes up as sealed object `seq`: a journal
//!    entry of the blocks changed since the last upload (`jrnl/<seq>`), or a
//!    full checkpoint (`ckpt/<seq>`, see `journal`), with the sealed config
//!    and the keystore file;
//! 3. `head` is overwritten to name (`seq`, its base checkpoint) (an S3 PUT
//!    replaces atomically);
//! 4. only then are packs of segments the local store no longer has (GC)
//!    and the objects of a chain a new checkpoint replaced deleted.
//!
//! A failure anywhere leaves the previous head and everything it names
//! intact, keeps the backlog for the next durable commit, and is returned
//! (the caller's fsync reports EIO). `attach` rebuilds a store from head.

use crate::poison::Recover;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;

use keystore::{KatSet, Keystore};

use super::journal::{self, Shipped};
use super::LocalStore;
use super::{blob, Remote, RemoteConfig, RemoteError};
use crate::config::{StoreConfig, CONFIG_FILE};
use crate::meta::{Meta, PackRow};
use crate::store::segment;

/// Largest pack object.
pub const PACK_MAX: u64 = 8 << 20;

fn local(what: &str, e: impl std::fmt::Display) -> RemoteError {
    RemoteError::Local(format!("{what}: {e}"))
}

pub(crate) fn pack_name(id: &[u8; 16]) -> String {
    format!("packs/{}", hex::encode(id))
}

fn ckpt_name(seq: u64) -> String {
    format!("ckpt/{seq:016x}")
}

fn jrnl_name(seq: u64) -> String {
    format!("jrnl/{seq:016x}")
}

/// Every object of the chain `base..=last`.
fn chain_names(base: u64, last: u64) -> Vec<String> {
    std::iter::once(ckpt_name(base))
        .chain((base + 1..=last).map(jrnl_name))
        .collect()
}

/// Objects to upload: (name relative to the prefix, bytes).
type Objects = Vec<(String, Vec<u8>)>;

/// Bytes `from..to` of segment `seg` as new packs of at most PACK_MAX
/// bytes with random names: the objects to upload and their index rows.
fn cut_packs(
    engine: &dyn LocalStore,
    provider: keystore::Provider,
    seg: u64,
    mut from: u64,
    to: u64,
) -> Result<(Objects, Vec<PackRow>), RemoteError> {
    let file = engine
        .segment_file(seg)
        .map_err(|e| local("open segment", e))?;
    let (mut objects, mut rows) = (Vec::new(), Vec::new());
    while from < to {
        let end = to.min(from + PACK_MAX);
        let bytes = segment::read_exact_at(&file, from, (end - from) as usize)
            .map_err(|e| local("read segment", e))?;
        let mut id = [0u8; 16];
        provider.fill_random(&mut id)?;
        objects.push((pack_name(&id), bytes));
        rows.push(PackRow {
            segment: seg,
            start: from,
            end,
            id,
        });
        from = end;
    }
    Ok((objects, rows))
}

impl Remote {
    /// (newest object, its base checkpoint) of the bucket's metadata
    /// chain; (0, 0) when there is none yet.
    fn head(&self) -> Result<(u64, u64), RemoteError> {
        let Some(b) = self.get("head")? else {
            return Ok((0, 0));
        };
        let plain = self.open_blob("head", &b)?;
        let bad = || RemoteError::Config("the bucket's head object is malformed".into());
        let word = |at: usize| -> Result<u64, RemoteError> {
            Ok(u64::from_le_bytes(
                plain
                    .get(at..at + 8)
                    .ok_or_else(bad)?
                    .try_into()
                    .expect("8"),
            ))
        };
        match plain.len() {
            16 => Ok((word(0)?, word(8)?)),
            _ => Err(bad()),
        }
    }

    /// Makes everything committed locally durable in the bucket (see the
    /// module comment). Call with the engine's commit lock held.
    pub fn sync(&self, engine: &dyn LocalStore) -> Result<(), RemoteError> {
        let r = self.sync_inner(engine);
        self.note_result(r)
    }

    fn sync_inner(&self, engine: &dyn LocalStore) -> Result<(), RemoteError> {
        let ((provider, key), new_chain) = self.sealing_key()?;
        let r = self.upload(engine, provider, &key, new_chain);
        if r.is_err() && new_chain {
            self.retry_new_chain();
        }
        r
    }

    fn upload(
        &self,
        engine: &dyn LocalStore,
        provider: keystore::Provider,
        key: &keystore::LockedBox<keystore::GcmKey>,
        new_chain: bool,
    ) -> Result<(), RemoteError> {
        // 1. New packs.
        let (new_bytes, dead) = self.upload_packs(engine, provider)?;
        // 2. Metadata (journal entry or checkpoint), config, keystore.
        let store = engine.store_dir();
        let db = std::fs::read(crate::meta::database_path(store))
            .map_err(|e| local("read the metadata database", e))?;
        let hashes = journal::block_hashes(provider, &db)?;
        let mut shipped = self.shipped.locked();
        let previous = self.previous_shipment(shipped.as_ref(), new_chain)?;
        let entry = match shipped.is_some() && !new_chain {
            true => match journal::diff(&db, &previous.hashes, &hashes) {
                None if dead.is_empty() && new_bytes == 0 => {
                    // Nothing changed since the last upload.
                    self.backlog.store(0, Ordering::Relaxed);
                    drop(shipped);
                    return self.enforce_cache(engine, None);
                }
                None => Some(Vec::new()),
                Some(e) => Some(e),
            },
            false => None,
        };
        let (name, body, next) = next_object(&previous, entry, db, hashes);
        let config = std::fs::read(store.join(CONFIG_FILE)).map_err(|e| local("read config", e))?;
        let ks = std::fs::read(Keystore::dir_of(store).join(keystore::file::FILE_NAME))
            .map_err(|e| local("read keystore", e))?;
        self.put_many(vec![
            (name.clone(), blob::seal(key, &name, &body)?),
            ("config".into(), blob::seal(key, "config", &config)?),
            ("keystore".into(), ks),
        ])?;
        // 3. The head names the new object and its base.
        let mut head = Vec::with_capacity(16);
        head.extend_from_slice(&next.last.to_le_bytes());
        head.extend_from_slice(&next.base.to_le_bytes());
        self.put("head", blob::seal(key, "head", &head)?)?;
        let replaced_chain = next.base != previous.base && previous.last > 0;
        let seq = next.last;
        *shipped = Some(next);
        drop(shipped);
        self.checkpoint.store(seq, Ordering::Relaxed);
        self.uploaded.fetch_add(new_bytes, Ordering::Relaxed);
        self.backlog.store(0, Ordering::Relaxed);
        // 4. What the head no longer names.
        for p in &dead {
            self.delete(&pack_name(&p.id))?;
        }
        if replaced_chain {
            for n in chain_names(previous.base, previous.last) {
                self.delete(&n)?;
            }
        }
        self.enforce_cache(engine, None)
    }

    /// Uploads every committed byte not yet in a pack and forgets the pack
    /// rows of segments that are gone; returns the bytes uploaded and the
    /// packs to delete once a head without them is in place (those of gone
    /// segments, and those `repack` replaced).
    fn upload_packs(
        &self,
        engine: &dyn LocalStore,
        provider: keystore::Provider,
    ) -> Result<(u64, Vec<PackRow>), RemoteError> {
        let meta = engine.meta();
        let segments: HashMap<u64, u64> = meta
            .segments()
            .map_err(|e| local("read segments", e))?
            .into_iter()
            .map(|(id, committed, _)| (id, committed))
            .collect();
        let packs = meta.remote_packs().map_err(|e| local("read packs", e))?;
        let mut uploaded_to: HashMap<u64, u64> = HashMap::new();
        for p in &packs {
            let e = uploaded_to.entry(p.segment).or_default();
            *e = (*e).max(p.end);
        }
        self.measure_backlog(engine)?;
        let mut rows = Vec::new();
        let mut objects = Vec::new();
        let mut ids: Vec<_> = segments.keys().copied().collect();
        ids.sort_unstable();
        for seg in ids {
            let committed = segments[&seg];
            let at = uploaded_to.get(&seg).copied().unwrap_or(0);
            if at < committed {
                let (o, r) = cut_packs(engine, provider, seg, at, committed)?;
                objects.extend(o);
                rows.extend(r);
            }
        }
        let new_bytes: u64 = rows.iter().map(|r| r.end - r.start).sum();
        if !objects.is_empty() {
            self.put_many(objects)?;
            meta.update_remote_packs(&rows, &[])
                .map_err(|e| local("record packs", e))?;
        }
        let mut dead: Vec<PackRow> = packs
            .iter()
            .filter(|p| !segments.contains_key(&p.segment))
            .copied()
            .collect();
        if !dead.is_empty() {
            meta.update_remote_packs(&[], &dead)
                .map_err(|e| local("forget packs", e))?;
        }
        // Repacked rows are replaced in the index by `repack` itself; their
        // objects go with the dead ones once the new head is in place.
        dead.extend(self.repack(engine, provider, &segments, &packs, &rows)?);
        Ok((new_bytes, dead))
    }

    /// What the bucket's chain holds as far as this process knows (read
    /// from its head on the first upload); a new chain keeps the numbers
    /// but no block hashes, so the next object is a full checkpoint.
    fn previous_shipment(
        &self,
        shipped: Option<&Shipped>,
        new_chain: bool,
    ) -> Result<Shipped, RemoteError> {
        Ok(match shipped {
            Some(s) if !new_chain => s.clone(),
            Some(s) => Shipped {
                hashes: Vec::new(),
                journal_bytes: u64::MAX,
                ..s.clone()
            },
            None => {
                let (last, base) = self.head()?;
                Shipped {
                    base,
                    last,
                    hashes: Vec::new(),
                    journal_bytes: u64::MAX,
                }
            }
        })
    }
}

/// The next object of the chain: a journal entry while the entries since
/// the base stay under half the database, else a full checkpoint. Returns
/// (object name, body, what the bucket holds once it is the head).
fn next_object(
    previous: &Shipped,
    entry: Option<Vec<u8>>,
    db: Vec<u8>,
    hashes: Vec<[u8; 32]>,
) -> (String, Vec<u8>, Shipped) {
    let seq = previous.last + 1;
    let as_journal = entry.filter(|e| {
        !e.is_empty()
            && previous.journal_bytes.saturating_add(e.len() as u64) <= db.len() as u64 / 2
    });
    match as_journal {
        Some(e) => {
            let next = Shipped {
                base: previous.base,
                last: seq,
                hashes,
                journal_bytes: previous.journal_bytes + e.len() as u64,
            };
            (jrnl_name(seq), e, next)
        }
        None => {
            let next = Shipped {
                base: seq,
                last: seq,
                hashes,
                journal_bytes: 0,
            };
            (ckpt_name(seq), db, next)
        }
    }
}

impl Remote {
    /// Small fsyncs upload small packs. Once a segment is sealed (the writer
    /// moved on), is local and is all in the bucket in more packs than its
    /// size needs, its bytes go up again as full packs and the new rows
    /// replace the old ones; the old packs are returned, to be deleted once
    /// a head without them is in place.
    fn repack(
        &self,
        engine: &dyn LocalStore,
        provider: keystore::Provider,
        segments: &HashMap<u64, u64>,
        packs: &[PackRow],
        added: &[PackRow],
    ) -> Result<Vec<PackRow>, RemoteError> {
        let active = engine.active_segment();
        let mut by_segment: HashMap<u64, Vec<PackRow>> = HashMap::new();
        for p in packs.iter().chain(added) {
            by_segment.entry(p.segment).or_default().push(*p);
        }
        let mut replaced = Vec::new();
        for (seg, rows) in by_segment {
            let Some(&committed) = segments.get(&seg) else {
                continue;
            };
            let needed = committed.div_ceil(PACK_MAX) as usize;
            let path = segment::segment_path(engine.segments_dir(), seg);
            let covered = rows.iter().map(|r| r.end).max().unwrap_or(0) >= committed;
            if seg == active || rows.len() <= needed + 1 || !covered || !path.exists() {
                continue;
            }
            let (objects, fresh) = cut_packs(engine, provider, seg, 0, committed)?;
            self.put_many(objects)?;
            engine
                .meta()
                .update_remote_packs(&fresh, &rows)
                .map_err(|e| local("record repacked packs", e))?;
            replaced.extend(rows);
        }
        Ok(replaced)
    }
}

/// Recreates the store at `store` (absent or empty) from the bucket: the
/// keystore, unlocked with `password`, then the newest checkpoint, every
/// pack it lists, and the config last (its presence marks a complete store).
pub fn attach(
    cfg: &RemoteConfig,
    store: &Path,
    boot_dir: &Path,
    password: &[u8],
) -> Result<(), RemoteError> {
    let remote = Remote::connect(cfg)?;
    attach_keystore(&remote, cfg, store, boot_dir, password)?;
    let db = replay_chain(&remote, cfg)?;
    let config = remote
        .get("config")?
        .ok_or_else(|| RemoteError::Config(format!("{} lacks the store config", cfg.url)))?;
    let config = remote.open_blob("config", &config)?;
    let db_path = crate::meta::database_path(store);
    std::fs::create_dir_all(store.join("meta")).map_err(|e| local("create meta", e))?;
    crate::fsutil::write_atomic(&db_path, &db)
        .map_err(|e| local("write the metadata database", e))?;
    let packs = Meta::open(&db_path, crate::meta::OpenMode::ReadWrite)
        .and_then(|m| m.remote_packs())
        .map_err(|e| local("read the checkpoint's pack list", e))?;
    restore_segments(&remote, cfg, store, &packs)?;
    let text = String::from_utf8(config).map_err(|e| local("the store config", e))?;
    let mut cfg_file: StoreConfig =
        toml::from_str(&text).map_err(|e| local("the store config", e))?;
    cfg_file.remote = Some(cfg.clone());
    // Attach restores every segment; the cache limit applies from the
    // first mount on.
    cfg_file
        .save(store)
        .map_err(|e| local("write datastore.toml", e))?;
    Ok(())
}

/// Writes the bucket's keystore into the store, unlocks it with `password`
/// and hands the remote its metadata keys (and the retiring ones, as
/// objects may still be sealed under them mid-conversion).
fn attach_keystore(
    remote: &Remote,
    cfg: &RemoteConfig,
    store: &Path,
    boot_dir: &Path,
    password: &[u8],
) -> Result<(), RemoteError> {
    let ks_bytes = remote.get("keystore")?.ok_or_else(|| {
        RemoteError::Config(format!("no datastore in {} (no keystore object)", cfg.url))
    })?;
    let ks_dir = Keystore::dir_of(store);
    std::fs::create_dir_all(&ks_dir).map_err(|e| local("create the keystore directory", e))?;
    std::fs::set_permissions(&ks_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(|e| local("protect the keystore directory", e))?;
    crate::fsutil::write_atomic(&ks_dir.join(keystore::file::FILE_NAME), &ks_bytes)
        .map_err(|e| local("write the keystore", e))?;
    let mut ks = Keystore::open(store, boot_dir)?;
    let vk = ks.unlock(password, &KatSet::embedded())?;
    let retiring = match ks.retiring_key(&vk)? {
        Some(old) => Some(Remote::derive_key(old.provider(), old.metadata_key())?),
        None => None,
    };
    remote.set_keys(
        Remote::derive_key(vk.provider(), vk.metadata_key())?,
        retiring,
    );
    Ok(())
}

/// The database image the bucket's head names: its base checkpoint with
/// every journal entry of the chain applied in order.
fn replay_chain(remote: &Remote, cfg: &RemoteConfig) -> Result<Vec<u8>, RemoteError> {
    let (last, base) = remote.head()?;
    if last == 0 {
        return Err(RemoteError::Config(format!(
            "{} holds no checkpoint yet",
            cfg.url
        )));
    }
    let mut db = Vec::new();
    for (i, name) in chain_names(base, last).into_iter().enumerate() {
        let sealed = remote
            .get(&name)?
            .ok_or_else(|| RemoteError::Config(format!("{} lacks {name}", cfg.url)))?;
        let plain = remote.open_blob(&name, &sealed)?;
        if i == 0 {
            db = plain;
        } else {
            journal::apply(&mut db, &plain).map_err(|e| RemoteError::Config(e.to_string()))?;
        }
    }
    Ok(db)
}

/// Writes every pack the checkpoint lists into its segment file, then
/// syncs the files and the directory.
fn restore_segments(
    remote: &Remote,
    cfg: &RemoteConfig,
    store: &Path,
    packs: &[PackRow],
) -> Result<(), RemoteError> {
    let seg_dir = store.join("segments");
    std::fs::create_dir_all(&seg_dir).map_err(|e| local("create segments", e))?;
    let mut files: HashMap<u64, std::fs::File> = HashMap::new();
    for p in packs {
        let bytes = remote.get(&pack_name(&p.id))?.ok_or_else(|| {
            RemoteError::Config(format!("{} lacks a pack the checkpoint lists", cfg.url))
        })?;
        if bytes.len() as u64 != p.end - p.start {
            return Err(RemoteError::Config(format!(
                "a pack in {} has {} bytes, the checkpoint says {}",
                cfg.url,
                bytes.len(),
                p.end - p.start
            )));
        }
        let f = match files.entry(p.segment) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(segment::segment_path(&seg_dir, p.segment))
                    .map_err(|e| local("create a segment", e))?,
            ),
        };
        f.write_all_at(&bytes, p.start)
            .map_err(|e| local("write a segment", e))?;
    }
    for f in files.values() {
        f.sync_all().map_err(|e| local("sync a segment", e))?;
    }
    crate::fsutil::sync_dir(&seg_dir).map_err(|e| local("sync segments", e))
}
