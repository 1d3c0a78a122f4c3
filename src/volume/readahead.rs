//! The chunk cache and sequential readahead.
//!
//! Owns: recently decoded chunks (FIFO eviction, so small sequential reads
//! do not decrypt the same chunk again), the set of chunks being decoded
//! (a chunk is decoded once even when a reader and the readahead thread
//! want it at the same time), and per-file read positions. When a file is
//! read where its previous read ended, the chunks of the next `WINDOW`
//! bytes are decoded into the cache by `DECODERS` background threads, so
//! disk reads and decryption overlap the transfers to the kernel. A flush
//! that rewrites stored chunks gets them through `decode_for_rewrite`:
//! from the cache when there, else decoded straight into its window and
//! not cached.
//!
//! Invariant: the cache only holds verified plaintext keyed by
//! fingerprint, so a stale entry cannot exist (a chunk's content never
//! changes); readahead only warms the cache and never answers a read.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

use super::{lock, Extent, VResult, Volume};

/// Threads decoding readahead chunks: more than the two cores, because a
/// decoder spends part of its time waiting for the segment read (a cold
/// 2 GiB read: ~72% of the cores busy with two decoders).
const DECODERS: usize = 3;
/// How far ahead of a sequential reader chunks are decoded. Cold 2 GiB
/// reads, six each: 2 decoders ~1,085 MB/s, 3 decoders ~1,150; 16 MiB
/// ahead with a 32 MiB cache ~1,225, but that cache stays resident and
/// took the fio run's peak RSS to 499 MiB (target < 512), so not taken.
const WINDOW: u64 = 8 << 20;
/// Plaintext bytes of decoded chunks kept: a 4 KiB random read decodes a
/// whole chunk (64 KiB on average), so the rest of it should still be here
/// when a neighbouring read comes (the kernel caches only the pages it was
/// given). Twice the readahead window, so decoded chunks are not evicted
/// before the reader gets to them.
const CACHE_BYTES: usize = 16 << 20;
/// Plaintext bytes one decoder takes from the queue at a time: their
/// records mostly lie next to each other and are read with one read.
const BATCH_BYTES: u64 = 1 << 20;
/// Threads reading and decoding the chunks a flush rewrites (see
/// `decode_for_rewrite`).
const REWRITE_READERS: usize = 4;
/// How far from where the previous read ended a read still continues it.
const NEAR: u64 = 1 << 20;
/// Read positions remembered (one per recently read file).
const POSITIONS: usize = 1024;

type Fp = [u8; 32];

#[derive(Default)]
struct Cached {
    chunks: HashMap<Fp, Arc<Vec<u8>>>,
    order: VecDeque<Fp>,
    /// Sum of the cached chunks' lengths.
    bytes: usize,
    loading: HashSet<Fp>,
}

impl Cached {
    /// Adds a decoded chunk, evicting the oldest beyond `CACHE_BYTES`.
    fn insert(&mut self, fp: Fp, data: Arc<Vec<u8>>) {
        if self.chunks.contains_key(&fp) {
            return;
        }
        while self.bytes + data.len() > CACHE_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.chunks.remove(&old) {
                self.bytes -= gone.len();
            }
        }
        self.bytes += data.len();
        self.chunks.insert(fp, data);
        self.order.push_back(fp);
    }
}

/// Per file: where the next sequential read starts, and how far ahead
/// chunks have been queued.
#[derive(Clone, Copy)]
struct Position {
    next: u64,
    queued_to: u64,
}

/// What `note_read` saw.
pub(super) struct ReadPattern {
    pub sequential: bool,
    pub ahead: Option<(u64, u64)>,
}

#[derive(Default)]
pub(super) struct ChunkCache {
    cached: Mutex<Cached>,
    loaded: Condvar,
    positions: Mutex<HashMap<u64, Position>>,
    /// Chunks for the decoder threads, in file order; None until
    /// `start_readahead`.
    queue: Mutex<Option<Arc<Queue>>>,
}

