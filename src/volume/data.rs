//! File data: write buffers, re-chunking of dirty windows, reads that
//! overlay buffers on extents, truncate, fallocate, and the commit that
//! persists everything the volume changed (sealed) with the chunk index.

use crate::poison::Recover;
use std::collections::BTreeMap;
use std::sync::Arc;

use rayon::prelude::*;

use super::error::{err, VResult, VolError};
use super::inode::{Extent, Inode, Kind, Time};
use super::{
    lock, State, Volume, DIRTY_LIMIT, SCATTERED_DIRTY_LIMIT, TOTAL_DIRTY_LIMIT, WINDOW_GAP,
};
use crate::engine::ChunkRef;

/// The whole chunks a read decoded: (file offset, plaintext), in file
/// order (there may be holes between them), and the file's size then.
pub struct Around {
    pub file_size: u64,
    pub chunks: Vec<(u64, Arc<Vec<u8>>)>,
}

/// Extents a flush window replaces: (file offset, extent).
type Replaced = Vec<(u64, Extent)>;
/// A window to re-chunk: (start offset, extents it replaces, new content).
type Window = (u64, Replaced, Content);
/// A stored window: its start, the extents it replaced, its new chunks.
type StoredWindow = (u64, Replaced, Vec<ChunkRef>);

/// A window's new content: exactly one buffered piece, used in place (the
/// common case of a sequential write into a hole or past the end), or
/// assembled from stored extents and buffered writes just before it is
/// chunked, so at most one window per flush is in memory at a time.
enum Content {
    Piece(u64),
    Assemble { hi: u64 },
}

/// Windows that must be assembled are cut (at extent boundaries) to at
/// most about this size: random writes across a large file would otherwise
/// assemble the whole file in memory.
const MAX_WINDOW: u64 = 16 << 20;

/// Cuts [lo, hi) into windows of at most `MAX_WINDOW` (plus one extent)
/// without splitting any of `olds` (sorted, disjoint, inside [lo, hi)).
fn split_window(lo: u64, hi: u64, olds: &[(u64, Extent)]) -> Vec<(u64, u64)> {
    let mut windows = Vec::new();
    let mut start = lo;
    let mut i = 0;
    while hi - start > MAX_WINDOW {
        let limit = start + MAX_WINDOW;
        while i < olds.len() && olds[i].0 + olds[i].1.len as u64 <= limit {
            i += 1;
        }
        // Inside an extent: cut at its end; in a gap: cut right there.
        let cut = match olds.get(i) {
            Some((o, e)) if *o < limit => o + e.len as u64,
            _ => limit,
        };
        if cut >= hi {
            break;
        }
        windows.push((start, cut));
        start = cut;
    }
    windows.push((start, hi));
    windows
}

/// The buffered bytes inside [lo, hi): (offset, bytes) per piece.
/// (The pieces are disjoint: the walk goes back from `hi` and stops at
/// the first piece that ends at or before `lo`.)
pub(super) fn clip_pieces(buf: &BTreeMap<u64, Vec<u8>>, lo: u64, hi: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out: Vec<(u64, Vec<u8>)> = buf
        .range(..hi)
        .rev()
        .take_while(|(k, v)| **k + v.len() as u64 > lo)
        .map(|(k, v)| {
            let from = lo.max(*k);
            let to = hi.min(k + v.len() as u64);
            (from, v[(from - k) as usize..(to - k) as usize].to_vec())
        })
        .collect();
    out.reverse();
    out
}

/// Copies the buffered bytes that fall inside [lo, lo + out.len()) over out.
fn overlay_buffer(buf: &BTreeMap<u64, Vec<u8>>, lo: u64, out: &mut [u8]) {
    let hi = lo + out.len() as u64;
    let first = buf.range(..=lo).next_back().map_or(lo, |(k, _)| *k);
    for (k, data) in buf.range(first..hi) {
        let from = lo.max(*k);
        let to = hi.min(k + data.len() as u64);
        if from < to {
            out[(from - lo) as usize..(to - lo) as usize]
                .copy_from_slice(&data[(from - k) as usize..(to - k) as usize]);
        }
    }
}

/// A first write at least this large into an empty buffer starts it in a
/// recycled stream buffer.
const STREAM_WRITE: usize = 128 << 10;
/// The flusher's CPU priority (nice): below requests, above the idle jobs
/// (conversion, 19), so it keeps up with sustained writes.
const FLUSHER_NICE: i32 = 10;
/// Stream buffers kept for reuse: a stream alternates between one filling
/// and one being flushed.
const SPARE_BUFFERS: usize = 1;

