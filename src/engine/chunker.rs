//! Content-defined chunking of a byte stream (FastCDC v2020) in batches.
//!
//! Owns: reading the stream into batch buffers of about `BATCH` bytes and
//! cutting them, chunk by chunk: a chunk the successor table predicts
//! (successors.rs) is taken after one fingerprint, any other is found by
//! FastCDC's scan. Invariants: a batch's last cut is content-defined unless
//! the stream has ended: the bytes after the last content-defined boundary
//! are carried into the next batch, so batching never changes where chunks
//! fall; nor does prediction (successors.rs says why).

use std::io::Read;

use fastcdc::v2020::FastCDC;
use rayon::prelude::*;

use super::successors::{tail_key, Predictor};
use super::{io_err, Result};
use crate::chunk::Fingerprint;
use crate::config::EngineConfig;

/// Bytes read per batch (must be well above the maximum chunk size).
pub const BATCH: usize = 8 << 20;

pub struct Batch<'a> {
    /// The batch's bytes: owned when read from a stream, borrowed when the
    /// caller handed a slice (no copy).
    pub data: std::borrow::Cow<'a, [u8]>,
    /// (offset, length) of each chunk in `data`, in order.
    pub cuts: Vec<(usize, usize)>,
    /// Fingerprints the chunker already computed (predicted chunks), by
    /// cut; empty or shorter than `cuts` where none were.
    pub fps: Vec<Option<Fingerprint>>,
}

/// Finds chunk ends: a run of chunks the successor table predicts, taken
/// as far as their fingerprints confirm them, then (after a wrong guess or
/// where nothing is predicted) one chunk found by FastCDC's scan.
struct Cutter<'a> {
    predictor: Option<Predictor<'a>>,
    /// Key of the chunk before the next one (None at a stream's start).
    previous: Option<u64>,
    /// Guesses to check in the next run: doubles while every guess is
    /// right (up to `RUN`), back to 1 after a wrong one, so data that
    /// differs from what was written before wastes at most one
    /// fingerprint per difference.
    run: usize,
    max: usize,
}

/// Most predicted chunks checked in one go (their fingerprints are
/// computed in parallel when they add up to `PARALLEL_RUN`).
const RUN: usize = 32;

/// Predicted runs shorter than this are checked on the calling thread
/// (waking the pool costs more than it saves).
const PARALLEL_RUN: usize = 1 << 20;

/// A chunk's length and, when the chunker computed it, its fingerprint.
type Cut = (usize, Option<Fingerprint>);

/// A guess that was wrong: its length, and the fingerprint of those bytes.
type WrongGuess = (usize, Fingerprint);

impl<'a> Cutter<'a> {
    fn new(predictor: Option<Predictor<'a>>, cfg: &EngineConfig) -> Self {
        Cutter {
            predictor,
            previous: None,
            run: 1,
            max: cfg.chunk_max as usize,
        }
    }

    /// The chunks starting at `data[pos..]` (`cdc` scans `data`; `pos` <
    /// `data.len()`). At least one chunk.
    fn next(&mut self, cdc: &FastCDC, data: &[u8], pos: usize) -> Result<Vec<Cut>> {
        let (mut cuts, wrong) = self.predicted_run(data, pos)?;
        if !cuts.is_empty() && wrong.is_none() {
            return Ok(cuts);
        }
        let at = pos + cuts.iter().map(|c| c.0).sum::<usize>();
        let (_, end) = cdc.cut(at, data.len() - at);
        let len = end - at;
        // A wrong guess of the right length fingerprinted this chunk.
        let fp = wrong
            .filter(|&(guessed, _)| guessed == len)
            .map(|(_, fp)| fp);
        if self.predictor.is_some() {
            self.previous = Some(tail_key(&data[at..end]));
        }
        cuts.push((len, fp));
        Ok(cuts)
    }

