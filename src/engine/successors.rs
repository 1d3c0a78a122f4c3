//! Chunk-boundary prediction for repeated data (the idea of RapidCDC,
//! FAST '19): data written again is cut into the same chunks in the same
//! order, so after a chunk seen before, the chunk that followed it last
//! time is a good guess for the next one. Checking a guess costs one
//! fingerprint, which the chunk needs anyway; scanning for the boundary
//! (FastCDC's gear hash over every byte) is skipped.
//!
//! Owns: the bounded table "after a chunk ending in these bytes, the next
//! chunk was (fingerprint, length, the byte after it)", filled from every
//! fingerprinted batch, and the check that accepts a guess.
//!
//! Invariant: a guess is accepted only where it is exactly the cut FastCDC
//! makes at that position, so prediction never moves a boundary:
//! - the bytes hash to the recorded fingerprint (they are that chunk);
//! - the byte after them is the recorded one (FastCDC's cut test at the
//!   end of a chunk reads the first byte of the next);
//! - more than `max` bytes remain, so the scan's limits are those of the
//!   recorded cut, which was content-defined or at `max` (only chunks
//!   followed by another chunk are recorded, never a stream's last one).
//!
//! A wrong guess costs one fingerprint of its length, then the scan runs.
//! The table is memory only, at most two generations of `GENERATION`
//! entries (about 13 MiB each), and is emptied whenever the engine's keys
//! change or are dropped; keys are 64-bit digests of a chunk's length and
//! last 32 bytes, so a collision is only a wrong guess.

use crate::poison::Recover;
use std::collections::HashMap;
use std::sync::Mutex;

use crate::crypto::{Fingerprint, Fingerprinter};

/// Entries per generation: 8 GiB of 64 KiB chunks.
const GENERATION: usize = 1 << 17;

/// Bytes of a chunk's end that go into its key.
const TAIL: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Successor {
    fp: Fingerprint,
    len: u32,
    next_byte: u8,
}

#[derive(Default)]
struct Generations {
    current: HashMap<u64, Successor>,
    previous: HashMap<u64, Successor>,
}

#[derive(Default)]
pub struct Successors {
    table: Mutex<Generations>,
}

/// The key of a chunk: its length and last bytes, mixed into 64 bits.
pub fn tail_key(chunk: &[u8]) -> u64 {
    const MIX: u64 = 0x9e37_79b9_7f4a_7c15;
    let tail = &chunk[chunk.len().saturating_sub(TAIL)..];
    let mut key = (chunk.len() as u64).wrapping_mul(MIX);
    for word in tail.chunks(8) {
        let mut bytes = [0u8; 8];
        bytes[..word.len()].copy_from_slice(word);
        key = (key ^ u64::from_le_bytes(bytes))
            .wrapping_mul(MIX)
            .rotate_left(31);
    }
    key
}

impl Successors {
    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.table.locked()
    }

    /// Notes which chunk followed which in `data`, cut at `cuts` with
    /// fingerprints `fps`. The last cut is never recorded as a successor
    /// (it may end where the stream ended, not where content cut it), and
    /// the one before it needs the byte after it, which is the last cut's.
    pub fn record(&self, data: &[u8], cuts: &[(usize, usize)], fps: &[Fingerprint]) {
        if cuts.len() < 3 {
            return;
        }
        let mut table = self.lock();
        for i in 0..cuts.len() - 2 {
            let (off, len) = cuts[i];
            let (next_off, next_len) = cuts[i + 1];
            let successor = Successor {
                fp: fps[i + 1],
                len: next_len as u32,
                next_byte: data[next_off + next_len],
            };
            if table.current.len() >= GENERATION {
                table.previous = std::mem::take(&mut table.current);
            }
            table
                .current
                .insert(tail_key(&data[off..off + len]), successor);
        }
    }

    /// Forgets everything (the engine's keys changed or were dropped).
    pub fn clear(&self) {
        *self.lock() = Generations::default();
    }

    fn get(&self, key: u64) -> Option<Successor> {
        let table = self.lock();
        table
            .current
            .get(&key)
            .or_else(|| table.previous.get(&key))
            .copied()
    }
}

/// A table and the fingerprinter of the stream being cut (the same one its
/// batches are prepared with).
pub struct Predictor<'a> {
    pub successors: &'a Successors,
    pub fingerprinter: &'a Fingerprinter,
}

impl Predictor<'_> {
    /// The chunk at `data[pos..]` as the table predicts it, when the guess
    /// would be exactly FastCDC's cut there if the bytes are the recorded
    /// chunk (see the module invariant): its length and the fingerprint it
    /// must have. `previous` is the key of the chunk before. The caller
    /// checks the fingerprint.
    pub fn guess(
        &self,
        previous: u64,
        data: &[u8],
        pos: usize,
        max: usize,
    ) -> Option<(usize, Fingerprint)> {
        if data.len() - pos <= max {
            return None;
        }
        let guess = self.successors.get(previous)?;
        let len = guess.len as usize;
        (len > 0 && len <= max && data[pos + len] == guess.next_byte).then_some((len, guess.fp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_depends_on_length_and_tail() {
        let a = vec![7u8; 1000];
        let mut b = a.clone();
        assert_eq!(tail_key(&a), tail_key(&b));
        b[999] = 8;
        assert_ne!(tail_key(&a), tail_key(&b));
        assert_ne!(tail_key(&a), tail_key(&a[..999]));
        // Bytes before the tail do not matter.
        let mut c = a.clone();
        c[0] = 1;
        assert_eq!(tail_key(&a), tail_key(&c));
        assert_ne!(tail_key(&[]), tail_key(&[0]));
    }

    #[test]
    fn the_table_stays_bounded_and_keeps_the_last_generation() {
        let s = Successors::default();
        // 3 generations' worth of distinct chunks (8 bytes each).
        let n = 3 * GENERATION;
        let data: Vec<u8> = (0..(n as u64 + 2)).flat_map(|i| i.to_le_bytes()).collect();
        let cuts: Vec<(usize, usize)> = (0..n + 2).map(|i| (i * 8, 8)).collect();
        let fps: Vec<Fingerprint> = (0..n + 2).map(|i| [(i % 251) as u8; 32]).collect();
        s.record(&data, &cuts, &fps);
        let t = s.lock();
        assert!(t.current.len() <= GENERATION && t.previous.len() <= GENERATION);
        drop(t);
        // The newest entries are there; the oldest are gone.
        let last = n - 1;
        let hit = s.get(tail_key(&data[last * 8..last * 8 + 8])).unwrap();
        assert_eq!(hit.fp, fps[last + 1]);
        assert_eq!(hit.next_byte, data[(last + 2) * 8]);
        assert!(s.get(tail_key(&data[..8])).is_none());
        s.clear();
        assert!(s.get(tail_key(&data[last * 8..last * 8 + 8])).is_none());
    }
}
