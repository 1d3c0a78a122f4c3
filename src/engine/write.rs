//! The write path: stream -> chunks -> fingerprints -> dedup -> records.
//!
//! Per stream, chunking runs on the caller's thread while the previous batch
//! is fingerprinted, compressed and encrypted on the rayon pool (chunks the
//! successor table predicts are fingerprinted while chunking, see
//! successors.rs; every batch's chunk order is recorded there), so
//! independent streams on different threads never wait for each other except
//! for the short, in-order append into the open segment.

use crate::poison::RecoverRw;
use std::cell::RefCell;
use std::collections::HashSet;
use std::io::Read;
use std::time::Instant;

use rayon::prelude::*;

use super::chunker::{Batch, Chunker, SliceChunker};
use super::compress;
use super::successors::Predictor;
use super::{io_err, lock, stats, ChunkRef, Engine, EngineError, Result};
use crate::crypto::MIN_PAYLOAD;
use crate::crypto::{ChunkCrypto, Fingerprint};
use crate::meta::{ChunkChange, NewRecord};
use crate::store::record::{
    self, KeyGen, RecordHeader, FLAG_LZ4, FLAG_PLAIN, HEADER_LEN, TRAILER_LEN,
};

thread_local! {
    /// Room for one compressed chunk (grows to the largest chunk seen).
    static COMPRESS_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Compresses (when that shrinks it) and encrypts one chunk into a record,
/// building it in one buffer (header space, payload, trailer) without
/// copying the payload again.
pub(crate) fn encode_record(
    crypto: &ChunkCrypto,
    compression_level: u8,
    chunk: &[u8],
    fp: &Fingerprint,
    st: &stats::Stats,
) -> Result<Vec<u8>> {
    let t = Instant::now();
    // The record is built by appending (a compressed block is never longer
    // than the chunk, so it never reallocates); compression writes into a
    // per-thread scratch buffer that stays mapped.
    let mut rec = Vec::with_capacity(HEADER_LEN + chunk.len().max(MIN_PAYLOAD) + TRAILER_LEN);
    rec.resize(HEADER_LEN, 0);
    let compressed = COMPRESS_SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let max = compress::max_output(chunk.len());
        if scratch.len() < max {
            scratch.resize(max, 0);
        }
        let n = compress::compress_into(compression_level, chunk, &mut scratch[..max])?;
        rec.extend_from_slice(&scratch[..n]);
        Some(n)
    });
    let (flags, stored_len) = match compressed {
        Some(n) => (FLAG_LZ4, n),
        None => {
            rec.extend_from_slice(chunk);
            (0, chunk.len())
        }
    };
    stats::add_since(&st.ns_compress, t);
    let cipher_len = stored_len.max(MIN_PAYLOAD);
    // Padding bytes of a short payload must be zero (see FORMAT.md); the
    // trailer is written last.
    rec.resize(HEADER_LEN + cipher_len + TRAILER_LEN, 0);
    let t = Instant::now();
    let body = &mut rec[HEADER_LEN..HEADER_LEN + cipher_len];
    let (generation, plain_flag) = match crypto.generation {
        KeyGen::Plain => (0, FLAG_PLAIN),
        KeyGen::Key(g) => (g, 0),
    };
    if let Some(cipher) = &crypto.cipher {
        cipher.encrypt_in_place(body, fp)?;
    }
    let body_crc = crc32c::crc32c(body);
    stats::add_since(&st.ns_encrypt, t);
    let header = RecordHeader {
        flags: flags | plain_flag,
        generation,
        plain_len: chunk.len() as u32,
        stored_len: stored_len as u32,
        cipher_len: cipher_len as u32,
        fingerprint: *fp,
    };
    record::seal_in_place(&header, &mut rec);
    let end = HEADER_LEN + cipher_len;
    rec[end..end + TRAILER_LEN].copy_from_slice(&body_crc.to_le_bytes());
    stats::add(&st.bytes_stored_payload, stored_len as u64);
    Ok(rec)
}

/// Streams shorter than this skip the thread pool entirely.
const SMALL_STREAM: usize = 1 << 20;

/// A batch after stage 2: what stage 3 needs, owning no input bytes.
struct Prepared {
    fps: Vec<Fingerprint>,
    lens: Vec<u32>,
    /// Whether each chunk was already stored when the batch was prepared.
    known: Vec<bool>,
    /// Encoded records of new chunks, (chunk index, record), last first.
    records: Vec<(usize, Vec<u8>)>,
}