    /// Up to `self.run` chunks from `pos` as the table predicts them, cut
    /// back to those whose fingerprints match; and the first wrong guess
    /// (its length and the fingerprint the bytes there have), if any.
    fn predicted_run(&mut self, data: &[u8], pos: usize) -> Result<(Vec<Cut>, Option<WrongGuess>)> {
        let (Some(predictor), Some(mut previous)) = (&self.predictor, self.previous) else {
            return Ok((Vec::new(), None));
        };
        let mut guesses = Vec::new();
        let mut at = pos;
        while guesses.len() < self.run {
            let Some((len, fp)) = predictor.guess(previous, data, at, self.max) else {
                break;
            };
            guesses.push((at, len, fp));
            previous = tail_key(&data[at..at + len]);
            at += len;
        }
        let fingerprint = |&(at, len, _): &(usize, usize, Fingerprint)| {
            predictor.fingerprinter.fingerprint(&data[at..at + len])
        };
        let actual: Vec<Fingerprint> = if at - pos >= PARALLEL_RUN {
            guesses
                .par_iter()
                .map(fingerprint)
                .collect::<std::result::Result<_, _>>()?
        } else {
            let mut actual = Vec::new();
            for guess in &guesses {
                actual.push(fingerprint(guess)?);
                if actual.last() != Some(&guess.2) {
                    break;
                }
            }
            actual
        };
        let right = guesses
            .iter()
            .zip(&actual)
            .take_while(|(guess, actual)| guess.2 == **actual)
            .count();
        let wrong = guesses.get(right).map(|g| (g.1, actual[right]));
        self.run = match wrong {
            Some(_) => 1,
            None if right == self.run => (self.run * 2).min(RUN),
            None => self.run,
        };
        guesses.truncate(right);
        if let Some(&(at, len, _)) = guesses.last() {
            self.previous = Some(tail_key(&data[at..at + len]));
        }
        let cuts = guesses.into_iter().map(|(_, len, fp)| (len, Some(fp)));
        Ok((cuts.collect(), wrong))
    }
}

fn fastcdc<'d>(data: &'d [u8], cfg: &EngineConfig) -> FastCDC<'d> {
    FastCDC::new(data, cfg.chunk_min, cfg.chunk_avg, cfg.chunk_max)
}

/// Cuts an in-memory slice into batches of about `BATCH` bytes without
/// copying it. Boundaries are those of chunking the whole slice at once.
pub struct SliceChunker<'a> {
    data: &'a [u8],
    cdc: FastCDC<'a>,
    cutter: Cutter<'a>,
    pos: usize,
}

impl<'a> SliceChunker<'a> {
    pub fn new(data: &'a [u8], cfg: &EngineConfig, predictor: Option<Predictor<'a>>) -> Self {
        SliceChunker {
            data,
            cdc: fastcdc(data, cfg),
            cutter: Cutter::new(predictor, cfg),
            pos: 0,
        }
    }

    pub fn next_batch(&mut self) -> Result<Option<Batch<'a>>> {
        let base = self.pos;
        let mut cuts = Vec::new();
        let mut fps = Vec::new();
        while self.pos < self.data.len() && self.pos - base < BATCH {
            for (len, fp) in self.cutter.next(&self.cdc, self.data, self.pos)? {
                cuts.push((self.pos - base, len));
                fps.push(fp);
                self.pos += len;
            }
        }
        if cuts.is_empty() {
            return Ok(None);
        }
        Ok(Some(Batch {
            data: std::borrow::Cow::Borrowed(&self.data[base..self.pos]),
            cuts,
            fps,
        }))
    }
}

pub struct Chunker<'p, R> {
    reader: R,
    carry: Vec<u8>,
    eof: bool,
    cfg: EngineConfig,
    cutter: Cutter<'p>,
}

impl<'p, R: Read> Chunker<'p, R> {
    pub fn new(reader: R, cfg: &EngineConfig, predictor: Option<Predictor<'p>>) -> Self {
        Chunker {
            reader,
            carry: Vec::new(),
            eof: false,
            cfg: cfg.clone(),
            cutter: Cutter::new(predictor, cfg),
        }
    }

