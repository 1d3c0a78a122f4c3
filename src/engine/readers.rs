//! Open read handles of segment files, kept for reuse and bounded.
//!
//! A store of the default 32 MiB segments has ~3,200 of them per 100 GB,
//! and a streamed segment holds two descriptors (page-cache and direct):
//! keeping every handle ever opened would run a daemon into its
//! descriptor limit (1,024 by default for services) and fail reads with
//! EMFILE. At most `MAX_OPEN` segments keep handles; the least recently
//! used is closed first (a handle still in use by a reader stays open
//! until that reader drops its `Arc`).

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

/// Segments whose handles are kept open.
const MAX_OPEN: usize = 128;

#[derive(Clone)]
pub(super) struct SegmentReaders {
    pub cached: Arc<File>,
    /// None until a streaming read asks; Some(None) where the file system
    /// refused O_DIRECT (tmpfs).
    pub direct: Option<Option<Arc<File>>>,
}

#[derive(Default)]
pub(super) struct ReaderCache {
    /// Handles and the tick of their last use.
    open: HashMap<u64, (SegmentReaders, u64)>,
    tick: u64,
}

impl ReaderCache {
    /// The handles of segment `id`, if open (marks them used).
    pub fn get(&mut self, id: u64) -> Option<SegmentReaders> {
        self.tick += 1;
        let tick = self.tick;
        self.open.get_mut(&id).map(|(r, used)| {
            *used = tick;
            r.clone()
        })
    }

    /// Keeps the handles of segment `id`, closing the least recently used
    /// segment's when too many are open.
    pub fn insert(&mut self, id: u64, readers: SegmentReaders) {
        self.tick += 1;
        self.open.insert(id, (readers, self.tick));
        if self.open.len() > MAX_OPEN {
            if let Some(oldest) = self
                .open
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| *id)
            {
                self.open.remove(&oldest);
            }
        }
    }

    /// Closes segment `id`'s handles (before its file goes).
    pub fn remove(&mut self, id: u64) {
        self.open.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readers() -> SegmentReaders {
        SegmentReaders {
            cached: Arc::new(File::open("/dev/null").unwrap()),
            direct: None,
        }
    }

    #[test]
    fn at_most_max_open_segments_keep_handles_and_the_least_recent_goes() {
        let mut cache = ReaderCache::default();
        for id in 0..MAX_OPEN as u64 {
            cache.insert(id, readers());
        }
        assert!(cache.get(0).is_some()); // 0 is now the most recent
        cache.insert(1000, readers());
        assert_eq!(cache.open.len(), MAX_OPEN);
        assert!(cache.get(1).is_none(), "the least recently used is closed");
        assert!(cache.get(0).is_some() && cache.get(1000).is_some());
        cache.remove(1000);
        assert!(cache.get(1000).is_none());
    }
}