impl Engine {
    /// Stores a whole stream; returns its recipe. The chunks become part of
    /// the index at the next `commit`.
    pub fn put_reader<R: Read + Send>(&self, reader: R) -> Result<Vec<ChunkRef>> {
        self.check_poisoned()?;
        let crypto = self.crypto()?;
        let mut chunker = Chunker::new(reader, &self.config, Some(self.predictor(&crypto)));
        self.put_batches(&crypto, || chunker.next_batch())
    }

    /// Stores a byte slice (chunked in place, no copy); returns its recipe.
    pub fn put_bytes(&self, data: &[u8]) -> Result<Vec<ChunkRef>> {
        self.check_poisoned()?;
        let crypto = self.crypto()?;
        let mut chunker = SliceChunker::new(data, &self.config, Some(self.predictor(&crypto)));
        self.put_batches(&crypto, || chunker.next_batch())
    }

    /// Predicts chunks from the successor table, fingerprinted as `crypto`
    /// fingerprints the batches they go into.
    fn predictor<'a>(&'a self, crypto: &'a ChunkCrypto) -> Predictor<'a> {
        Predictor {
            successors: &self.successors,
            fingerprinter: &crypto.fingerprinter,
        }
    }

    /// Three-stage pipeline: while batch N-1's records are appended (in
    /// order, one thread), batch N is fingerprinted and encoded on the pool
    /// and batch N+1 is produced by `next` (read and chunked).
    pub(super) fn put_batches<'a>(
        &self,
        crypto: &ChunkCrypto,
        mut next: impl FnMut() -> Result<Option<Batch<'a>>> + Send,
    ) -> Result<Vec<ChunkRef>> {
        let _gate = self.gc_gate.read_locked();
        let mut timed_next = || {
            let t = Instant::now();
            let b = next();
            stats::add_since(&self.stats.ns_chunking, t);
            b
        };
        let mut current = timed_next()?;
        let Some(first) = &current else {
            return Ok(Vec::new());
        };
        if first.data.len() < SMALL_STREAM {
            // A small stream is one batch: do it inline. Waking the pool
            // for it costs more than it saves (its idle workers spin on
            // cores the FUSE threads need).
            if timed_next()?.is_none() {
                let prepared = self.prepare_batch(crypto, first)?;
                return self.append_prepared(prepared);
            }
        }
        let mut recipe = Vec::new();
        let mut prepared: Option<Prepared> = None;
        while current.is_some() || prepared.is_some() {
            let to_append = prepared.take();
            let ((appended, prep), following) = rayon::join(
                || {
                    rayon::join(
                        || to_append.map(|p| self.append_prepared(p)).transpose(),
                        || {
                            current
                                .as_ref()
                                .map(|b| self.prepare_batch(crypto, b))
                                .transpose()
                        },
                    )
                },
                || match current {
                    Some(_) => timed_next(),
                    None => Ok(None),
                },
            );
            if let Some(refs) = appended? {
                recipe.extend(refs);
            }
            prepared = prep?;
            current = following?;
        }
        Ok(recipe)
    }

    /// Stage 2: fingerprints, dedup lookups, and records for new chunks.
    fn prepare_batch(&self, crypto: &ChunkCrypto, batch: &Batch<'_>) -> Result<Prepared> {
        let st = &self.stats;
        let chunk = |&(o, l): &(usize, usize)| &batch.data[o..o + l];
        let parallel = batch.data.len() >= SMALL_STREAM;
        let fingerprint = |(i, c): (usize, &(usize, usize))| {
            if let Some(Some(fp)) = batch.fps.get(i) {
                return Ok(*fp);
            }
            let t = Instant::now();
            let fp = crypto.fingerprinter.fingerprint(chunk(c));
            stats::add_since(&st.ns_fingerprint, t);
            fp
        };
        let fps: Vec<Fingerprint> = if parallel {
            batch
                .cuts
                .par_iter()
                .enumerate()
                .map(fingerprint)
                .collect::<std::result::Result<_, _>>()?
        } else {
            batch
                .cuts
                .iter()
                .enumerate()
                .map(fingerprint)
                .collect::<std::result::Result<_, _>>()?
        };
        self.successors.record(&batch.data, &batch.cuts, &fps);
        stats::add(&st.bytes_in, batch.data.len() as u64);
        stats::add(&st.chunks_in, fps.len() as u64);
        let predicted = batch.fps.iter().filter(|fp| fp.is_some()).count();
        stats::add(&st.chunks_predicted, predicted as u64);

        // Which chunks are already stored (pending or indexed)?
        let t = Instant::now();
        // A chunk marked damaged counts as stored only once a new record of
        // it is pending: its indexed record must not be deduplicated onto.
        let mut known: Vec<bool> = {
            let p = lock(&self.pending);
            fps.iter()
                .map(|fp| match self.is_damaged(fp) {
                    true => p.record(fp).is_some(),
                    false => p.get(fp).is_some(),
                })
                .collect()
        };
        let view = self.meta.read()?;
        for (i, fp) in fps.iter().enumerate() {
            if !known[i] && !self.is_damaged(fp) {
                known[i] = view.lookup(fp)?.is_some();
            }
        }
        drop(view);
        stats::add_since(&st.ns_index, t);

        let mut seen = HashSet::new();
        let fresh: Vec<usize> = (0..fps.len())
            .filter(|&i| !known[i] && seen.insert(fps[i]))
            .collect();
        let level = self.config.compression_level;
        let encode = |&i: &usize| {
            encode_record(crypto, level, chunk(&batch.cuts[i]), &fps[i], st).map(|rec| (i, rec))
        };
        let mut records: Vec<(usize, Vec<u8>)> = if parallel {
            fresh.par_iter().map(encode).collect::<Result<_>>()?
        } else {
            fresh.iter().map(encode).collect::<Result<_>>()?
        };
        records.reverse();
        Ok(Prepared {
            lens: batch.cuts.iter().map(|c| c.1 as u32).collect(),
            fps,
            known,
            records,
        })
    }

    /// Stage 3, in stream order: append new records, count references. A
    /// chunk that another batch stored meanwhile is only referenced (its
    /// encoded record is dropped), so dedup stays exact.
    fn append_prepared(&self, prepared: Prepared) -> Result<Vec<ChunkRef>> {
        let st = &self.stats;
        let Prepared {
            fps,
            lens,
            known,
            mut records,
        } = prepared;
        let t = Instant::now();
        // The writer lock is held for the whole batch: only its holder adds
        // new records to `pending`, so a chunk found absent below cannot be
        // added by anyone else before we insert it. The pending lock is
        // taken per chunk, never across a segment write.
        let mut writer = lock(&self.writer);
        let w = super::writable(&mut writer)?;
        for (i, fp) in fps.iter().enumerate() {
            let record = match records.last() {
                Some((j, _)) if *j == i => records.pop().map(|(_, r)| r),
                _ => None,
            };
            // A damaged chunk with a record of ours to store goes on to
            // the append even if a plain reference to it is pending.
            let heal = record.is_some() && self.is_damaged(fp);
            if !heal {
                let mut p = lock(&self.pending);
                if let Some(change) = p.current.get_mut(fp) {
                    change.delta += 1;
                    continue;
                }
                if known[i] || p.get(fp).is_some() {
                    p.current.insert(
                        *fp,
                        ChunkChange {
                            new_record: None,
                            delta: 1,
                        },
                    );
                    continue;
                }
            }
            let record = record.ok_or_else(|| {
                EngineError::Config("internal: new chunk without a record".into())
            })?;
            let (segment, offset) = w
                .append(&record)
                .map_err(|e| self.poison(io_err("append to segment")(e)))?;
            let plain_len = lens[i];
            let change = ChunkChange {
                new_record: Some(NewRecord {
                    segment,
                    offset,
                    record_len: record.len() as u32,
                    plain_len,
                }),
                delta: 1,
            };
            // Merge: a concurrent release may have added a delta meanwhile.
            lock(&self.pending)
                .current
                .entry(*fp)
                .and_modify(|c| {
                    c.new_record = change.new_record;
                    c.delta += 1;
                })
                .or_insert(change);
            stats::add(&st.chunks_new, 1);
            stats::add(&st.bytes_new, plain_len as u64);
            stats::add(&st.bytes_records_written, record.len() as u64);
        }
        drop(writer);
        stats::add_since(&st.ns_append, t);
        Ok(fps
            .iter()
            .zip(&lens)
            .map(|(fp, &len)| ChunkRef {
                fingerprint: *fp,
                len,
            })
            .collect())
    }
}
