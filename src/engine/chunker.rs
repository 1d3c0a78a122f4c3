//! Content-defined chunking of a byte stream (FastCDC v2020) in batches.
//!
//! Owns: reading the stream into batch buffers of about `BATCH` bytes and
//! cutting them. Invariant: a batch's last cut is content-defined unless the
//! stream has ended: the bytes after the last content-defined boundary are
//! carried into the next batch, so batching never changes where chunks fall.

use std::io::Read;

use crate::config::EngineConfig;

/// Bytes read per batch (must be well above the maximum chunk size).
pub const BATCH: usize = 8 << 20;

pub struct Batch<'a> {
    /// The batch's bytes: owned when read from a stream, borrowed when the
    /// caller handed a slice (no copy).
    pub data: std::borrow::Cow<'a, [u8]>,
    /// (offset, length) of each chunk in `data`, in order.
    pub cuts: Vec<(usize, usize)>,
}

/// Cuts an in-memory slice into batches of about `BATCH` bytes without
/// copying it. Boundaries are those of chunking the whole slice at once.
pub struct SliceChunker<'a> {
    data: &'a [u8],
    cdc: fastcdc::v2020::FastCDC<'a>,
}

impl<'a> SliceChunker<'a> {
    pub fn new(data: &'a [u8], cfg: &EngineConfig) -> Self {
        SliceChunker {
            data,
            cdc: fastcdc::v2020::FastCDC::new(data, cfg.chunk_min, cfg.chunk_avg, cfg.chunk_max),
        }
    }

    pub fn next_batch(&mut self) -> Option<Batch<'a>> {
        let mut cuts = Vec::new();
        let mut start = None;
        let mut size = 0;
        for c in self.cdc.by_ref() {
            let base = *start.get_or_insert(c.offset);
            cuts.push((c.offset - base, c.length));
            size += c.length;
            if size >= BATCH {
                break;
            }
        }
        let base = start?;
        Some(Batch {
            data: std::borrow::Cow::Borrowed(&self.data[base..base + size]),
            cuts,
        })
    }
}

pub struct Chunker<R> {
    reader: R,
    carry: Vec<u8>,
    eof: bool,
    min: u32,
    avg: u32,
    max: u32,
}

impl<R: Read> Chunker<R> {
    pub fn new(reader: R, cfg: &EngineConfig) -> Self {
        Chunker {
            reader,
            carry: Vec::new(),
            eof: false,
            min: cfg.chunk_min,
            avg: cfg.chunk_avg,
            max: cfg.chunk_max,
        }
    }

    fn fill(&mut self, data: &mut Vec<u8>) -> std::io::Result<()> {
        let target = BATCH.max(self.max as usize * 2);
        while !self.eof && data.len() < target {
            let start = data.len();
            data.resize(target, 0);
            match self.reader.read(&mut data[start..]) {
                Ok(0) => {
                    data.truncate(start);
                    self.eof = true;
                }
                Ok(n) => data.truncate(start + n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => data.truncate(start),
                Err(e) => {
                    data.truncate(start);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The next batch of whole chunks, or None at the end of the stream.
    pub fn next_batch(&mut self) -> std::io::Result<Option<Batch<'static>>> {
        let mut data = std::mem::take(&mut self.carry);
        self.fill(&mut data)?;
        if data.is_empty() {
            return Ok(None);
        }
        let mut cuts: Vec<(usize, usize)> =
            fastcdc::v2020::FastCDC::new(&data, self.min, self.avg, self.max)
                .map(|c| (c.offset, c.length))
                .collect();
        if !self.eof {
            if let Some((off, _)) = cuts.pop() {
                self.carry = data[off..].to_vec();
                data.truncate(off);
            }
        }
        Ok(Some(Batch {
            data: std::borrow::Cow::Owned(data),
            cuts,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batching_does_not_move_boundaries() {
        let mut x = 0x9e3779b97f4a7c15u64;
        let data: Vec<u8> = (0..(20 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let cfg = EngineConfig::default();
        let whole: Vec<usize> =
            fastcdc::v2020::FastCDC::new(&data, cfg.chunk_min, cfg.chunk_avg, cfg.chunk_max)
                .map(|c| c.length)
                .collect();
        let mut ch = Chunker::new(&data[..], &cfg);
        let mut lens = Vec::new();
        while let Some(b) = ch.next_batch().unwrap() {
            lens.extend(b.cuts.iter().map(|c| c.1));
        }
        assert_eq!(lens, whole);
        let mut sc = SliceChunker::new(&data, &cfg);
        let mut lens = Vec::new();
        let mut total = 0;
        while let Some(b) = sc.next_batch() {
            total += b.data.len();
            lens.extend(b.cuts.iter().map(|c| c.1));
        }
        assert_eq!(lens, whole);
        assert_eq!(total, data.len());
    }
}