/// Keeps the large pieces of a flushed buffer for the next stream, when
/// no reader holds the buffer any more.
fn recycle(st: &mut State, buf: Arc<BTreeMap<u64, Vec<u8>>>) {
    if let Ok(map) = Arc::try_unwrap(buf) {
        for piece in map.into_values() {
            let size = piece.capacity();
            if st.writes.spare_buffers.len() < SPARE_BUFFERS
                && (DIRTY_LIMIT..=2 * DIRTY_LIMIT).contains(&size)
            {
                st.writes.spare_buffers.push(piece);
            }
        }
    }
}

/// Capacity figures for statfs.
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
}

/// Inserts `data` at `off` into a buffer of non-overlapping ranges, merging
/// with ranges it overlaps or touches. Returns the change in buffered bytes.
fn buffer_insert(buf: &mut BTreeMap<u64, Vec<u8>>, off: u64, data: &[u8]) -> isize {
    let end = off + data.len() as u64;
    let touching: Vec<u64> = buf
        .range(..=end)
        .rev()
        .take_while(|(k, v)| **k + v.len() as u64 >= off)
        .map(|(k, _)| *k)
        .collect();
    if touching.is_empty() {
        buf.insert(off, data.to_vec());
        return data.len() as isize;
    }
    if let [k] = touching[..] {
        // Fast paths (sequential writes): inside one range, or extending it.
        let piece = buf.get_mut(&k).expect("key from range");
        let piece_end = k + piece.len() as u64;
        if k <= off && off <= piece_end {
            let at = (off - k) as usize;
            let overlap = (piece.len() - at).min(data.len());
            piece[at..at + overlap].copy_from_slice(&data[..overlap]);
            reserve_bounded(piece, data.len() - overlap);
            piece.extend_from_slice(&data[overlap..]);
            return (data.len() - overlap) as isize;
        }
    }
    let start = touching.iter().copied().min().unwrap_or(off).min(off);
    let stop = touching
        .iter()
        .map(|k| k + buf[k].len() as u64)
        .max()
        .unwrap_or(end)
        .max(end);
    let mut merged = vec![0u8; (stop - start) as usize];
    let mut old_total = 0isize;
    for k in &touching {
        let piece = buf.remove(k).expect("key from range");
        old_total += piece.len() as isize;
        let at = (k - start) as usize;
        merged[at..at + piece.len()].copy_from_slice(&piece);
    }
    let at = (off - start) as usize;
    merged[at..at + data.len()].copy_from_slice(data);
    let new_len = merged.len() as isize;
    buf.insert(start, merged);
    new_len - old_total
}

/// Makes room for `more` bytes at the end of a buffered piece. A piece
/// grown by small writes doubles its capacity as usual, but never past
/// what a buffer can hold before it is flushed (`DIRTY_LIMIT` plus one
/// write): a 32 MiB stream written 4 KiB at a time would otherwise sit in
/// a 64 MiB allocation, beyond what the dirty limits account for.
fn reserve_bounded(piece: &mut Vec<u8>, more: usize) {
    let need = piece.len() + more;
    if need <= piece.capacity() {
        return;
    }
    let step = 1 << 20;
    let bound = DIRTY_LIMIT + step;
    let target = if need >= bound {
        need + step // a flush is late: grow in steps, not per write
    } else {
        need.max((2 * piece.capacity()).min(bound))
    };
    piece.reserve_exact(target - piece.len());
}

/// Extents overlapping [off, end), in offset order.
pub(super) fn overlapping(
    extents: &BTreeMap<u64, Extent>,
    off: u64,
    end: u64,
) -> Vec<(u64, Extent)> {
    let mut v: Vec<(u64, Extent)> = extents
        .range(..end)
        .rev()
        .take_while(|(k, e)| **k + e.len as u64 > off)
        .map(|(k, e)| (*k, *e))
        .collect();
    v.reverse();
    v
}

/// Records `refs` as the file's extents from offset `at` on (each takes
/// over the reference the put gave it).
fn install_extents(st: &mut State, ino: u64, mut at: u64, refs: &[ChunkRef]) {
    for r in refs {
        let e = Extent {
            fingerprint: r.fingerprint,
            len: r.len,
        };
        if let Some(map) = st.cached.extents.get_mut(&ino) {
            map.insert(at, e);
        }
        st.pending.extent_changes.insert((ino, at), Some(e));
        at += r.len as u64;
    }
}

