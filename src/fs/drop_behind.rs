//! Drops the kernel's cached pages far behind a sequential reader or
//! writer of one file, so a long stream (a backup read, a multi-GiB copy)
//! keeps reusing a bounded set of page-cache pages instead of filling
//! memory with pages it will not touch again. Random access and the start
//! of every stream keep the page cache as the kernel manages it.
//!
//! Owns: each inode's stream position (where its sequential requests have
//! reached and how far behind them pages were dropped), and one thread
//! that sends the invalidations, fed by a bounded queue (a full queue
//! drops requests: dropping pages is only ever an optimisation).
//!
//! Invariants: only clean data leaves the cache (without a writeback
//! cache every write reached the volume before it was answered), so an
//! invalidation never loses data; the next read of a dropped page asks
//! the volume. Invalidations run off the FUSE threads, because the kernel
//! waits for page locks that in-flight reads hold until a FUSE thread
//! answers them. Nothing within `KEEP` bytes of the stream's head is
//! dropped.

use crate::poison::Recover;
use std::collections::HashMap;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};

use super::PageFill;

/// Bytes kept cached behind the head of a sequential stream: a file up to
/// this size read or written once stays cached whole. (At 8 GiB streams
/// 256 MiB, 1 GiB and 2 GiB all measured the same; docs/BENCHMARKS.md.)
const KEEP: u64 = 1 << 30;
/// Pages are dropped this many bytes at a time.
const STEP: u64 = 32 << 20;
/// How far a request may start from where the stream reached and still
/// continue it (readahead requests of two FUSE threads may be answered
/// out of order).
const SLACK: u64 = 8 << 20;
/// Invalidations waiting for the thread; more are dropped.
const QUEUE: usize = 16;
/// Streams tracked at once; beyond it the table starts over.
const STREAMS: usize = 4096;

#[derive(Clone, Copy)]
struct Stream {
    /// The end of the furthest request so far.
    reached: u64,
    /// Pages below this offset were dropped (or never cached by it).
    dropped_to: u64,
}

impl Stream {
    fn starting(at: u64, end: u64) -> Self {
        Stream {
            reached: end,
            dropped_to: at,
        }
    }

    /// Notes a request for [at, end): a continuation moves the stream on
    /// and returns the range [from, to) to drop now, if any; a request
    /// behind the stream's head but not far below the dropped mark is a
    /// late one (answered by another FUSE thread after later ones) and
    /// changes nothing; anything else, a jump back into what was dropped
    /// or ahead of the stream, starts a new stream.
    fn advance(&mut self, at: u64, end: u64) -> Option<(u64, u64)> {
        if at + SLACK < self.dropped_to || at > self.reached + SLACK {
            *self = Stream::starting(at, end);
            return None;
        }
        if at + SLACK < self.reached {
            return None;
        }
        self.reached = self.reached.max(end);
        let upto = self.reached.saturating_sub(KEEP);
        if upto < self.dropped_to + STEP {
            return None;
        }
        let from = std::mem::replace(&mut self.dropped_to, upto);
        Some((from, upto))
    }
}

/// A range of one inode's pages to drop: (inode, offset, length).
type Invalidation = (u64, u64, u64);

pub struct DropBehind {
    streams: Mutex<HashMap<u64, Stream>>,
    queue: SyncSender<Invalidation>,
}

impl DropBehind {
    /// A tracker whose thread invalidates through `fill`'s notifier.
    pub fn new(fill: Arc<PageFill>) -> Self {
        let (queue, drops) = mpsc::sync_channel::<Invalidation>(QUEUE);
        std::thread::Builder::new()
            .name("drop-behind".into())
            .spawn(move || {
                while let Ok((ino, at, len)) = drops.recv() {
                    fill.invalidate_range(ino, at, len);
                }
            })
            .expect("spawn the drop-behind thread");
        DropBehind {
            streams: Mutex::new(HashMap::new()),
            queue,
        }
    }