    fn fill(&mut self, data: &mut Vec<u8>) -> std::io::Result<()> {
        let target = BATCH.max(self.cfg.chunk_max as usize * 2);
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
    pub fn next_batch(&mut self) -> Result<Option<Batch<'static>>> {
        let mut data = std::mem::take(&mut self.carry);
        self.fill(&mut data).map_err(io_err("read input stream"))?;
        if data.is_empty() {
            return Ok(None);
        }
        let cdc = fastcdc(&data, &self.cfg);
        let mut cuts = Vec::new();
        let mut fps = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            for (len, fp) in self.cutter.next(&cdc, &data, pos)? {
                cuts.push((pos, len));
                fps.push(fp);
                pos += len;
            }
        }
        if !self.eof {
            // The last chunk ends where the buffer did, not where content
            // cut it: it is cut again at the start of the next batch, after
            // the chunk before it.
            if let Some((off, _)) = cuts.pop() {
                fps.pop();
                self.cutter.previous = cuts.last().map(|&(o, l)| tail_key(&data[o..o + l]));
                self.carry = data[off..].to_vec();
                data.truncate(off);
            }
        }
        Ok(Some(Batch {
            data: std::borrow::Cow::Owned(data),
            cuts,
            fps,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::crypto::{FingerprintAlg, Fingerprinter};
    use crate::engine::successors::Successors;

    fn random(seed: u64, len: usize) -> Vec<u8> {
        crate::test_data::XorShift::new(0x9e3779b97f4a7c15u64 ^ seed).bytes(len, 0)
    }

    /// Chunk lengths of `data` cut all at once, without prediction.
    fn canonical(data: &[u8], cfg: &EngineConfig) -> Vec<usize> {
        fastcdc(data, cfg).map(|c| c.length).collect()
    }

    /// Where each of those chunks ends.
    fn canonical_ends(data: &[u8], cfg: &EngineConfig) -> Vec<usize> {
        let mut end = 0;
        let lens = canonical(data, cfg);
        lens.iter()
            .map(|len| {
                end += len;
                end
            })
            .collect()
    }

    fn fingerprinter() -> Fingerprinter {
        Fingerprinter::new(
            keystore::Provider::DEFAULT,
            FingerprintAlg::Blake3,
            &[0; 32],
        )
        .unwrap()
    }

    /// Cuts `data` with prediction (as a stream when `stream`, else as a
    /// slice), recording each batch as the write path does; returns the
    /// chunk lengths and how many chunks were predicted.
    fn cut_predicting(
        successors: &Successors,
        fingerprinter: &Fingerprinter,
        data: &[u8],
        stream: bool,
    ) -> (Vec<usize>, usize) {
        let cfg = EngineConfig::default();
        let predictor = || {
            Some(Predictor {
                successors,
                fingerprinter,
            })
        };
        let mut slices = SliceChunker::new(data, &cfg, predictor());
        let mut reader = Chunker::new(data, &cfg, predictor());
        let (mut lens, mut predicted) = (Vec::new(), 0);
        loop {
            let batch = if stream {
                reader.next_batch().unwrap()
            } else {
                slices.next_batch().unwrap()
            };
            let Some(b) = batch else {
                return (lens, predicted);
            };
            let fps: Vec<Fingerprint> = b
                .cuts
                .iter()
                .map(|&(o, l)| fingerprinter.fingerprint(&b.data[o..o + l]).unwrap())
                .collect();
            for (i, fp) in b.fps.iter().enumerate() {
                if let Some(fp) = fp {
                    assert_eq!(*fp, fps[i], "a predicted chunk carries its own fingerprint");
                    predicted += 1;
                }
            }
            successors.record(&b.data, &b.cuts, &fps);
            lens.extend(b.cuts.iter().map(|c| c.1));
        }
    }

    #[test]
    fn prediction_skips_the_scan_of_repeated_data_and_never_moves_a_boundary() {
        let cfg = EngineConfig::default();
        let original = random(1, 24 << 20);
        let mut flipped = original.clone();
        flipped[9 << 20] ^= 0x40;
        let mut inserted = original.clone();
        inserted.insert(5 << 20, 0x5a);
        let twice = [&original[..12 << 20], &original[..12 << 20]].concat();
        let variants = [
            ("flipped byte", flipped),
            ("inserted byte", inserted),
            ("repeated within the stream", twice),
        ];
        for stream in [false, true] {
            let fingerprinter = fingerprinter();
            let successors = Successors::default();
            let (first, predicted) = cut_predicting(&successors, &fingerprinter, &original, stream);
            assert_eq!(first, canonical(&original, &cfg));
            assert_eq!(predicted, 0, "nothing to predict from yet");
            let (again, predicted) = cut_predicting(&successors, &fingerprinter, &original, stream);
            assert_eq!(again, first);
            assert!(
                predicted * 100 >= again.len() * 95,
                "stream {stream}: {predicted} of {} chunks predicted",
                again.len()
            );
            for (what, data) in &variants {
                let (lens, predicted) = cut_predicting(&successors, &fingerprinter, data, stream);
                assert_eq!(lens, canonical(data, &cfg), "{what} (stream {stream})");
                assert!(predicted > lens.len() / 2, "{what}: {predicted} predicted");
            }
        }
    }

    #[test]
    fn a_stream_ending_just_after_a_repeated_chunk_is_cut_by_the_scan() {
        // FastCDC looks at fewer positions when fewer than `avg` bytes
        // remain: a repeated chunk followed by only a byte or two may be cut
        // elsewhere than where it was, so prediction gives way near the end.
        let cfg = EngineConfig::default();
        let original = random(3, 6 << 20);
        let ends = canonical_ends(&original, &cfg);
        for stream in [false, true] {
            let fingerprinter = fingerprinter();
            let successors = Successors::default();
            cut_predicting(&successors, &fingerprinter, &original, stream);
            for &end in &ends[20..60] {
                for extra in 0..3 {
                    let data = &original[..end + extra];
                    let (lens, _) = cut_predicting(&successors, &fingerprinter, data, stream);
                    assert_eq!(
                        lens,
                        canonical(data, &cfg),
                        "end {end} + {extra}, stream {stream}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_chunk_followed_by_another_byte_is_not_predicted() {
        // FastCDC's cut test at a chunk's end reads the next chunk's first
        // byte: the same chunk followed by another byte may be cut
        // elsewhere, and prediction must not cut it where it was.
        let cfg = EngineConfig::default();
        let original = random(2, 8 << 20);
        let ends = canonical_ends(&original, &cfg);
        let mut moved = 0;
        for &end in &ends[10..40] {
            let fingerprinter = fingerprinter();
            let successors = Successors::default();
            cut_predicting(&successors, &fingerprinter, &original, false);
            let mut changed = original.clone();
            changed[end] ^= 0x81;
            let expected = canonical(&changed, &cfg);
            if expected[..20] != canonical(&original, &cfg)[..20] {
                moved += 1;
            }
            let (lens, _) = cut_predicting(&successors, &fingerprinter, &changed, false);
            assert_eq!(
                lens, expected,
                "byte after the chunk ending at {end} changed"
            );
        }
        assert!(
            moved > 0,
            "no changed byte moved a boundary: the test shows nothing"
        );
    }

    #[test]
    fn batching_does_not_move_boundaries() {
        let data = random(0, 20 << 20);
        let cfg = EngineConfig::default();
        let whole = canonical(&data, &cfg);
        let mut ch = Chunker::new(&data[..], &cfg, None);
        let mut lens = Vec::new();
        while let Some(b) = ch.next_batch().unwrap() {
            lens.extend(b.cuts.iter().map(|c| c.1));
        }
        assert_eq!(lens, whole);
        let mut sc = SliceChunker::new(&data, &cfg, None);
        let mut lens = Vec::new();
        let mut total = 0;
        while let Some(b) = sc.next_batch().unwrap() {
            total += b.data.len();
            lens.extend(b.cuts.iter().map(|c| c.1));
        }
        assert_eq!(lens, whole);
        assert_eq!(total, data.len());
    }
}