/// Copies the parts of `extents` (with their plaintext, `chunks`) that
/// fall inside [off, off + out.len()) into out.
fn copy_extents(extents: &[(u64, Extent)], chunks: &[Arc<Vec<u8>>], off: u64, out: &mut [u8]) {
    let end = off + out.len() as u64;
    for ((e_off, e), data) in extents.iter().zip(chunks) {
        let from = off.max(*e_off);
        let to = end.min(e_off + e.len as u64);
        if from < to {
            out[(from - off) as usize..(to - off) as usize]
                .copy_from_slice(&data[(from - e_off) as usize..(to - e_off) as usize]);
        }
    }
}

fn chunk_ref(e: &Extent) -> ChunkRef {
    ChunkRef {
        fingerprint: e.fingerprint,
        len: e.len,
    }
}

impl Volume {
    /// Copies the stored (extent) content of [off, off+out.len()) into out.
    pub(super) fn fill_from_extents(
        &self,
        extents: &[(u64, Extent)],
        off: u64,
        out: &mut [u8],
    ) -> VResult<Vec<Arc<Vec<u8>>>> {
        // Few chunks to decode (the others cached or being decoded by
        // readahead): decode inline (the pool's idle workers would spin on
        // the cores the FUSE threads need).
        let chunks: Vec<VResult<Arc<Vec<u8>>>> = if self.chunks_to_decode(extents) > 4 {
            extents.par_iter().map(|(_, e)| self.chunk(e)).collect()
        } else {
            extents.iter().map(|(_, e)| self.chunk(e)).collect()
        };
        let chunks: Vec<Arc<Vec<u8>>> = chunks.into_iter().collect::<VResult<_>>()?;
        copy_extents(extents, &chunks, off, out);
        Ok(chunks)
    }

    pub fn open_file(&self, ino: u64) -> VResult<()> {
        let mut st = lock(&self.state);
        self.load_inode(&mut st, ino)?;
        *st.open_counts.entry(ino).or_default() += 1;
        Ok(())
    }

    /// Last close of a handle: buffers become chunks; an unlinked inode is
    /// freed when its last handle goes. Committed by the next group commit.
    pub fn release(&self, ino: u64) -> VResult<()> {
        {
            let mut st = lock(&self.state);
            let count = st.open_counts.entry(ino).or_default();
            *count = count.saturating_sub(1);
            if *count == 0 {
                st.open_counts.remove(&ino);
                if st.cached.inodes.get(&ino).is_some_and(|i| i.nlink == 0) {
                    return self.free_inode(&mut st, ino);
                }
            }
        }
        self.schedule_flush(ino)
    }

    pub fn write(&self, ino: u64, off: u64, data: &[u8]) -> VResult<usize> {
        self.count_foreground_op();
        self.refuse_changes_if_stopped()?;
        let end = off
            .checked_add(data.len() as u64)
            .ok_or(VolError::new(libc::EFBIG))?;
        if end > i64::MAX as u64 {
            return err(libc::EFBIG);
        }
        if !self.engine.admit_write() {
            return Err(VolError {
                errno: libc::ENOSPC,
                cause: Some("the bucket mirror's backlog is full".into()),
            });
        }
        let mut st = lock(&self.state);
        let now = Time::now();
        {
            let inode = self.load_inode(&mut st, ino)?;
            if inode.kind != Kind::File {
                return err(libc::EINVAL);
            }
            let before = inode.size;
            inode.size = inode.size.max(end);
            st.writes.stored_size.entry(ino).or_insert(before);
            let inode = self.load_inode(&mut st, ino)?;
            inode.mtime = now;
            inode.ctime = now;
            Self::drop_privileges(inode, false);
        }
        Self::touch(&mut st, ino);
        st.synced.note_write(ino, off, end);
        let buffer_empty = st.writes.buffers.get(&ino).is_none_or(|b| b.is_empty());
        let delta = if buffer_empty && data.len() >= STREAM_WRITE {
            // Likely a stream: start it in a recycled buffer, whose pages
            // are already mapped (fresh ones cost a fault and a clear each).
            let mut piece = st.writes.spare_buffers.pop().unwrap_or_default();
            piece.clear();
            piece.extend_from_slice(data);
            st.writes.buffers.entry(ino).or_default().insert(off, piece);
            data.len() as isize
        } else {
            buffer_insert(st.writes.buffers.entry(ino).or_default(), off, data)
        };
        let total = st.writes.buffered.entry(ino).or_default();
        *total = (*total as isize + delta).max(0) as usize;
        let total = *total;
        let sequential = st.writes.buffers.get(&ino).is_some_and(|b| b.len() == 1);
        let limit = if sequential {
            DIRTY_LIMIT
        } else {
            SCATTERED_DIRTY_LIMIT
        };
        if total >= limit {
            // Back-pressure bounds memory: over the volume-wide budget
            // (buffered plus being flushed) the writer flushes its own
            // buffer, after any flush of the file still running; otherwise
            // the flusher does it. A sequential writer waits for its
            // previous flush (steady 32 MiB steps, no buffer regrowth);
            // scattered writes go on buffering (a larger buffer re-chunks
            // the file less often).
            let in_memory = st.writes.buffered.values().sum::<usize>()
                + st.writes.flushing_bytes.values().sum::<usize>();
            drop(st);
            if in_memory >= TOTAL_DIRTY_LIMIT {
                self.flush_inode(ino)?;
            } else {
                if sequential {
                    // A stream: one buffer filling while one is flushed.
                    drop(self.lock_unflushing(ino));
                }
                self.schedule_flush(ino)?;
            }
        }
        Ok(data.len())
    }