    /// Notes a read or write of [at, at + len) of `ino`; queues dropping
    /// the pages far behind it when it continues a sequential stream.
    pub fn access(&self, ino: u64, at: u64, len: u64) {
        let end = at + len;
        let mut streams = self.streams.locked();
        if streams.len() >= STREAMS && !streams.contains_key(&ino) {
            streams.clear();
        }
        let s = streams.entry(ino).or_insert(Stream::starting(at, end));
        if let Some((from, to)) = s.advance(at, end) {
            if self.queue.try_send((ino, from, to - from)).is_err() {
                // Retried with the stream's next request.
                s.dropped_to = from;
            }
        }
    }

    /// Forgets `ino`'s stream (its handle was released).
    pub fn forget(&self, ino: u64) {
        self.streams.locked().remove(&ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Runs requests of `len` bytes at `offsets` through a new stream;
    /// returns the ranges it drops.
    fn drops(offsets: impl IntoIterator<Item = u64>, len: u64) -> Vec<(u64, u64)> {
        let mut stream: Option<Stream> = None;
        let mut out = Vec::new();
        for at in offsets {
            match stream.as_mut() {
                None => stream = Some(Stream::starting(at, at + len)),
                Some(s) => out.extend(s.advance(at, at + len)),
            }
        }
        out
    }

    #[test]
    fn a_sequential_stream_drops_everything_but_its_last_gib_in_steps() {
        let got = drops((0..2048).map(|i| i * MIB), MIB);
        // Ends at 2 GiB: everything below 1 GiB dropped, in STEP pieces,
        // each starting where the last ended.
        assert_eq!(got.first().unwrap().0, 0);
        assert_eq!(got.last().unwrap().1, 2048 * MIB - KEEP);
        assert!(got.windows(2).all(|w| w[0].1 == w[1].0));
        assert!(got.iter().all(|(a, b)| b - a == STEP));
    }

    #[test]
    fn a_stream_no_longer_than_the_window_drops_nothing() {
        assert!(drops((0..1024 + 31).map(|i| i * MIB), MIB).is_empty());
    }

    #[test]
    fn requests_slightly_out_of_order_still_continue_the_stream() {
        // Pairs of readahead requests answered in swapped order.
        let swapped = (0..2048u64).map(|i| (i ^ 1) * MIB);
        let (first, last) = {
            let got = drops(swapped, MIB);
            (got.first().unwrap().0, got.last().unwrap().1)
        };
        // The stream started at its first request (1 MiB) and dropped in
        // steps from there up to within a step of the window.
        assert_eq!(first, MIB);
        assert!(last <= 2048 * MIB - KEEP && last + STEP > 2048 * MIB - KEEP);
    }

    #[test]
    fn a_request_answered_late_does_not_restart_the_stream() {
        // Request 100 reaches the tracker after requests up to 120 (its
        // thread was descheduled): the stream still drops everything but
        // its last GiB, with no gap.
        let mut order: Vec<u64> = (0..2048).filter(|i| *i != 100).collect();
        order.insert(120, 100);
        let got = drops(order.into_iter().map(|i| i * MIB), MIB);
        assert_eq!(got.first().unwrap().0, 0);
        assert!(got.windows(2).all(|w| w[0].1 == w[1].0));
        assert_eq!(got.last().unwrap().1, 2048 * MIB - KEEP);
    }

    #[test]
    fn random_access_never_drops() {
        let mut x = crate::test_data::XorShift::new(0x9e37_79b9_7f4a_7c15);
        let random = (0..100_000).map(|_| (x.next_u64() % (8 << 30)) / 4096 * 4096);
        assert!(drops(random, 4096).is_empty());
    }

    #[test]
    fn a_jump_starts_a_new_stream_from_the_jump() {
        // 1.5 GiB sequential, then a jump back to 0 and 512 MiB more: the
        // second stream is short, so only the first one dropped anything.
        let first = (0..1536).map(|i| i * MIB);
        let second = (0..512).map(|i| i * MIB);
        let got = drops(first.chain(second), MIB);
        assert_eq!(got.last().unwrap().1, 1536 * MIB - KEEP);
    }
}
