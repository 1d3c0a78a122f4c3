//! Damaged chunks: finding index entries whose record fails verification,
//! marking them (`datastore repair`), and healing them when their data is
//! written again.
//!
//! Invariants:
//! - A marked chunk keeps its index entry and reference count (files still
//!   name it); only dedup changes: a write of the same data stores a new
//!   record, and the commit that makes it durable moves the entry there
//!   and drops the mark (`Meta::apply_commit`). So nothing deduplicates
//!   onto a record known to be bad.
//! - Marks are durable (`damaged_chunks` table); this set mirrors them for
//!   the write path, which looks only when the set is not empty.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::{lock, Engine, Result};
use crate::chunk::Fingerprint;
use crate::meta::IndexEntry;
use crate::store::{record, segment};

/// One index entry whose record failed verification.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DamagedChunk {
    /// Hex of the whole fingerprint.
    pub chunk: String,
    pub segment: u64,
    pub offset: u64,
    pub references: u64,
    pub reason: String,
    #[serde(skip)]
    pub fingerprint: Fingerprint,
    #[serde(skip)]
    pub record_len: u32,
}

#[derive(Default)]
pub(crate) struct DamagedSet {
    any: AtomicBool,
    set: Mutex<HashSet<Fingerprint>>,
}

impl DamagedSet {
    pub fn new(marked: Vec<Fingerprint>) -> Self {
        DamagedSet {
            any: AtomicBool::new(!marked.is_empty()),
            set: Mutex::new(marked.into_iter().collect()),
        }
    }

    /// True when `fp` is marked damaged (cheap while none is).
    pub fn contains(&self, fp: &Fingerprint) -> bool {
        self.any.load(Ordering::Relaxed) && lock(&self.set).contains(fp)
    }

    pub fn add(&self, fps: &[Fingerprint]) {
        let mut set = lock(&self.set);
        set.extend(fps.iter().copied());
        self.any.store(!set.is_empty(), Ordering::Relaxed);
    }

    /// A commit moved these to good records.
    pub fn healed(&self, fps: &[Fingerprint]) {
        if fps.is_empty() {
            return;
        }
        let mut set = lock(&self.set);
        for fp in fps {
            set.remove(fp);
        }
        self.any.store(!set.is_empty(), Ordering::Relaxed);
    }
}

impl Engine {
    /// Every referenced index entry whose record fails its checks: header
    /// and CRC always, the keyed fingerprint too when the key is loaded.
    pub fn find_damaged_chunks(&self) -> Result<Vec<DamagedChunk>> {
        let mut entries: Vec<(Fingerprint, IndexEntry)> = Vec::new();
        self.meta.for_each_chunk(|fp, e| {
            if e.refcount > 0 {
                entries.push((*fp, *e));
            }
        })?;
        let keys = self.keys().ok();
        let mut out = Vec::new();
        for (fp, e) in entries {
            let why = match self.segment_file(e.segment) {
                Err(err) => Some(err.to_string()),
                Ok(f) => match segment::read_exact_at(&f, e.offset, e.record_len as usize) {
                    Err(err) => Some(format!("cannot read the record: {err}")),
                    Ok(rec) => self.record_problem(&fp, rec, keys.as_deref()),
                },
            };
            if let Some(reason) = why {
                out.push(DamagedChunk {
                    chunk: hex::encode(fp),
                    segment: e.segment,
                    offset: e.offset,
                    references: e.refcount,
                    reason,
                    fingerprint: fp,
                    record_len: e.record_len,
                });
            }
        }
        Ok(out)
    }

    fn record_problem(
        &self,
        fp: &Fingerprint,
        rec: Vec<u8>,
        keys: Option<&crate::crypto::KeyRing>,
    ) -> Option<String> {
        let h = match record::parse_header(&rec) {
            Ok(h) => h,
            Err(e) => return Some(format!("bad record header: {e}")),
        };
        if &h.fingerprint != fp {
            return Some("the record names another chunk".into());
        }
        if !record::check_body(&h, &rec) {
            return Some("CRC mismatch".into());
        }
        let keys = keys?;
        super::read::decode_record(keys, fp, rec, &self.stats)
            .err()
            .map(|e| e.to_string())
    }

    /// Marks chunks damaged, durably: from now on a write of their data
    /// stores a good copy instead of deduplicating onto the bad one.
    pub fn mark_damaged(&self, fps: &[Fingerprint]) -> Result<()> {
        self.meta.mark_damaged(fps)?;
        self.damaged.add(fps);
        Ok(())
    }

    /// True when a write of `fp` must store a record of its own.
    pub(crate) fn is_damaged(&self, fp: &Fingerprint) -> bool {
        self.damaged.contains(fp)
    }
}

impl Engine {
    /// `Meta::reconcile_segments` against the segments present: files
    /// here, or packs in the bucket (a segment the local cache evicted).
    pub fn reconcile_segments(&self) -> Result<(u64, u64)> {
        let mut present: HashSet<u64> = segment::list_segments(&self.segments_dir)
            .map_err(super::io_err("list segments"))?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        present.extend(self.meta.remote_packs()?.iter().map(|p| p.segment));
        let r = self.meta.reconcile_segments(&present)?;
        self.bump_index_generation();
        Ok(r)
    }

    /// Points damaged entries at a good record of the same chunk found in
    /// any segment file, with or without a row (a checkpoint older than a
    /// GC, a segment the index lost); returns the entries still damaged.
    /// Segments a moved entry now points into get rows (committed up to
    /// their last valid record).
    pub fn relink_damaged(&self, damaged: Vec<DamagedChunk>) -> Result<Vec<DamagedChunk>> {
        if damaged.is_empty() {
            return Ok(damaged);
        }
        // A record can replace an entry's only if it has the entry's length.
        let wanted: std::collections::HashMap<Fingerprint, u32> = damaged
            .iter()
            .map(|d| (d.fingerprint, d.record_len))
            .collect();
        let rows: HashSet<u64> = self.meta.segments()?.iter().map(|r| r.0).collect();
        let mut found: std::collections::HashMap<Fingerprint, (u64, u64)> = Default::default();
        let mut new_rows = Vec::new();
        let dir = self.segments_dir.clone();
        for (id, path) in segment::list_segments(&dir).map_err(super::io_err("list segments"))? {
            let image =
                std::fs::read(&path).map_err(super::io_err(format!("read {}", path.display())))?;
            let mut valid_end = 0;
            let mut used = false;
            segment::walk_records(&image, id, |item| {
                if let segment::WalkItem::Record {
                    offset,
                    header,
                    bytes,
                } = item
                {
                    valid_end = offset + bytes.len() as u64;
                    if wanted.get(&header.fingerprint) == Some(&(bytes.len() as u32))
                        && !found.contains_key(&header.fingerprint)
                        && self
                            .record_problem(&header.fingerprint, bytes.to_vec(), None)
                            .is_none()
                    {
                        found.insert(header.fingerprint, (id, offset));
                        used = true;
                    }
                }
            });
            if used && !rows.contains(&id) {
                new_rows.push((id, valid_end));
            }
        }
        let moves: Vec<(Fingerprint, u64, u64)> = found
            .iter()
            .map(|(fp, (seg, off))| (*fp, *seg, *off))
            .collect();
        if !moves.is_empty() {
            self.meta.apply_relocation(&moves, &[], &new_rows, &[])?;
            self.bump_index_generation();
        }
        Ok(damaged
            .into_iter()
            .filter(|d| !found.contains_key(&d.fingerprint))
            .collect())
    }
}