/// The decoders' work: chunks to decode, oldest first.
#[derive(Default)]
struct Queue {
    work: Mutex<Work>,
    ready: Condvar,
}

#[derive(Default)]
struct Work {
    extents: VecDeque<Extent>,
    /// Set when the volume goes: the decoders exit.
    closed: bool,
}

impl Drop for ChunkCache {
    fn drop(&mut self) {
        if let Some(q) = lock(&self.queue).take() {
            lock(&q.work).closed = true;
            q.ready.notify_all();
        }
    }
}

impl Volume {
    /// A chunk's plaintext, from the cache or decoded (and cached).
    pub(super) fn chunk(&self, e: &Extent) -> VResult<Arc<Vec<u8>>> {
        let cache = &self.cache;
        let fp = e.fingerprint;
        {
            let mut c = lock(&cache.cached);
            loop {
                if let Some(data) = c.chunks.get(&fp) {
                    return Ok(data.clone());
                }
                if !c.loading.contains(&fp) {
                    break;
                }
                c = cache.loaded.wait(c).unwrap_or_else(|e| e.into_inner());
            }
            c.loading.insert(fp);
        }
        let decoded = self
            .engine
            .read_chunk(&fp)
            .map_err(super::VolError::from)
            .and_then(|d| {
                if d.len() == e.len as usize {
                    Ok(Arc::new(d))
                } else {
                    Err(super::VolError::io("chunk length differs from its extent"))
                }
            });
        let mut c = lock(&cache.cached);
        c.loading.remove(&fp);
        if let Ok(data) = &decoded {
            c.insert(fp, data.clone());
        }
        cache.loaded.notify_all();
        decoded
    }

    /// Decodes into the cache those of `extents` (in file order) that are
    /// neither cached nor being decoded, reading neighbouring records
    /// together (`Engine::read_chunks_streaming`). The first failure is
    /// returned; a reader that needs that chunk decodes it again itself.
    fn decode_ahead(&self, extents: &[Extent]) -> VResult<()> {
        let cache = &self.cache;
        let todo: Vec<&Extent> = {
            let mut c = lock(&cache.cached);
            extents
                .iter()
                .filter(|e| {
                    let fp = e.fingerprint;
                    !c.chunks.contains_key(&fp) && c.loading.insert(fp)
                })
                .collect()
        };
        if todo.is_empty() {
            return Ok(());
        }
        let fps: Vec<Fp> = todo.iter().map(|e| e.fingerprint).collect();
        let decoded = self.engine.read_chunks_streaming(&fps);
        let mut c = lock(&cache.cached);
        for fp in &fps {
            c.loading.remove(fp);
        }
        let mut failure = None;
        match decoded {
            Ok(results) => {
                for (e, r) in todo.iter().zip(results) {
                    match r {
                        Ok(data) if data.len() == e.len as usize => {
                            c.insert(e.fingerprint, Arc::new(data))
                        }
                        Ok(_) => {
                            failure.get_or_insert(super::VolError::io(
                                "chunk length differs from its extent",
                            ));
                        }
                        Err(err) => {
                            failure.get_or_insert(super::VolError::from(err));
                        }
                    }
                }
            }
            Err(err) => failure = Some(super::VolError::from(err)),
        }
        cache.loaded.notify_all();
        failure.map_or(Ok(()), Err)
    }

