//! The local store as a bounded cache of the bucket: a segment whose bytes
//! are all in the bucket may be evicted (its file deleted) when the local
//! segment files exceed the configured cache size, least recently read
//! first; a read of an evicted segment fetches its packs back (4 at a time)
//! into the file, and the records read from it are verified like any other
//! (CRC, decryption, keyed fingerprint).
//!
//! Never evicted: the segment being appended to, a segment whose file holds
//! bytes past its committed length (appends a commit has not recorded yet),
//! a segment with bytes not yet in the bucket, and the segment a fetch just
//! brought back.

use crate::poison::Recover;
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::sync::pack_name;
use super::LocalStore;
use super::{Remote, RemoteError};
use crate::store::segment;

fn local(what: &str, e: impl std::fmt::Display) -> RemoteError {
    RemoteError::Local(format!("{what}: {e}"))
}

impl Remote {
    /// Notes a read of segment `id` (for least-recently-read eviction).
    pub fn touch(&self, id: u64) {
        if self.cfg.cache_bytes.is_some() {
            self.last_read.locked().insert(id, Instant::now());
        }
    }

    /// Brings evicted segment `id` back from its packs, then keeps the
    /// cache within its size.
    pub fn fetch_segment(&self, engine: &dyn LocalStore, id: u64) -> Result<(), RemoteError> {
        self.fetch_segment_file(engine, id)?;
        self.enforce_cache(engine, Some(id))
    }

    /// Brings evicted segment `id` back from its packs (no key needed: the
    /// packs are the segment's bytes as they were written).
    pub fn fetch_segment_file(&self, engine: &dyn LocalStore, id: u64) -> Result<(), RemoteError> {
        let _one_at_a_time = self.fetching.locked();
        let path = segment::segment_path(engine.segments_dir(), id);
        if path.exists() {
            return Ok(());
        }
        let mut packs: Vec<_> = engine
            .meta()
            .remote_packs()
            .map_err(|e| local("read packs", e))?
            .into_iter()
            .filter(|p| p.segment == id)
            .collect();
        packs.sort_by_key(|p| p.start);
        let mut at = 0;
        for p in &packs {
            if p.start != at {
                return Err(RemoteError::Local(format!(
                    "segment {id} is neither on disk nor complete in the bucket"
                )));
            }
            at = p.end;
        }
        let names: Vec<String> = packs.iter().map(|p| pack_name(&p.id)).collect();
        let bodies = self.get_many(&names)?;
        let tmp = path.with_extension("fetch");
        let mut f = std::fs::File::create(&tmp).map_err(|e| local("create segment", e))?;
        for (p, body) in packs.iter().zip(bodies) {
            if body.len() as u64 != p.end - p.start {
                return Err(RemoteError::Local(format!(
                    "a pack of segment {id} has {} bytes, the index says {}",
                    body.len(),
                    p.end - p.start
                )));
            }
            f.write_all(&body).map_err(|e| local("write segment", e))?;
        }
        drop(f);
        std::fs::rename(&tmp, &path).map_err(|e| local("install segment", e))?;
        self.fetched.fetch_add(at, Ordering::Relaxed);
        Ok(())
    }

    /// Evicts least recently read, fully uploaded segments until the local
    /// segment files fit the cache size (no-op without a limit).
    pub fn enforce_cache(
        &self,
        engine: &dyn LocalStore,
        keep: Option<u64>,
    ) -> Result<(), RemoteError> {
        let Some(limit) = self.cfg.cache_bytes else {
            return Ok(());
        };
        // The active segment first, sizes after: a segment the writer rolled
        // away from has all its bytes in the file by the time it is listed.
        let active = engine.active_segment();
        let files =
            segment::list_segments(engine.segments_dir()).map_err(|e| local("list segments", e))?;
        let mut sizes: HashMap<u64, u64> = HashMap::new();
        for (id, path) in &files {
            if let Ok(m) = std::fs::metadata(path) {
                sizes.insert(*id, m.len());
            }
        }
        let mut total: u64 = sizes.values().sum();
        self.cached.store(total, Ordering::Relaxed);
        if total <= limit {
            return Ok(());
        }
        let committed: HashMap<u64, u64> = engine
            .meta()
            .segments()
            .map_err(|e| local("read segments", e))?
            .into_iter()
            .map(|(id, c, _)| (id, c))
            .collect();
        let mut uploaded: HashMap<u64, u64> = HashMap::new();
        for p in engine
            .meta()
            .remote_packs()
            .map_err(|e| local("read packs", e))?
        {
            let e = uploaded.entry(p.segment).or_default();
            *e = (*e).max(p.end);
        }
        let last_read = self.last_read.locked().clone();
        let mut candidates: Vec<(Option<Instant>, u64)> = sizes
            .keys()
            .copied()
            .filter(|id| {
                // Evictable: not being written, no byte past what was
                // committed (appends not yet committed live only here),
                // and everything committed is in the bucket.
                Some(*id) != keep
                    && *id != active
                    && committed.get(id).is_some_and(|c| {
                        sizes[id] == *c && uploaded.get(id).is_some_and(|u| u >= c)
                    })
            })
            .map(|id| (last_read.get(&id).copied(), id))
            .collect();
        candidates.sort();
        for (_, id) in candidates {
            if total <= limit {
                break;
            }
            engine.forget_reader(id);
            let path = segment::segment_path(engine.segments_dir(), id);
            std::fs::remove_file(&path).map_err(|e| local("evict segment", e))?;
            total -= sizes[&id];
            self.evicted.fetch_add(sizes[&id], Ordering::Relaxed);
        }
        self.cached.store(total, Ordering::Relaxed);
        Ok(())
    }
}
