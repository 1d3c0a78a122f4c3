//! Fills the kernel's page cache with the rest of each chunk a random read
//! decoded (FUSE notify_store), so the next small reads inside that chunk
//! are answered by the kernel instead of decoding the chunk again (a 4 KiB
//! read decodes a whole chunk, 64 KiB on average). Also owns the notifier
//! `lock` uses to drop cached pages.
//!
//! Owns: the notifier, one store thread fed by a bounded queue (a full
//! queue drops offers: filling is only ever an optimisation), which inodes
//! are open for writing, and a version bumped by every change of content
//! or size.
//!
//! Invariant: a store never leaves the page cache older than a change the
//! kernel has already seen. Content changes need a write handle and sizes
//! change by setattr, so:
//! - no store for an inode open for writing, or while a setattr changes its
//!   size (`change` marks the inode, `end_change` unmarks it);
//! - a read takes its ticket (the version) before it reads the volume, and
//!   the store thread drops a job whose ticket is not the current version;
//! - a change of the inode being stored at that moment waits until that
//!   store ends. It is deferred to the store thread instead of blocking a
//!   FUSE thread: the store may wait for page locks held by reads that only
//!   the FUSE threads can answer;
//! - `pause` (lock) stops stores and waits for the running one, so no
//!   plaintext reaches the page cache after lock's invalidation.
//!
//! Stored ranges are whole pages inside the file (a store past the end
//! would grow the kernel's idea of its size), outside the pages the read
//! itself answered.

use crate::poison::Recover;
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use fuser::{INodeNo, Notifier};

use crate::volume::Around;

/// Offers waiting for the store thread; more are dropped.
const QUEUE: usize = 64;
const PAGE: u64 = 4096;

/// Work to run once the store of an inode that is running ends.
type Deferred = Box<dyn FnOnce() + Send>;

struct Job {
    ino: u64,
    ticket: u64,
    /// The bytes the read answered: [from, to).
    from: u64,
    to: u64,
    around: Around,
}

#[derive(Default)]
struct State {
    paused: bool,
    /// Inodes open for writing or being resized: handles (or changes) each.
    writers: HashMap<u64, u32>,
    version: u64,
    /// The inode the store thread is storing now.
    storing: Option<u64>,
    deferred: Vec<Deferred>,
}

pub struct PageFill {
    notifier: Mutex<Option<Notifier>>,
    state: Mutex<State>,
    stored: Condvar,
    queue: SyncSender<Job>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.locked()
}

impl PageFill {
    /// A filler with its store thread; idle until `set_notifier`.
    pub fn new() -> Arc<Self> {
        let (queue, jobs) = mpsc::sync_channel(QUEUE);
        let fill = Arc::new(PageFill {
            notifier: Mutex::new(None),
            state: Mutex::new(State::default()),
            stored: Condvar::new(),
            queue,
        });
        let weak = Arc::downgrade(&fill);
        std::thread::Builder::new()
            .name("page-fill".into())
            .spawn(move || store_loop(weak, jobs))
            .expect("spawn the page-fill thread");
        fill
    }

    /// The mount's notifier (set once mounted).
    pub fn set_notifier(&self, n: Notifier) {
        *lock(&self.notifier) = Some(n);
    }

    /// Drops the kernel's cached pages and attributes of `ino`.
    pub fn invalidate(&self, ino: u64) {
        if let Some(n) = lock(&self.notifier).as_ref() {
            let _ = n.inval_inode(INodeNo(ino), 0, 0);
        }
    }

    /// Drops the kernel's cached pages of [at, at + len) of `ino` (and its
    /// cached attributes: the kernel drops those with any invalidation).
    pub fn invalidate_range(&self, ino: u64, at: u64, len: u64) {
        let notifier = lock(&self.notifier).clone();
        if let Some(n) = notifier {
            let _ = n.inval_inode(INodeNo(ino), at as i64, len as i64);
        }
    }

    /// Drops the kernel's cached entry `name` in `parent` (also a cached
    /// "no such name") and the parent's attributes.
    pub fn invalidate_entry(&self, parent: u64, name: &[u8]) {
        if let Some(n) = lock(&self.notifier).as_ref() {
            let _ = n.inval_entry(INodeNo(parent), std::ffi::OsStr::from_bytes(name));
            let _ = n.inval_inode(INodeNo(parent), 0, 0);
        }
    }

    /// Taken before a read looks at the volume; None when its chunks must
    /// not be stored (paused, or the inode is being changed).
    pub fn ticket(&self, ino: u64) -> Option<u64> {
        let st = lock(&self.state);
        (!st.paused && !st.writers.contains_key(&ino)).then_some(st.version)
    }

    /// Offers the chunks a read of [from, to) decoded; never blocks.
    pub fn offer(&self, ino: u64, ticket: u64, from: u64, to: u64, around: Around) {
        let _ = self.queue.try_send(Job {
            ino,
            ticket,
            from,
            to,
            around,
        });
    }

    /// Marks `ino` as changing (no stores until `end_change`) and runs `f`,
    /// at once or, when `ino` is being stored right now, on the store
    /// thread as soon as that store ends.
    pub fn change(&self, ino: u64, f: impl FnOnce() + Send + 'static) {
        let mut st = lock(&self.state);
        *st.writers.entry(ino).or_default() += 1;
        st.version += 1;
        if st.storing == Some(ino) {
            st.deferred.push(Box::new(f));
            return;
        }
        drop(st);
        f();
    }

