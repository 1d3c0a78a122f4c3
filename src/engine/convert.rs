//! What a key conversion needs from the engine: which key generation a
//! chunk's record is under, storing one converted chunk as it is (no
//! re-chunking, so its boundaries and dedup with fresh writes are kept),
//! taking another reference to a chunk already converted, and the scan that
//! proves no record of a retiring generation is left.
//!
//! Invariant: like every put, a converted chunk's reference is pending until
//! the next commit; the caller installs it in an extent or releases it.

use crate::poison::RecoverRw;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use super::chunker::Batch;
use super::{io_err, lock, ChunkRef, Engine, EngineError, Result};
use crate::crypto::{Fingerprint, KeyGen};
use crate::meta::ChunkChange;
use crate::store::record::{self, HEADER_LEN};
use crate::store::segment;

/// Records in the index by key generation (`scan_generations`).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GenerationScan {
    pub by_generation: Vec<GenerationCount>,
    /// Records whose header could not be read (scrub them).
    pub unreadable: u64,
    /// Segments holding records (live or dead) of each generation.
    #[serde(skip)]
    pub segments: BTreeMap<KeyGen, BTreeSet<u64>>,
}

/// Records found by walking the segment files (see `walk_generations`).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SegmentScan {
    pub segments: u64,
    /// Segments whose file is not here (evicted to the bucket mirror).
    pub segments_not_local: u64,
    pub records_by_generation: Vec<(KeyGen, u64)>,
    /// Damaged spans (run `datastore scrub`).
    pub damaged: u64,
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct GenerationCount {
    pub generation: KeyGen,
    /// Records with references.
    pub live: u64,
    /// Records awaiting GC.
    pub dead: u64,
    /// Plaintext bytes of the live ones.
    pub live_bytes: u64,
}

impl GenerationScan {
    /// Counts of every generation but `current`, summed.
    /// Segments holding any record of a generation other than `current`.
    pub fn segments_other_than(&self, current: KeyGen) -> BTreeSet<u64> {
        self.segments
            .iter()
            .filter(|(g, _)| **g != current)
            .flat_map(|(_, s)| s.iter().copied())
            .collect()
    }

    pub fn other_than(&self, current: KeyGen) -> GenerationCount {
        let mut sum = GenerationCount::default();
        for c in self
            .by_generation
            .iter()
            .filter(|c| c.generation != current)
        {
            sum.generation = c.generation;
            sum.live += c.live;
            sum.dead += c.dead;
            sum.live_bytes += c.live_bytes;
        }
        sum
    }
}

impl Engine {
    /// The key generation of a stored chunk's record (from its header).
    pub fn chunk_generation(&self, fp: &Fingerprint) -> Result<KeyGen> {
        let e = self.locate(fp)?;
        let file = self.segment_file(e.segment)?;
        let head = segment::read_exact_at(&file, e.offset, HEADER_LEN)
            .map_err(io_err(format!("read segment {:016x}", e.segment)))?;
        let h = record::parse_header(&head).map_err(|r| super::integrity(fp, r.to_string()))?;
        if &h.fingerprint != fp {
            return Err(super::integrity(fp, "record holds another chunk"));
        }
        Ok(h.key_gen())
    }

    /// Stores `data` as exactly one chunk under the current keys (dedup as
    /// usual); one reference is pending for the caller.
    pub fn put_chunk(&self, data: &[u8]) -> Result<ChunkRef> {
        let mut batch = Some(Batch {
            data: Cow::Borrowed(data),
            cuts: vec![(0, data.len())],
            fps: Vec::new(),
        });
        self.check_poisoned()?;
        let crypto = self.crypto()?;
        let refs = self.put_batches(&crypto, || Ok(batch.take()))?;
        refs.into_iter()
            .next()
            .ok_or_else(|| EngineError::Config("internal: empty chunk".into()))
    }