    pub fn read(&self, ino: u64, off: u64, size: u32) -> VResult<Vec<u8>> {
        self.read_around(ino, off, size).map(|(data, _)| data)
    }

    /// A read, and for a read that does not continue the previous one of
    /// the file, the whole chunks decoded to answer it (`Around`), so the
    /// caller can hand their other pages to the kernel's page cache. None
    /// while the file has buffered writes (the chunks would not be the
    /// file's content).
    pub fn read_around(&self, ino: u64, off: u64, size: u32) -> VResult<(Vec<u8>, Option<Around>)> {
        self.count_foreground_op();
        let (extents, pieces, len, file_size, no_around) = {
            let mut st = lock(&self.state);
            let inode = self.load_inode(&mut st, ino)?;
            match inode.kind {
                Kind::File => {}
                Kind::Dir => return err(libc::EISDIR),
                _ => return err(libc::EINVAL),
            }
            let fsize = inode.size;
            let touched = relatime(inode, self.engine.check_poisoned().is_ok());
            if touched {
                Self::touch(&mut st, ino);
            }
            if off >= fsize {
                return Ok((Vec::new(), None));
            }
            let len = (size as u64).min(fsize - off);
            let end = off + len;
            let map = self.load_extents(&mut st, ino)?;
            let extents = overlapping(map, off, end);
            let pattern = self.note_read(ino, off, end);
            if let Some((from, to)) = pattern.ahead {
                let ahead = overlapping(map, from, to).into_iter().map(|(_, e)| e);
                self.queue_readahead(ahead.collect());
            }
            // Buffer being flushed first, the current buffer over it.
            let layers = [
                st.writes.flushing.get(&ino).map(|b| &**b),
                st.writes.buffers.get(&ino),
            ];
            let buffered = layers.iter().any(|l| l.is_some());
            let pieces: Vec<(u64, Vec<u8>)> = layers
                .into_iter()
                .flatten()
                .flat_map(|b| clip_pieces(b, off, end))
                .collect();
            // A sequential reader has the kernel's readahead; buffered data
            // would make the chunks differ from the file.
            (extents, pieces, len, fsize, pattern.sequential || buffered)
        };
        let mut out = vec![0u8; len as usize];
        let chunks = self.fill_from_extents(&extents, off, &mut out)?;
        for (at, bytes) in pieces {
            let i = (at - off) as usize;
            out[i..i + bytes.len()].copy_from_slice(&bytes);
        }
        let around = (!no_around && !chunks.is_empty()).then(|| Around {
            file_size,
            chunks: extents.iter().map(|(o, _)| *o).zip(chunks).collect(),
        });
        Ok((out, around))
    }

    /// Waits until no flush of `ino` is running; returns the state lock.
    pub(super) fn lock_unflushing(&self, ino: u64) -> std::sync::MutexGuard<'_, State> {
        let mut st = lock(&self.state);
        while st.writes.flushing.contains_key(&ino) {
            st = self.flushed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st
    }

