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
        let (mut report, candidates) = self.gc_candidates(pick)?;
        for (id, committed) in candidates {
            let Some(image) = self.read_for_gc(id, committed, &mut report)? else {
                continue;
            };
            if self.compact_one(id, &image, &mut report)? {
                after_segment(id);
            }
        }
        report.bytes_after = self.segment_bytes()?;
        Ok(report)
    }

    /// Commits, seals the open segment and lists the sealed segments `pick`
    /// chooses as (id, committed length).
    fn gc_candidates(
        &self,
        pick: impl Fn(u64, u64, u64) -> bool,
    ) -> Result<(GcReport, Vec<(u64, u64)>)> {
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
        Ok((report, candidates))
    }

    /// A segment's committed bytes (fetched back from the bucket mirror if
    /// evicted), or None when it is not here: a segment whose records were
    /// not seen is never dropped (live entries may point into it).
    /// Read before the gate is taken: a sealed segment changes only by GC.
    fn read_for_gc(
        &self,
        id: u64,
        committed: u64,
        report: &mut GcReport,
    ) -> Result<Option<Vec<u8>>> {
        let path = segment::segment_path(&self.segments_dir, id);
        if !path.exists() {
            if let Some(r) = self.remote() {
                if let Err(e) = r.fetch_segment_file(self, id) {
                    crate::log_line!("datastore: gc skips segment {id}: {e}");
                }
            }
        }
        match std::fs::read(&path) {
            Ok(mut b) => {
                b.truncate(committed as usize);
                Ok(Some(b))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                report.segments_skipped_not_local.push(id);
                Ok(None)
            }
            Err(e) => Err(io_err(format!("read {}", path.display()))(e)),
        }
    }

    /// Compacts one segment behind the gate, so reads and writes wait for
    /// one segment's compaction, not the whole run. What they changed
    /// meanwhile is committed first: the index is then the whole truth
    /// about which of its records are live. False when nothing changed (a
    /// damaged segment with nothing live to copy).
    fn compact_one(&self, id: u64, image: &[u8], report: &mut GcReport) -> Result<bool> {
        let gate = self.gc_gate.write_locked();
        self.commit(true)?;
        let commit_lock = lock(&self.commit_lock);
        let mut writer = lock(&self.writer);
        let w = super::writable(&mut writer)?;
        let sorted = self.copy_live_records(w, id, image)?;
        report.bytes_moved += sorted.bytes_moved;
        // Never drop a segment we cannot fully read: the index may still
        // point into its damaged part.
        let damaged = sorted.damaged && !image.is_empty();
        if damaged {
            report.segments_skipped_damaged.push(id);
            if sorted.moves.is_empty() {
                return Ok(false);
            }
        }
        let view = w
            .prepare_commit(true)
            .map_err(|e| self.poison(io_err("write segment")(e)))?;
        for f in &view.to_sync {
            f.sync_data()
                .map_err(|e| self.poison(io_err("fdatasync segment")(e)))?;
        }
        let drop_ids: &[u64] = if damaged { &[] } else { &[id] };
        let relocated =
            self.meta
                .apply_relocation(&sorted.moves, &sorted.dead, &view.lengths, drop_ids);
        // After the change, never before: a scan in between must not be
        // taken for the new state.
        self.bump_index_generation();
        relocated.map_err(|e| self.poison(e.into()))?;
        report.records_moved += sorted.moves.len() as u64;
        report.dead_chunks_removed += sorted.dead.len() as u64;
        if damaged {
            return Ok(true);
        }
        lock(&self.readers).remove(id);
        // The index no longer names the segment, and requests look it up
        // behind the gate: the file goes without holding anyone up
        // (unlinking can be slow, e.g. with online discard).
        drop((writer, commit_lock, gate));
        let path = segment::segment_path(&self.segments_dir, id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("remove {}", path.display()))(e)),
        }
        crate::fsutil::sync_dir(&self.segments_dir).map_err(io_err("sync segments dir"))?;
        report.segments_compacted += 1;
        Ok(true)
    }

    /// Walks a segment image: records the index names here and still
    /// references are appended to the open segment (byte for byte), those
    /// it names here unreferenced are dead; anything else is not ours.
    fn copy_live_records(
        &self,
        w: &mut crate::store::segment::SegmentWriter,
        id: u64,
        image: &[u8],
    ) -> Result<SortedRecords> {
        let view = self.meta.read()?;
        let mut sorted = SortedRecords::default();
        let mut err = None;
        segment::walk_records(image, id, |item| match item {
            WalkItem::Damaged { .. } => sorted.damaged = true,
            WalkItem::Record {
                offset,
                header,
                bytes,
            } => {
                let fp = header.fingerprint;
                match view.lookup(&fp) {
                    Ok(Some(e)) if e.segment == id && e.offset == offset => {
                        if e.refcount == 0 {
                            sorted.dead.push(fp);
                        } else {
                            match w.append(bytes) {
                                Ok((s, o)) => {
                                    sorted.moves.push((fp, s, o));
                                    sorted.bytes_moved += bytes.len() as u64;
                                }
                                Err(e) => err = Some(e),
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => err = err.take().or(Some(std::io::Error::other(e))),
                }
            }
        });
        match err {
            Some(e) => Err(self.poison(io_err("gc copy")(e))),
            None => Ok(sorted),
        }
    }
}

/// What one segment's walk found.
#[derive(Default)]
struct SortedRecords {
    /// (fingerprint, new segment, new offset) of each copied live record.
    moves: Vec<(Fingerprint, u64, u64)>,
    /// Index entries of unreferenced records in the segment.
    dead: Vec<Fingerprint>,
    damaged: bool,
    bytes_moved: u64,
}
