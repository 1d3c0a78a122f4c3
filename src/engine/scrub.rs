//! Scrub: reads every committed segment and checks every record (header and
//! ciphertext CRCs without the key; decrypt + fingerprint with it), then
//! checks that every live index entry points at a good record.
//! Memory is bounded by one segment image.

use crate::poison::RecoverRw;
use rayon::prelude::*;

use super::read::decode_record;
use super::{Engine, Result};
use crate::store::record;
use crate::store::segment::{self, WalkItem};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BadRecord {
    pub segment: u64,
    pub offset: u64,
    /// First 8 bytes of the fingerprint, hex, when the header was readable.
    pub chunk: Option<String>,
    pub reason: String,
}

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct ScrubReport {
    pub segments: u64,
    pub records: u64,
    pub bytes: u64,
    /// Whether fingerprints were checked (a key was loaded).
    pub verified_with_key: bool,
    pub index_entries_checked: u64,
    pub bad: Vec<BadRecord>,
}

impl ScrubReport {
    pub fn is_clean(&self) -> bool {
        self.bad.is_empty()
    }
}

impl Engine {
    pub fn scrub(&self) -> Result<ScrubReport> {
        if !self.is_read_only() {
            self.commit(false)?;
        }
        self.scrub_committed()
    }

    /// `scrub` of what is committed, without committing first: for the
    /// mounted daemon, whose volume owns when commits happen (a commit of
    /// the chunk index alone would leave its references without the
    /// extents that make them).
    pub fn scrub_committed(&self) -> Result<ScrubReport> {
        let crypto = self.keys().ok();
        let _gate = self.gc_gate.read_locked();
        let mut report = ScrubReport {
            verified_with_key: crypto.is_some(),
            ..Default::default()
        };
        for (id, committed, _) in self.meta.segments()? {
            report.segments += 1;
            let path = segment::segment_path(&self.segments_dir, id);
            let mut image = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    report.bad.push(BadRecord {
                        segment: id,
                        offset: 0,
                        chunk: None,
                        reason: format!("cannot read segment file: {e}"),
                    });
                    continue;
                }
            };
            if (image.len() as u64) < committed {
                report.bad.push(BadRecord {
                    segment: id,
                    offset: image.len() as u64,
                    chunk: None,
                    reason: format!(
                        "segment is {} bytes, {} were committed",
                        image.len(),
                        committed
                    ),
                });
            }
            image.truncate(committed as usize);
            report.bytes += image.len() as u64;
            let mut records = Vec::new();
            segment::walk_records(&image, id, |item| match item {
                WalkItem::Record {
                    offset,
                    header,
                    bytes,
                } => records.push((offset, header, bytes)),
                WalkItem::Damaged { offset, reason } => report.bad.push(BadRecord {
                    segment: id,
                    offset,
                    // A body that fails its CRC under a header that parses:
                    // the header names the chunk.
                    chunk: image
                        .get(offset as usize..)
                        .and_then(|rest| record::parse_header(rest).ok())
                        .map(|h| hex::encode(&h.fingerprint[..8])),
                    reason,
                }),
            });
            report.records += records.len() as u64;
            if let Some(c) = &crypto {
                let bad: Vec<BadRecord> = records
                    .par_iter()
                    .filter_map(|(offset, h, bytes)| {
                        decode_record(c, &h.fingerprint, bytes.to_vec(), &self.stats)
                            .err()
                            .map(|e| BadRecord {
                                segment: id,
                                offset: *offset,
                                chunk: Some(hex::encode(&h.fingerprint[..8])),
                                reason: e.to_string(),
                            })
                    })
                    .collect();
                report.bad.extend(bad);
            }
        }
        self.check_index(&mut report)?;
        Ok(report)
    }

    /// Every live index entry must point at a valid header of its chunk.
    fn check_index(&self, report: &mut ScrubReport) -> Result<()> {
        let segs: std::collections::HashMap<u64, u64> = self
            .meta
            .segments()?
            .into_iter()
            .map(|(id, c, _)| (id, c))
            .collect();
        let mut problems = Vec::new();
        let mut checked = 0;
        self.meta.for_each_chunk(|fp, e| {
            if e.refcount == 0 {
                return;
            }
            checked += 1;
            let chunk = Some(hex::encode(&fp[..8]));
            let bad = |reason: String| BadRecord {
                segment: e.segment,
                offset: e.offset,
                chunk: chunk.clone(),
                reason,
            };
            let Some(&committed) = segs.get(&e.segment) else {
                problems.push(bad("index points into a segment that does not exist".into()));
                return;
            };
            if e.offset + e.record_len as u64 > committed {
                problems.push(bad(
                    "index points past the committed end of its segment".into()
                ));
                return;
            }
            let header = self
                .segment_file(e.segment)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    segment::read_exact_at(&f, e.offset, record::HEADER_LEN)
                        .map_err(|e| e.to_string())
                });
            match header.map(|h| record::parse_header(&h)) {
                Ok(Ok(h)) if &h.fingerprint == fp && h.record_len() == e.record_len as u64 => {}
                Ok(Ok(_)) => problems.push(bad(
                    "index entry does not match the record it points at".into(),
                )),
                Ok(Err(err)) => problems.push(bad(format!("index points at a bad header: {err}"))),
                Err(err) => problems.push(bad(format!("cannot read record: {err}"))),
            }
        })?;
        report.index_entries_checked = checked;
        report.bad.extend(problems);
        Ok(())
    }
}