    /// One more reference to a chunk that is stored (pending or indexed);
    /// false when it is not (the caller stores it again instead).
    pub fn add_reference(&self, c: &ChunkRef) -> Result<bool> {
        self.check_poisoned()?;
        let _gate = self.gc_gate.read_locked();
        let indexed = lock(&self.pending).get(&c.fingerprint).is_some()
            || self.meta.read()?.lookup(&c.fingerprint)?.is_some();
        if !indexed {
            return Ok(false);
        }
        lock(&self.pending)
            .current
            .entry(c.fingerprint)
            .or_insert(ChunkChange {
                new_record: None,
                delta: 0,
            })
            .delta += 1;
        Ok(true)
    }

    /// Live records and their plaintext bytes, from the index alone (no
    /// segment reads): the size of a conversion that has just begun, when
    /// every record but the few written since is under an older key.
    pub fn live_totals(&self) -> Result<(u64, u64)> {
        let (mut chunks, mut bytes) = (0u64, 0u64);
        self.meta.for_each_chunk(|_, e| {
            if e.refcount > 0 {
                chunks += 1;
                bytes += e.plain_len as u64;
            }
        })?;
        Ok((chunks, bytes))
    }

    /// Reads the header of every indexed record and counts them by key
    /// generation (live: refcount > 0) as of the last commit. Works
    /// without keys.
    pub fn scan_generations(&self) -> Result<GenerationScan> {
        let mut entries = Vec::new();
        self.meta.for_each_chunk(|fp, e| entries.push((*fp, *e)))?;
        entries.sort_by_key(|(_, e)| (e.segment, e.offset));
        let mut counts: BTreeMap<KeyGen, GenerationCount> = BTreeMap::new();
        let mut scan = GenerationScan::default();
        for (fp, e) in entries {
            let header = self.segment_file(e.segment).and_then(|f| {
                segment::read_exact_at(&f, e.offset, HEADER_LEN).map_err(io_err("read segment"))
            });
            match header.map(|h| record::parse_header(&h)) {
                Ok(Ok(h)) if h.fingerprint == fp => {
                    scan.segments
                        .entry(h.key_gen())
                        .or_default()
                        .insert(e.segment);
                    let c = counts.entry(h.key_gen()).or_insert(GenerationCount {
                        generation: h.key_gen(),
                        ..Default::default()
                    });
                    if e.refcount > 0 {
                        c.live += 1;
                        c.live_bytes += e.plain_len as u64;
                    } else {
                        c.dead += 1;
                    }
                }
                _ => scan.unreadable += 1,
            }
        }
        scan.by_generation = counts.into_values().collect();
        Ok(scan)
    }

    /// Walks every record of every local segment file, indexed or not, and
    /// counts them by key generation: the audit that no ciphertext of an
    /// old key is left anywhere in the segments (the index scan only sees
    /// records the index names). Reads the whole store; works without keys.
    pub fn walk_generations(&self) -> Result<SegmentScan> {
        let mut counts: BTreeMap<KeyGen, u64> = BTreeMap::new();
        let mut out = SegmentScan::default();
        for (id, committed, _) in self.meta.segments()? {
            let path = segment::segment_path(&self.segments_dir, id);
            let mut image = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    out.segments_not_local += 1;
                    continue;
                }
                Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
            };
            image.truncate(committed as usize);
            out.segments += 1;
            segment::walk_records(&image, id, |item| match item {
                segment::WalkItem::Record { header, .. } => {
                    *counts.entry(header.key_gen()).or_default() += 1;
                }
                segment::WalkItem::Damaged { .. } => out.damaged += 1,
            });
        }
        out.records_by_generation = counts.into_iter().collect();
        Ok(out)
    }

    /// Replaces the metadata database with a fresh copy (see
    /// `Meta::rewrite_fresh`), holding the commit lock so nothing commits
    /// meanwhile.
    pub fn rewrite_metadata(&self) -> Result<()> {
        self.commit(true)?;
        let _c = lock(&self.commit_lock);
        self.meta.rewrite_fresh()?;
        self.bump_index_generation();
        Ok(())
    }
}