    /// Turns a file's write buffer into chunks: each dirty window is widened
    /// to the extents it touches and re-chunked; replaced extents release
    /// their chunks. The chunking runs without the volume lock (other
    /// requests go on; reads see the buffer being flushed); one flush per
    /// file at a time.
    pub(super) fn flush_inode(&self, ino: u64) -> VResult<()> {
        // Phase 1, locked: take the buffer, plan the windows.
        let (buf, plans, size) = {
            let mut st = self.lock_unflushing(ino);
            let Some(buf) = st.writes.buffers.remove(&ino) else {
                return Ok(());
            };
            let bytes = st.writes.buffered.remove(&ino).unwrap_or(0);
            let buf = Arc::new(buf);
            st.writes.flushing.insert(ino, buf.clone());
            st.writes.flushing_bytes.insert(ino, bytes);
            st.synced.flush_started(ino);
            match self.plan_flush(&mut st, ino, &buf) {
                Ok((plans, size)) => (buf, plans, size),
                Err(e) => {
                    self.end_flush(&mut st, ino, &buf, &[]);
                    return Err(e);
                }
            }
        };
        // Phase 2, unlocked: chunk, fingerprint, compress, encrypt, store.
        let (stored, failure) = self.store_windows(&buf, plans);
        // Phase 3, locked: install the new extents.
        let mut st = lock(&self.state);
        let new_refs: Vec<ChunkRef> = stored
            .iter()
            .flat_map(|(_, _, r)| r.iter().copied())
            .collect();
        if let Some(e) = failure {
            self.end_flush(&mut st, ino, &buf, &new_refs);
            return Err(e);
        }
        st.writes.flushing.remove(&ino);
        st.writes.flushing_bytes.remove(&ino);
        st.synced.flush_ended(ino, true);
        self.flushed.notify_all();
        recycle(&mut st, buf);
        if !st.cached.inodes.contains_key(&ino) || st.pending.removed_inodes.contains(&ino) {
            // Freed meanwhile: nothing references the new chunks.
            self.engine.release(&new_refs)?;
            return Ok(());
        }
        for (lo, olds, refs) in stored {
            let map = st.cached.extents.get_mut(&ino).expect("loaded in phase 1");
            for (o, _) in &olds {
                map.remove(o);
            }
            for (o, _) in &olds {
                st.pending.extent_changes.insert((ino, *o), None);
            }
            install_extents(&mut st, ino, lo, &refs);
            st.pending
                .deferred_releases
                .extend(olds.iter().map(|(_, e)| chunk_ref(e)));
        }
        // Stored data now covers the size the file had when the flush
        // began; later writes may still be buffered.
        if st.writes.buffers.contains_key(&ino) {
            st.writes.stored_size.insert(ino, size);
        } else {
            st.writes.stored_size.remove(&ino);
        }
        Self::touch(&mut st, ino);
        Ok(())
    }

    /// Stores each planned window's new content (a buffered piece as it
    /// is, or old data overlaid with the buffer); returns what was stored
    /// until the first failure, and that failure.
    fn store_windows(
        &self,
        buf: &BTreeMap<u64, Vec<u8>>,
        plans: Vec<Window>,
    ) -> (Vec<StoredWindow>, Option<VolError>) {
        let mut stored = Vec::new();
        // One assembly buffer for all windows: its pages stay mapped (fresh
        // ones cost a fault and a clear each on this kind of VM).
        let mut window: Vec<u8> = Vec::new();
        for (lo, olds, content) in plans {
            let put = match content {
                Content::Piece(key) => self.engine.put_bytes(&buf[&key]).map_err(VolError::from),
                Content::Assemble { hi } => {
                    window.clear();
                    window.resize((hi - lo) as usize, 0);
                    self.decode_for_rewrite(&olds, lo, &mut window)
                        .map(|()| overlay_buffer(buf, lo, &mut window))
                        .and_then(|()| self.engine.put_bytes(&window).map_err(VolError::from))
                }
            };
            match put {
                Ok(refs) => stored.push((lo, olds, refs)),
                Err(e) => return (stored, Some(e)),
            }
        }
        (stored, None)
    }