    /// Ends one `change` of `ino` (a write handle's release, a resize).
    pub fn end_change(&self, ino: u64) {
        let mut st = lock(&self.state);
        if let Some(n) = st.writers.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                st.writers.remove(&ino);
            }
        }
    }

    /// Stops storing and waits for the store running, if any.
    pub fn pause(&self) {
        let mut st = lock(&self.state);
        st.paused = true;
        st.version += 1;
        while st.storing.is_some() {
            st = self.stored.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn resume(&self) {
        lock(&self.state).paused = false;
    }

    fn store(&self, job: Job) {
        {
            let mut st = lock(&self.state);
            if st.paused || st.version != job.ticket || st.writers.contains_key(&job.ino) {
                return;
            }
            st.storing = Some(job.ino);
        }
        if let Some(n) = lock(&self.notifier).clone() {
            for (at, bytes) in pages_to_store(&job) {
                // ENOENT (the kernel dropped the inode) is answered as Ok;
                // any other refusal just ends this job.
                if n.store(INodeNo(job.ino), at, &bytes).is_err() {
                    break;
                }
                crate::metrics::record_fill(bytes.len());
            }
        }
        let deferred = {
            let mut st = lock(&self.state);
            st.storing = None;
            std::mem::take(&mut st.deferred)
        };
        self.stored.notify_all();
        for f in deferred {
            f();
        }
    }
}

fn store_loop(fill: std::sync::Weak<PageFill>, jobs: Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        let Some(fill) = fill.upgrade() else { break };
        fill.store(job);
    }
}

/// Contiguous chunks: start, end, and each chunk's (offset, bytes).
type Run<'a> = (u64, u64, Vec<(u64, &'a [u8])>);

/// The page-aligned pieces of the job's chunks outside the pages the read
/// answered and inside the file: (file offset, bytes).
fn pages_to_store(job: &Job) -> Vec<(u64, Vec<u8>)> {
    let size = job.around.file_size;
    let answered = (job.from / PAGE * PAGE, job.to.div_ceil(PAGE) * PAGE);
    let mut out = Vec::new();
    // Runs of contiguous chunks: [start, end) with their pieces.
    let mut runs: Vec<Run> = Vec::new();
    for (at, data) in &job.around.chunks {
        let end = at + data.len() as u64;
        match runs.last_mut() {
            Some(run) if run.1 == *at => {
                run.1 = end;
                run.2.push((*at, data));
            }
            _ => runs.push((*at, end, vec![(*at, data)])),
        }
    }
    for (start, end, pieces) in runs {
        let end = end.min(size);
        for (lo, hi) in [(start, end.min(answered.0)), (start.max(answered.1), end)] {
            let lo = lo.div_ceil(PAGE) * PAGE;
            let hi = if hi == size { hi } else { hi / PAGE * PAGE };
            if lo >= hi {
                continue;
            }
            let mut bytes = Vec::with_capacity((hi - lo) as usize);
            for (at, data) in &pieces {
                let a = lo.max(*at);
                let b = hi.min(at + data.len() as u64);
                if a < b {
                    bytes.extend_from_slice(&data[(a - at) as usize..(b - at) as usize]);
                }
            }
            out.push((lo, bytes));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(from: u64, to: u64, size: u64, chunks: &[(u64, usize)]) -> Job {
        Job {
            ino: 2,
            ticket: 0,
            from,
            to,
            around: Around {
                file_size: size,
                chunks: chunks
                    .iter()
                    .map(|(at, len)| {
                        let bytes = (0..*len).map(|i| ((at + i as u64) % 251) as u8);
                        (*at, Arc::new(bytes.collect()))
                    })
                    .collect(),
            },
        }
    }

    fn expected(at: u64, len: u64) -> Vec<u8> {
        (at..at + len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn stores_whole_pages_around_the_read_and_never_past_the_end() {
        // Two chunks [1000, 70000) and [70000, 100000) of a 100,000-byte file,
        // a 4 KiB read at 8192.
        let j = job(8192, 12288, 100_000, &[(1000, 69_000), (70_000, 30_000)]);
        let got = pages_to_store(&j);
        let spans: Vec<(u64, u64)> = got.iter().map(|(a, b)| (*a, b.len() as u64)).collect();
        // Before the read: from the first whole page (4096) to the read;
        // after it: through both chunks to the end of the file (its last,
        // partial page included).
        assert_eq!(spans, vec![(4096, 4096), (12288, 100_000 - 12288)]);
        for (at, bytes) in got {
            assert_eq!(bytes, expected(at, bytes.len() as u64));
        }
    }

    #[test]
    fn a_hole_between_chunks_splits_the_store_and_partial_pages_are_left_out() {
        // Chunks [0, 10000) and [20000, 30000) of a 50,000-byte file (a hole
        // between them), read of the first page.
        let j = job(0, 4096, 50_000, &[(0, 10_000), (20_000, 10_000)]);
        let spans: Vec<(u64, u64)> = pages_to_store(&j)
            .iter()
            .map(|(a, b)| (*a, b.len() as u64))
            .collect();
        assert_eq!(spans, vec![(4096, 4096), (20480, 28672 - 20480)]);
    }
}