    /// Writes the plaintext of `extents` (in file order) into `window`,
    /// which holds file offsets [lo, lo + window.len()), for a flush that
    /// is about to replace them. Cached chunks are copied from the cache;
    /// the others are decoded straight into the window, `BATCH_BYTES` at a
    /// time (neighbouring records with one direct read) on
    /// `REWRITE_READERS` threads, and are not cached (nothing reads them
    /// once the flush has replaced them).
    pub(super) fn decode_for_rewrite(
        &self,
        extents: &[(u64, Extent)],
        lo: u64,
        window: &mut [u8],
    ) -> VResult<()> {
        let (inside, straddling) = slice_window(extents, lo, window);
        let mut missing: Vec<(Fp, &mut [u8])> = Vec::with_capacity(inside.len());
        {
            let c = lock(&self.cache.cached);
            for (fp, slot) in inside {
                match c.chunks.get(&fp) {
                    Some(data) => slot.copy_from_slice(data),
                    None => missing.push((fp, slot)),
                }
            }
        }
        self.decode_batches(batches_in_file_order(missing))?;
        // Extents that do not lie wholly inside the window (none when the
        // window was widened to extent boundaries): the general path.
        if !straddling.is_empty() {
            self.fill_from_extents(&straddling, lo, window)?;
        }
        Ok(())
    }

    /// Decodes the batches straight into their slices on up to
    /// `REWRITE_READERS` threads of their own rather than the pool's: each
    /// waits for its reads, so more of them than cores keep both the disk
    /// and the cores busy.
    fn decode_batches(&self, mut batches: Vec<Vec<(Fp, &mut [u8])>>) -> VResult<()> {
        batches.reverse();
        let threads = REWRITE_READERS.min(batches.len());
        let queue = Mutex::new(batches);
        let work = || -> VResult<()> {
            loop {
                let Some(mut batch) = lock(&queue).pop() else {
                    return Ok(());
                };
                for r in self.engine.read_chunks_into(&mut batch)? {
                    r?;
                }
            }
        };
        if threads <= 1 {
            return work();
        }
        std::thread::scope(|s| {
            let helpers: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
            let mine = work();
            helpers
                .into_iter()
                .map(|h| h.join().expect("a rewrite reader panicked"))
                .fold(mine, |a, b| a.and(b))
        })
    }

    /// How many of `extents` are neither cached nor being decoded.
    pub(super) fn chunks_to_decode(&self, extents: &[(u64, Extent)]) -> usize {
        let c = lock(&self.cache.cached);
        extents
            .iter()
            .filter(|(_, e)| {
                !c.chunks.contains_key(&e.fingerprint) && !c.loading.contains(&e.fingerprint)
            })
            .count()
    }

    /// Notes a read of [off, end) of `ino`: whether it continues the
    /// previous one (or starts the file), and if so the range whose chunks
    /// should be decoded ahead.
    pub(super) fn note_read(&self, ino: u64, off: u64, end: u64) -> ReadPattern {
        let mut positions = lock(&self.cache.positions);
        if positions.len() >= POSITIONS && !positions.contains_key(&ino) {
            positions.clear();
        }
        let p = positions.entry(ino).or_insert(Position {
            next: 0,
            queued_to: 0,
        });
        // Near the previous end counts as continuing it: the kernel's
        // readahead requests of one stream can arrive out of order (two
        // FUSE threads).
        let sequential = off.abs_diff(p.next) <= NEAR;
        p.next = if sequential { p.next.max(end) } else { end };
        if !sequential {
            p.queued_to = end;
            return ReadPattern {
                sequential,
                ahead: None,
            };
        }
        let from = p.queued_to.max(end);
        let to = end + WINDOW;
        // Queue in steps of a quarter window, not on every read; nothing
        // when no readahead thread runs.
        let ahead = if to < from + WINDOW / 4 || lock(&self.cache.queue).is_none() {
            None
        } else {
            p.queued_to = to;
            Some((from, to))
        };
        ReadPattern { sequential, ahead }
    }

    /// Hands extents to the decoder threads (dropped if there are none).
    pub(super) fn queue_readahead(&self, extents: Vec<Extent>) {
        if extents.is_empty() {
            return;
        }
        if let Some(q) = lock(&self.cache.queue).as_ref() {
            lock(&q.work).extents.extend(extents);
            q.ready.notify_all();
        }
    }

