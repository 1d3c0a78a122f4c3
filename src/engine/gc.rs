//! Garbage collection: compacts segments whose live fraction fell below a
//! threshold by copying their live records (still encrypted, byte for byte)
//! into the open segment, then dropping the old segment.
//!
//! Crash safety, per compacted segment: (1) copies are appended and
//! fdatasync'ed; (2) one durable index transaction moves the live entries,
//! removes the dead ones and drops the old segment's row; (3) the old file
//! is unlinked. A crash before (2) leaves the copies past the committed
//! length (cut at open); a crash between (2) and (3) leaves a file without a
//! row (deleted at open). Memory is bounded by one segment.

use super::{io_err, lock, Engine, Result};
use crate::chunk::Fingerprint;
use crate::poison::RecoverRw;
use crate::store::segment::{self, WalkItem};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    pub segments_compacted: u64,
    pub records_moved: u64,
    pub bytes_moved: u64,
    pub dead_chunks_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Segments skipped because they hold damaged records (scrub them).
    pub segments_skipped_damaged: Vec<u64>,
    /// Segments skipped because their file is not here (evicted to the
    /// bucket mirror, or missing: scrub reports that).
    pub segments_skipped_not_local: Vec<u64>,
}

impl Engine {
    /// Compacts every sealed segment whose live bytes are below
    /// `threshold` (0.0..=1.0) of its size. Writes and reads wait while it
    /// compacts a segment (one at a time), not for the whole run.
    pub fn gc(&self, threshold: f64) -> Result<GcReport> {
        self.gc_with_hook(threshold, |_| {})
    }

    /// `gc` with a hook called after each segment (tests use it to crash).
    pub fn gc_with_hook(&self, threshold: f64, after_segment: impl FnMut(u64)) -> Result<GcReport> {
        self.compact(
            |_, committed, live| {
                let size = committed.saturating_sub(segment::SEGMENT_HEADER_LEN);
                (live as f64) < threshold * size as f64
            },
            after_segment,
        )
    }

    /// Compacts exactly the segments in `ids` whatever their live fraction
    /// (the open one is sealed first, so it can be among them): a key
    /// conversion's finish drops the segments that hold old-key records.
    pub fn gc_segments(&self, ids: &std::collections::BTreeSet<u64>) -> Result<GcReport> {
        self.compact(|id, _, _| ids.contains(&id), |_| {})
    }

    /// Compacts the sealed segments `pick(id, committed, live)` chooses.
    fn compact(
        &self,
        pick: impl Fn(u64, u64, u64) -> bool,
        mut after_segment: impl FnMut(u64),
    ) -> Result<GcReport> {
        let (mut report, candidates) = {
            let _gate = self.gc_gate.write_locked();
            self.commit(true)?;
            let _c = lock(&self.commit_lock);
            let report = GcReport {
                bytes_before: self.segment_bytes()?,
                ..Default::default()
            };
            let mut w = lock(&self.writer);
            let w = super::writable(&mut w)?;
            w.force_roll()
                .map_err(|e| self.poison(io_err("roll segment")(e)))?;
            let open_id = w.id();
            let candidates: Vec<(u64, u64)> = self
                .meta
                .segments()?
                .into_iter()
                .filter(|&(id, committed, live)| id != open_id && pick(id, committed, live))
                .map(|(id, committed, _)| (id, committed))
                .collect();
            (report, candidates)
        };
        for (id, committed) in candidates {
            let path = segment::segment_path(&self.segments_dir, id);
            if !path.exists() {
                // Evicted to the bucket mirror: bring it back to compact it.
                if let Some(r) = self.remote() {
                    if let Err(e) = r.fetch_segment_file(self, id) {
                        crate::log_line!("datastore: gc skips segment {id}: {e}");
                    }
                }
            }
            // One segment at a time behind the gate, so reads and writes
            // wait for one segment's compaction, not the whole run. What
            // they changed meanwhile is committed first: the index is then
            // the whole truth about which of its records are live.
            // The file is read first: a sealed segment changes only by GC.
            let image = match std::fs::read(&path) {
                Ok(mut b) => {
                    b.truncate(committed as usize);
                    b
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Never drop a segment whose records we did not see:
                    // live entries may point into it.
                    report.segments_skipped_not_local.push(id);
                    continue;
                }
                Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
            };
            let gate = self.gc_gate.write_locked();
            self.commit(true)?;
            let commit_lock = lock(&self.commit_lock);
            let mut writer = lock(&self.writer);
            let w = super::writable(&mut writer)?;
            let view = self.meta.read()?;
            let mut moves: Vec<(Fingerprint, u64, u64)> = Vec::new();
            let mut dead: Vec<Fingerprint> = Vec::new();
            let mut damaged = false;
            let mut err = None;
            segment::walk_records(&image, id, |item| match item {
                WalkItem::Damaged { .. } => damaged = true,
                WalkItem::Record {
                    offset,
                    header,
                    bytes,
                } => {
                    let fp = header.fingerprint;
                    match view.lookup(&fp) {
                        Ok(Some(e)) if e.segment == id && e.offset == offset => {
                            if e.refcount == 0 {
                                dead.push(fp);
                            } else {
                                match w.append(bytes) {
                                    Ok((s, o)) => {
                                        moves.push((fp, s, o));
                                        report.bytes_moved += bytes.len() as u64;
                                    }
                                    Err(e) => err = Some(e),
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(e) => err = err.take().or(Some(std::io::Error::other(e.to_string()))),
                    }
                }
            });
            drop(view);
            if let Some(e) = err {
                return Err(self.poison(io_err("gc copy")(e)));
            }
            if damaged && !image.is_empty() {
                // Never drop a segment we cannot fully read: the index may
                // still point into its damaged part.
                report.segments_skipped_damaged.push(id);
                if moves.is_empty() {
                    continue;
                }
            }
            let view = w
                .prepare_commit(true)
                .map_err(|e| self.poison(io_err("write segment")(e)))?;
            for f in &view.to_sync {
                f.sync_data()
                    .map_err(|e| self.poison(io_err("fdatasync segment")(e)))?;
            }
            let drop_ids: &[u64] = if damaged && !image.is_empty() {
                &[]
            } else {
                &[id]
            };
            let relocated = self
                .meta
                .apply_relocation(&moves, &dead, &view.lengths, drop_ids);
            // After the change, never before: a scan in between must not be
            // taken for the new state.
            self.bump_index_generation();
            relocated.map_err(|e| self.poison(e.into()))?;
            report.records_moved += moves.len() as u64;
            report.dead_chunks_removed += dead.len() as u64;
            if !drop_ids.is_empty() {
                lock(&self.readers).remove(id);
            }
            // The index no longer names the segment, and requests look it
            // up behind the gate: the file goes without holding anyone up
            // (unlinking can be slow, e.g. with online discard).
            drop((writer, commit_lock, gate));
            if !drop_ids.is_empty() {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(format!("remove {}", path.display()))(e)),
                }
                crate::fsutil::sync_dir(&self.segments_dir).map_err(io_err("sync segments dir"))?;
                report.segments_compacted += 1;
            }
            after_segment(id);
        }
        report.bytes_after = self.segment_bytes()?;
        Ok(report)
    }
}