    /// The windows to re-chunk: (start, old extents replaced, new content).
    fn plan_flush(
        &self,
        st: &mut State,
        ino: u64,
        buf: &BTreeMap<u64, Vec<u8>>,
    ) -> VResult<(Vec<Window>, u64)> {
        let size = self.load_inode(st, ino)?.size;
        let mut windows: Vec<(u64, u64)> = Vec::new();
        for (off, data) in buf {
            let end = off + data.len() as u64;
            match windows.last_mut() {
                Some(w) if *off <= w.1 + WINDOW_GAP => w.1 = w.1.max(end),
                _ => windows.push((*off, end)),
            }
        }
        let extents = self.load_extents(st, ino)?;
        let widened: Vec<(u64, u64)> = windows
            .iter()
            .filter(|(lo, hi)| lo < hi)
            .map(|&(lo, hi)| {
                let lo2 = overlapping(extents, lo, lo + 1)
                    .first()
                    .map_or(lo, |(o, _)| *o);
                let hi2 = overlapping(extents, hi - 1, hi)
                    .first()
                    .map_or(hi, |(o, e)| o + e.len as u64);
                (lo2.min(lo), hi2.max(hi).min(size.max(hi)))
            })
            .collect();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for w in widened {
            match merged.last_mut() {
                Some(m) if w.0 <= m.1 => m.1 = m.1.max(w.1),
                _ => merged.push(w),
            }
        }
        let mut plans = Vec::new();
        for (lo, hi) in merged {
            let olds = overlapping(extents, lo, hi);
            if olds.is_empty() && buf.get(&lo).is_some_and(|p| lo + p.len() as u64 == hi) {
                // One buffered piece over nothing stored: chunked in place,
                // however large (nothing to assemble, so no need to cut).
                plans.push((lo, olds, Content::Piece(lo)));
                continue;
            }
            for (a, b) in split_window(lo, hi, &olds) {
                let part: Replaced = olds
                    .iter()
                    .filter(|(o, _)| *o >= a && *o < b)
                    .copied()
                    .collect();
                plans.push((a, part, Content::Assemble { hi: b }));
            }
        }
        Ok((plans, size))
    }

    /// A flush that failed: its buffer goes back under any newer writes
    /// (nothing the user wrote is dropped from memory), chunks it stored
    /// are released, and waiters are woken.
    fn end_flush(
        &self,
        st: &mut State,
        ino: u64,
        buf: &Arc<BTreeMap<u64, Vec<u8>>>,
        stored: &[ChunkRef],
    ) {
        st.writes.flushing.remove(&ino);
        st.writes.flushing_bytes.remove(&ino);
        st.synced.flush_ended(ino, false);
        self.flushed.notify_all();
        let _ = self.engine.release(stored);
        if !st.cached.inodes.contains_key(&ino) {
            return;
        }
        let newer = st.writes.buffers.remove(&ino).unwrap_or_default();
        let mut merged = (**buf).clone();
        for (off, data) in &newer {
            buffer_insert(&mut merged, *off, data);
        }
        let total = merged.values().map(|v| v.len()).sum();
        st.writes.buffers.insert(ino, merged);
        st.writes.buffered.insert(ino, total);
    }

    /// Queues a flush of `ino` for the flusher thread (or flushes now when
    /// the volume has none, as in tests and tools).
    pub(super) fn schedule_flush(&self, ino: u64) -> VResult<()> {
        if !lock(&self.state).writes.buffers.contains_key(&ino) {
            return Ok(()); // nothing buffered (e.g. a file created and closed)
        }
        let sender = self.flusher.locked().clone();
        match sender {
            Some(tx) => {
                if lock(&self.state).writes.flush_queued.insert(ino) && tx.send(ino).is_err() {
                    lock(&self.state).writes.flush_queued.remove(&ino);
                    return self.flush_inode(ino);
                }
                Ok(())
            }
            None => self.flush_inode(ino),
        }
    }

    /// Starts the thread that turns closed files' and logged buffers into
    /// chunks, so FUSE request threads never hash or encrypt on release or
    /// fsync. It and its chunking pool run at a lower CPU priority
    /// (`FLUSHER_NICE`): under load, requests go first.
    pub fn start_flusher(self: &Arc<Self>) {
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let weak = Arc::downgrade(self);
        let pool = rayon::ThreadPoolBuilder::new()
            .thread_name(|_| "datastore-flush-work".into())
            .start_handler(|_| crate::fsutil::lower_thread_priority(FLUSHER_NICE, false))
            .build()
            .ok();
        let spawned = std::thread::Builder::new()
            .name("datastore-flush".into())
            .spawn(move || {
                crate::fsutil::lower_thread_priority(FLUSHER_NICE, false);
                while let Ok(ino) = rx.recv() {
                    let Some(v) = weak.upgrade() else { break };
                    lock(&v.state).writes.flush_queued.remove(&ino);
                    let flushed = match &pool {
                        Some(pool) => pool.install(|| v.flush_inode(ino)),
                        None => v.flush_inode(ino),
                    };
                    if let Err(e) = flushed {
                        crate::log_line!("datastore: background flush failed: {e}");
                    }
                }
            });
        if spawned.is_ok() {
            *self.flusher.locked() = Some(tx);
        }
    }

