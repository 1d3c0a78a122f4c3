//! The read path: index -> record -> CRC -> decrypt -> decompress ->
//! fingerprint check. Any mismatch is an integrity error naming the chunk;
//! wrong bytes are never returned.

use std::io::Write;
use std::time::Instant;

use rayon::prelude::*;

use super::{integrity, io_err, lock, stats, ChunkRef, Engine, EngineError, Result};
use crate::crypto::{Fingerprint, KeyRing};
use crate::meta::IndexEntry;
use crate::store::record::{self, HEADER_LEN};
use crate::store::segment;

/// Chunks read in parallel per window of a stream.
const READ_WINDOW: usize = 64;

/// Verifies and decodes one whole record read from disk, with the keys of
/// the generation its header names.
pub(crate) fn decode_record(
    keys: &KeyRing,
    fp: &Fingerprint,
    mut rec: Vec<u8>,
    st: &stats::Stats,
) -> Result<Vec<u8>> {
    let h = record::parse_header(&rec).map_err(|e| integrity(fp, e.to_string()))?;
    let crypto = keys.for_generation(h.key_gen()).ok_or_else(|| {
        integrity(
            fp,
            format!("record is under {}, whose key is not loaded", h.key_gen()),
        )
    })?;
    if &h.fingerprint != fp {
        return Err(integrity(fp, "record holds another chunk"));
    }
    if !record::check_body(&h, &rec) {
        return Err(integrity(fp, "ciphertext CRC mismatch"));
    }
    // Decrypted in place: the record's buffer becomes the plaintext.
    let t = Instant::now();
    let payload = HEADER_LEN..HEADER_LEN + h.cipher_len as usize;
    if let Some(cipher) = &crypto.cipher {
        cipher.decrypt(&mut rec[payload], fp)?;
    }
    stats::add_since(&st.ns_decrypt, t);
    let t = Instant::now();
    let stored = HEADER_LEN..HEADER_LEN + h.stored_len as usize;
    let plain = if h.compressed() {
        lz4_flex::block::decompress(&rec[stored], h.plain_len as usize)
            .map_err(|e| integrity(fp, format!("decompression failed: {e}")))?
    } else {
        rec.truncate(stored.end);
        rec.drain(..stored.start);
        rec
    };
    stats::add_since(&st.ns_decompress, t);
    if plain.len() != h.plain_len as usize {
        return Err(integrity(fp, "decoded length differs from header"));
    }
    let t = Instant::now();
    let ok = &crypto.fingerprinter.fingerprint(&plain)? == fp;
    stats::add_since(&st.ns_verify, t);
    if !ok {
        return Err(integrity(
            fp,
            "fingerprint mismatch (data corrupt or tampered)",
        ));
    }
    Ok(plain)
}

impl Engine {
    /// Where a chunk's record is: pending (this session) or indexed.
    pub(super) fn locate(&self, fp: &Fingerprint) -> Result<IndexEntry> {
        // Copy the location out first: the pending guard must be dropped
        // before the writer lock is taken (lock order: writer, pending).
        let pending = lock(&self.pending).record(fp);
        if let Some(r) = pending {
            lock(&self.writer)
                .flush_through(r.segment, r.offset + r.record_len as u64)
                .map_err(|e| self.poison(io_err("write segment")(e)))?;
            return Ok(IndexEntry {
                segment: r.segment,
                offset: r.offset,
                record_len: r.record_len,
                plain_len: r.plain_len,
                refcount: 1,
            });
        }
        self.meta
            .read()?
            .lookup(fp)?
            .ok_or_else(|| EngineError::NotFound(hex::encode(&fp[..8])))
    }

    fn read_chunk_ungated(&self, crypto: &KeyRing, fp: &Fingerprint) -> Result<Vec<u8>> {
        let e = self.locate(fp)?;
        let t = Instant::now();
        let file = self.segment_file(e.segment)?;
        let rec =
            segment::read_exact_at(&file, e.offset, e.record_len as usize).map_err(|err| {
                if err.kind() == std::io::ErrorKind::UnexpectedEof {
                    integrity(
                        fp,
                        format!("record extends past the end of segment {:016x}", e.segment),
                    )
                } else {
                    io_err(format!("read segment {:016x}", e.segment))(err)
                }
            })?;
        stats::add_since(&self.stats.ns_read_io, t);
        let plain = decode_record(crypto, fp, rec, &self.stats)?;
        if plain.len() != e.plain_len as usize {
            return Err(integrity(fp, "length differs from the index"));
        }
        stats::add(&self.stats.bytes_read, plain.len() as u64);
        stats::add(&self.stats.chunks_read, 1);
        Ok(plain)
    }

    /// Reads and verifies one chunk.
    pub fn read_chunk(&self, fp: &Fingerprint) -> Result<Vec<u8>> {
        self.check_poisoned()?;
        let crypto = self.keys()?;
        let _gate = self.gc_gate.read().unwrap_or_else(|e| e.into_inner());
        self.read_chunk_ungated(&crypto, fp)
    }

    /// Reads a whole stream into `out`, chunks decoded in parallel.
    pub fn read_stream(&self, recipe: &[ChunkRef], out: &mut impl Write) -> Result<()> {
        self.check_poisoned()?;
        let crypto = self.keys()?;
        let _gate = self.gc_gate.read().unwrap_or_else(|e| e.into_inner());
        for window in recipe.chunks(READ_WINDOW) {
            let chunks: Vec<Result<Vec<u8>>> = window
                .par_iter()
                .map(|c| {
                    let data = self.read_chunk_ungated(&crypto, &c.fingerprint)?;
                    if data.len() != c.len as usize {
                        return Err(integrity(&c.fingerprint, "length differs from the recipe"));
                    }
                    Ok(data)
                })
                .collect();
            for c in chunks {
                out.write_all(&c?).map_err(io_err("write output"))?;
            }
        }
        Ok(())
    }

    /// Reads a whole stream into memory.
    pub fn read_to_vec(&self, recipe: &[ChunkRef]) -> Result<Vec<u8>> {
        let total: usize = recipe.iter().map(|c| c.len as usize).sum();
        let mut out = Vec::with_capacity(total);
        self.read_stream(recipe, &mut out)?;
        Ok(out)
    }
}