    /// Starts `DECODERS` threads that decode queued readahead chunks into
    /// the cache, taking them in file order (the chunk the reader needs
    /// next is never behind later ones; disk reads overlap each other and
    /// decryption). Plain threads that sleep when idle: a pool's spinning
    /// workers would take the cores from the FUSE threads.
    pub fn start_readahead(self: &Arc<Self>) {
        let q = Arc::new(Queue::default());
        // Stored first: dropping the cache closes it, which ends the threads.
        *lock(&self.cache.queue) = Some(q.clone());
        for i in 0..DECODERS {
            let weak = Arc::downgrade(self);
            let q = q.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("datastore-readahead-{i}"))
                .spawn(move || decode_queued(&q, &weak));
            if spawned.is_err() {
                // Fewer decoders; with none, no readahead is queued at all.
                if i == 0 {
                    *lock(&self.cache.queue) = None;
                }
                break;
            }
        }
    }
}

/// A decoder thread: takes the next queued chunk and decodes it into the
/// cache, until the volume goes. A failure drops what is queued (the
/// reader that needs a chunk meets the error itself).
fn decode_queued(q: &Queue, volume: &std::sync::Weak<Volume>) {
    loop {
        let batch = {
            let mut w = lock(&q.work);
            loop {
                if w.closed {
                    return;
                }
                if !w.extents.is_empty() {
                    break take_batch(&mut w.extents);
                }
                w = q.ready.wait(w).unwrap_or_else(|e| e.into_inner());
            }
        };
        let Some(v) = volume.upgrade() else { return };
        if v.decode_ahead(&batch).is_err() {
            lock(&q.work).extents.clear();
        }
    }
}

/// The next chunks for one decoder: from the front of the queue, up to
/// `BATCH_BYTES` of plaintext (at least one chunk).
fn take_batch(queue: &mut VecDeque<Extent>) -> Vec<Extent> {
    let mut batch = Vec::new();
    let mut bytes = 0u64;
    while let Some(e) = queue.front() {
        if !batch.is_empty() && bytes + u64::from(e.len) > BATCH_BYTES {
            break;
        }
        bytes += u64::from(e.len);
        batch.extend(queue.pop_front());
    }
    batch
}

/// A chunk to decode and the part of a window its plaintext goes to.
type Slot<'w> = (Fp, &'w mut [u8]);

/// Gives each extent lying wholly inside `window` (file offsets [lo, lo +
/// window.len())) its own slice of it; returns those and the extents that
/// straddle the window's edges.
fn slice_window<'w>(
    extents: &[(u64, Extent)],
    lo: u64,
    window: &'w mut [u8],
) -> (Vec<Slot<'w>>, Vec<(u64, Extent)>) {
    let hi = lo + window.len() as u64;
    let mut inside: Vec<(Fp, &mut [u8])> = Vec::with_capacity(extents.len());
    let mut straddling: Vec<(u64, Extent)> = Vec::new();
    let mut rest: &mut [u8] = window;
    let mut rest_at = lo;
    for &(off, e) in extents {
        let end = off + u64::from(e.len);
        if off < rest_at || end > hi {
            straddling.push((off, e));
            continue;
        }
        let tail = std::mem::take(&mut rest)
            .split_at_mut((off - rest_at) as usize)
            .1;
        let (mine, after) = tail.split_at_mut(e.len as usize);
        inside.push((e.fingerprint, mine));
        rest = after;
        rest_at = end;
    }
    (inside, straddling)
}

/// Batches of about BATCH_BYTES, taken in file order.
fn batches_in_file_order(missing: Vec<(Fp, &mut [u8])>) -> Vec<Vec<(Fp, &mut [u8])>> {
    let mut batches: Vec<Vec<(Fp, &mut [u8])>> = Vec::new();
    let mut bytes = 0;
    for chunk in missing {
        if bytes == 0 {
            batches.push(Vec::new());
        }
        bytes += chunk.1.len() as u64;
        batches.last_mut().expect("pushed above").push(chunk);
        if bytes >= BATCH_BYTES {
            bytes = 0;
        }
    }
    batches
}