    pub(super) fn truncate(&self, st: &mut State, ino: u64, size: u64) -> VResult<()> {
        if size > i64::MAX as u64 {
            return err(libc::EFBIG);
        }
        if self.load_inode(st, ino)?.kind != Kind::File {
            return err(libc::EINVAL);
        }
        // (The caller waited for any flush of this file to finish.)
        if let Some(buf) = st.writes.buffers.get_mut(&ino) {
            buf.retain(|off, _| *off < size);
            if let Some((off, piece)) = buf.iter_mut().next_back() {
                let keep = (size - off).min(piece.len() as u64) as usize;
                piece.truncate(keep);
            }
            let total = buf.values().map(|v| v.len()).sum();
            st.writes.buffered.insert(ino, total);
        }
        if let Some(stored) = st.writes.stored_size.get_mut(&ino) {
            *stored = (*stored).min(size);
        }
        let old = self.load_inode(st, ino)?.size;
        if size < old {
            let cut = overlapping(self.load_extents(st, ino)?, size, u64::MAX);
            for (o, e) in &cut {
                if *o < size {
                    // The extent straddling the new end keeps its prefix.
                    let data = self.chunk(e)?;
                    let refs = self.engine.put_bytes(&data[..(size - o) as usize])?;
                    install_extents(st, ino, *o, &refs);
                } else {
                    st.cached.extents.get_mut(&ino).expect("loaded").remove(o);
                    st.pending.extent_changes.insert((ino, *o), None);
                }
                st.pending.deferred_releases.push(chunk_ref(e));
            }
        }
        let now = Time::now();
        let inode = self.load_inode(st, ino)?;
        inode.size = size;
        inode.mtime = now;
        inode.ctime = now;
        Self::touch(st, ino);
        st.synced.note_cut(ino, size);
        Ok(())
    }

    /// Mode 0 extends the size (the new range reads as zeros and costs
    /// nothing until written); KEEP_SIZE is a no-op; others are refused.
    pub fn fallocate(&self, ino: u64, off: u64, len: u64, mode: i32) -> VResult<()> {
        let end = off.checked_add(len).ok_or(VolError::new(libc::EFBIG))?;
        let mut st = self.state_for_change()?;
        match mode {
            0 => {
                let inode = self.load_inode(&mut st, ino)?;
                if inode.kind != Kind::File {
                    return err(libc::ENODEV);
                }
                if end > inode.size {
                    inode.size = end;
                    inode.ctime = Time::now();
                    Self::touch(&mut st, ino);
                    st.synced.note_attrs(ino);
                }
                Ok(())
            }
            libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            _ => err(libc::EOPNOTSUPP),
        }
    }

    /// Close of a descriptor: the file's buffer is queued for chunking
    /// (committed by the next group commit).
    pub fn flush(&self, ino: u64) -> VResult<()> {
        self.schedule_flush(ino)
    }

    /// A durable commit, then the bucket mirror when the store has one:
    /// what fsync, fsyncdir and unmount promise.
    pub fn persist(&self) -> VResult<()> {
        self.commit(true)?;
        Ok(self.engine.sync_remote()?)
    }

    /// Every buffer to chunks, then a durable local commit, then the intent
    /// log's covered records off the disk (lock; unmount follows it with
    /// `persist` for the bucket mirror).
    pub fn sync_all(&self) -> VResult<()> {
        let inos: Vec<u64> = {
            let st = lock(&self.state);
            st.writes
                .buffers
                .keys()
                .chain(st.writes.flushing.keys())
                .copied()
                .collect()
        };
        for ino in inos {
            self.flush_inode(ino)?;
        }
        self.commit(true)?;
        self.drain_intent_log()
    }

    pub fn statfs(&self) -> VResult<StatFs> {
        let s = crate::fsutil::statvfs(self.engine.store_dir()).map_err(VolError::io)?;
        let files = lock(&self.state).next_ino;
        Ok(StatFs {
            blocks: s.f_blocks * s.f_frsize / 4096,
            bfree: s.f_bfree * s.f_frsize / 4096,
            bavail: s.f_bavail * s.f_frsize / 4096,
            files,
            ffree: u32::MAX as u64,
            bsize: 4096,
        })
    }
}

