//! The write path: stream -> chunks -> fingerprints -> dedup -> records.
//!
//! Per stream, chunking runs on the caller's thread while the previous batch
//! is fingerprinted, compressed and encrypted on the rayon pool, so
//! independent streams on different threads never wait for each other except
//! for the short, in-order append into the open segment.

use std::collections::HashSet;
use std::io::Read;
use std::time::Instant;

use rayon::prelude::*;

use super::chunker::{Batch, Chunker};
use super::{io_err, lock, stats, ChunkRef, Engine, EngineError, Result};
use crate::crypto::{ChunkCrypto, Fingerprint};
use crate::meta::{ChunkChange, NewRecord};
use crate::store::record::{self, RecordHeader, FLAG_LZ4};

/// Compresses (when that shrinks it) and encrypts one chunk into a record.
pub(crate) fn encode_record(
    crypto: &ChunkCrypto,
    chunk: &[u8],
    fp: &Fingerprint,
    st: &stats::Stats,
) -> Vec<u8> {
    let t = Instant::now();
    let mut payload = vec![0u8; lz4_flex::block::get_maximum_output_size(chunk.len())];
    let mut flags = 0;
    match lz4_flex::block::compress_into(chunk, &mut payload) {
        Ok(n) if n < chunk.len() => {
            payload.truncate(n);
            flags = FLAG_LZ4;
        }
        _ => {
            payload.clear();
            payload.extend_from_slice(chunk);
        }
    }
    stats::add_since(&st.ns_compress, t);
    let stored_len = payload.len() as u32;
    let t = Instant::now();
    crypto.cipher.encrypt(&mut payload, fp);
    stats::add_since(&st.ns_encrypt, t);
    let header = RecordHeader {
        flags,
        plain_len: chunk.len() as u32,
        stored_len,
        cipher_len: payload.len() as u32,
        fingerprint: *fp,
    };
    let mut out = Vec::with_capacity(header.record_len() as usize);
    record::encode(&header, &payload, &mut out);
    stats::add(&st.bytes_stored_payload, stored_len as u64);
    out
}

impl Engine {
    /// Stores a whole stream; returns its recipe. The chunks become part of
    /// the index at the next `commit`.
    pub fn put_reader<R: Read + Send>(&self, reader: R) -> Result<Vec<ChunkRef>> {
        self.check_poisoned()?;
        let crypto = self.crypto()?;
        let _gate = self.gc_gate.read().unwrap_or_else(|e| e.into_inner());
        let mut chunker = Chunker::new(reader, &self.config);
        let mut recipe = Vec::new();
        let next = |c: &mut Chunker<R>| -> Result<Option<Batch>> {
            let t = Instant::now();
            let b = c.next_batch().map_err(io_err("read input stream"))?;
            stats::add_since(&self.stats.ns_chunking, t);
            Ok(b)
        };
        let mut current = next(&mut chunker)?;
        while let Some(batch) = current {
            let (stored, following) =
                rayon::join(|| self.store_batch(&crypto, &batch), || next(&mut chunker));
            recipe.extend(stored?);
            current = following?;
        }
        Ok(recipe)
    }

    /// Stores a byte slice; returns its recipe.
    pub fn put_bytes(&self, data: &[u8]) -> Result<Vec<ChunkRef>> {
        self.put_reader(data)
    }

    fn store_batch(&self, crypto: &ChunkCrypto, batch: &Batch) -> Result<Vec<ChunkRef>> {
        let st = &self.stats;
        let chunk = |&(o, l): &(usize, usize)| &batch.data[o..o + l];
        let fps: Vec<Fingerprint> = batch
            .cuts
            .par_iter()
            .map(|c| {
                let t = Instant::now();
                let fp = crypto.fingerprinter.fingerprint(chunk(c));
                stats::add_since(&st.ns_fingerprint, t);
                fp
            })
            .collect();
        stats::add(&st.bytes_in, batch.data.len() as u64);
        stats::add(&st.chunks_in, fps.len() as u64);

        // Which chunks are already stored (pending or indexed)?
        let t = Instant::now();
        let mut known: Vec<bool> = {
            let p = lock(&self.pending);
            fps.iter().map(|fp| p.get(fp).is_some()).collect()
        };
        let view = self.meta.read()?;
        for (i, fp) in fps.iter().enumerate() {
            if !known[i] {
                known[i] = view.lookup(fp)?.is_some();
            }
        }
        drop(view);
        stats::add_since(&st.ns_index, t);

        let mut seen = HashSet::new();
        let fresh: Vec<usize> = (0..fps.len())
            .filter(|&i| !known[i] && seen.insert(fps[i]))
            .collect();
        let mut records: Vec<(usize, Vec<u8>)> = fresh
            .par_iter()
            .map(|&i| (i, encode_record(crypto, chunk(&batch.cuts[i]), &fps[i], st)))
            .collect();
        records.reverse();

        // In stream order: append new records, count references.
        let t = Instant::now();
        let mut w = lock(&self.writer);
        let mut p = lock(&self.pending);
        for (i, fp) in fps.iter().enumerate() {
            let record = match records.last() {
                Some((j, _)) if *j == i => records.pop().map(|(_, r)| r),
                _ => None,
            };
            if let Some(change) = p.current.get_mut(fp) {
                change.delta += 1;
                continue;
            }
            if known[i] || p.get(fp).is_some() {
                p.current.insert(*fp, ChunkChange { new_record: None, delta: 1 });
                continue;
            }
            let record = record.ok_or_else(|| {
                EngineError::Config("internal: new chunk without a record".into())
            })?;
            let (segment, offset) = w
                .append(&record)
                .map_err(|e| self.poison(io_err("append to segment")(e)))?;
            let plain_len = batch.cuts[i].1 as u32;
            p.current.insert(
                *fp,
                ChunkChange {
                    new_record: Some(NewRecord {
                        segment,
                        offset,
                        record_len: record.len() as u32,
                        plain_len,
                    }),
                    delta: 1,
                },
            );
            stats::add(&st.chunks_new, 1);
            stats::add(&st.bytes_new, plain_len as u64);
            stats::add(&st.bytes_records_written, record.len() as u64);
        }
        drop(p);
        drop(w);
        stats::add_since(&st.ns_append, t);
        Ok(fps
            .iter()
            .zip(&batch.cuts)
            .map(|(fp, &(_, l))| ChunkRef { fingerprint: *fp, len: l as u32 })
            .collect())
    }
}