/// The `relatime` rule the mount announces: a read moves the access time
/// to now when it is not after the last change or is a day old (so a
/// read after a write shows, without a metadata write per read). Not once
/// writes stopped. True when it moved.
fn relatime(inode: &mut Inode, writable: bool) -> bool {
    const DAY_NS: i128 = 86_400 * 1_000_000_000;
    let now = Time::now();
    let ns = |t: Time| t.secs as i128 * 1_000_000_000 + t.nanos as i128;
    let stale = ns(inode.atime) <= ns(inode.mtime)
        || ns(inode.atime) <= ns(inode.ctime)
        || ns(now) - ns(inode.atime) >= DAY_NS;
    if writable && stale {
        inode.atime = now;
    }
    writable && stale
}

#[cfg(test)]
mod tests {
    use super::{
        buffer_insert, clip_pieces, overlay_buffer, split_window, Extent, DIRTY_LIMIT, MAX_WINDOW,
    };
    use std::collections::BTreeMap;

    fn extent(len: u32) -> Extent {
        Extent {
            fingerprint: [0; 32],
            len,
        }
    }

    #[test]
    fn windows_are_bounded_and_never_split_an_extent() {
        // 256 KiB extents from 1 MiB to 40 MiB, a hole, then 3 more.
        let mut olds: Vec<(u64, Extent)> = (0..156u64)
            .map(|i| ((1 << 20) + i * (256 << 10), extent(256 << 10)))
            .collect();
        for i in 0..3u64 {
            olds.push(((80 << 20) + i * (256 << 10), extent(256 << 10)));
        }
        let (lo, hi) = (0, 100 << 20);
        let windows = split_window(lo, hi, &olds);
        assert_eq!(windows.first().unwrap().0, lo);
        assert_eq!(windows.last().unwrap().1, hi);
        for pair in windows.windows(2) {
            assert_eq!(pair[0].1, pair[1].0, "windows are contiguous");
        }
        for (a, b) in &windows {
            assert!(b - a <= MAX_WINDOW + (256 << 10), "{a}..{b} too large");
            for (o, e) in &olds {
                let end = o + e.len as u64;
                assert!(
                    end <= *a || *o >= *b || (*o >= *a && end <= *b),
                    "extent {o} split"
                );
            }
        }
        assert_eq!(split_window(5, 10, &[]), vec![(5, 10)]);
    }

    #[test]
    fn buffer_overlay_clips_pieces_to_the_window() {
        let mut b = BTreeMap::new();
        b.insert(0u64, b"abcdef".to_vec());
        b.insert(10u64, b"XYZ".to_vec());
        let mut out = [b'.'; 8];
        overlay_buffer(&b, 4, &mut out); // [4, 12)
        assert_eq!(&out, b"ef....XY");
        let clipped = clip_pieces(&b, 4, 12);
        assert_eq!(clipped, [(4, b"ef".to_vec()), (10, b"XY".to_vec())]);
        assert!(clip_pieces(&b, 6, 10).is_empty());
    }

    #[test]
    fn a_piece_grown_by_small_writes_stays_within_the_dirty_limit() {
        let mut buf = BTreeMap::new();
        let block = vec![7u8; 4096];
        let mut off = 0u64;
        // A little past the limit, as when the flusher takes the buffer
        // a moment after it filled.
        let end = DIRTY_LIMIT + 40 * 4096;
        while (off as usize) < end {
            buffer_insert(&mut buf, off, &block);
            off += 4096;
        }
        let piece = &buf[&0];
        assert_eq!(piece.len(), end);
        assert!(
            piece.capacity() <= DIRTY_LIMIT + (1 << 20),
            "{}",
            piece.capacity()
        );
    }

    #[test]
    fn buffer_merges_overlaps_and_neighbours() {
        let mut b = BTreeMap::new();
        assert_eq!(buffer_insert(&mut b, 10, b"abc"), 3);
        assert_eq!(buffer_insert(&mut b, 20, b"xyz"), 3);
        assert_eq!(buffer_insert(&mut b, 13, b"1234567"), 7); // touches both
        assert_eq!(b.len(), 1);
        assert_eq!(b[&10], b"abc1234567xyz");
        assert_eq!(buffer_insert(&mut b, 11, b"ZZ"), 0);
        assert_eq!(b[&10], b"aZZ1234567xyz");
        // appends extend in place; a write running past the end grows it
        assert_eq!(buffer_insert(&mut b, 23, b"++"), 2);
        assert_eq!(buffer_insert(&mut b, 24, b"!!!"), 2);
        assert_eq!(b[&10], b"aZZ1234567xyz+!!!");
        assert_eq!(b.len(), 1);
    }
}
