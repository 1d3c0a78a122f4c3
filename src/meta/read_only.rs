//! A redb storage backend that never writes to the database file: for the
//! commands that only look at a store (`status`, `scrub`, `encryption
//! show`, `encryption scan`), which must work on read-only media and leave
//! the store byte for byte as it was.
//!
//! redb writes even when it only opens a file (its header's "needs repair"
//! flag, and the allocator state when the last writer did not close
//! cleanly). Those writes land in an in-memory overlay of whole pages that
//! later reads see; the file itself is opened O_RDONLY.
//!
//! Invariant: the file descriptor is read-only, so no code path through
//! this backend can change the file.

use crate::poison::Recover;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

/// Overlay granularity (any size works; redb's pages are 4 KiB).
const PAGE: u64 = 4096;

#[derive(Debug)]
pub struct ReadOnlyFile {
    file: File,
    overlay: Mutex<Overlay>,
}

#[derive(Debug)]
struct Overlay {
    /// The length redb sees (it may grow or shrink it in memory).
    len: u64,
    /// Pages written since open, by page number; a page past the file's
    /// end that is not here reads as zeros.
    pages: HashMap<u64, Vec<u8>>,
    /// The file's real length, for reads of pages not in `pages`.
    file_len: u64,
}

impl ReadOnlyFile {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let file_len = file.metadata()?.len();
        Ok(ReadOnlyFile {
            file,
            overlay: Mutex::new(Overlay {
                len: file_len,
                pages: HashMap::new(),
                file_len,
            }),
        })
    }
}

impl Overlay {
    /// One page as redb would see it now.
    fn page(&self, file: &File, n: u64) -> io::Result<Vec<u8>> {
        if let Some(p) = self.pages.get(&n) {
            return Ok(p.clone());
        }
        let mut buf = vec![0u8; PAGE as usize];
        let start = n * PAGE;
        if start < self.file_len {
            let want = (self.file_len - start).min(PAGE) as usize;
            file.read_exact_at(&mut buf[..want], start)?;
        }
        Ok(buf)
    }
}

fn lock(m: &Mutex<Overlay>) -> std::sync::MutexGuard<'_, Overlay> {
    m.locked()
}

impl redb::StorageBackend for ReadOnlyFile {
    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.overlay).len)
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let o = lock(&self.overlay);
        let end = offset
            .checked_add(len as u64)
            .filter(|e| *e <= o.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        if o.pages.is_empty() {
            let mut buf = vec![0u8; len];
            let from_file = o.file_len.saturating_sub(offset).min(len as u64) as usize;
            self.file.read_exact_at(&mut buf[..from_file], offset)?;
            return Ok(buf);
        }
        let mut out = Vec::with_capacity(len);
        let mut pos = offset;
        while pos < end {
            let n = pos / PAGE;
            let page = o.page(&self.file, n)?;
            let from = (pos - n * PAGE) as usize;
            let to = ((end - n * PAGE).min(PAGE)) as usize;
            out.extend_from_slice(&page[from..to]);
            pos = n * PAGE + to as u64;
        }
        Ok(out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut o = lock(&self.overlay);
        if len < o.len {
            // Bytes past the new end read as zeros if it grows again.
            let keep = len.div_ceil(PAGE);
            o.pages.retain(|n, _| *n < keep);
            if let Some(p) = o.pages.get_mut(&(len / PAGE)) {
                p[(len % PAGE) as usize..].fill(0);
            }
            o.file_len = o.file_len.min(len);
        }
        o.len = len;
        Ok(())
    }

    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut o = lock(&self.overlay);
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let n = pos / PAGE;
            let mut page = o.page(&self.file, n)?;
            let from = (pos - n * PAGE) as usize;
            let take = rest.len().min(PAGE as usize - from);
            page[from..from + take].copy_from_slice(&rest[..take]);
            o.pages.insert(n, page);
            rest = &rest[take..];
            pos += take as u64;
        }
        o.len = o.len.max(offset + data.len() as u64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend;

    #[test]
    fn writes_stay_in_memory_and_reads_see_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let original: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        std::fs::write(&path, &original).unwrap();
        let b = ReadOnlyFile::open(&path).unwrap();
        assert_eq!(b.read(5000, 100).unwrap(), original[5000..5100]);
        b.write(4090, &[0xAA; 20]).unwrap();
        let seen = b.read(4080, 40).unwrap();
        assert_eq!(&seen[..10], &original[4080..4090]);
        assert_eq!(&seen[10..30], &[0xAA; 20]);
        assert_eq!(&seen[30..], &original[4110..4120]);
        b.set_len(20_000).unwrap();
        assert_eq!(b.read(12_000, 8).unwrap(), [0; 8], "grown bytes are zeros");
        b.write(19_999, &[7]).unwrap();
        b.set_len(9_000).unwrap();
        b.set_len(20_000).unwrap();
        assert_eq!(b.read(9_000, 8).unwrap(), [0; 8], "cut bytes read as zeros");
        assert_eq!(b.read(19_999, 1).unwrap(), [0]);
        assert!(b.read(19_999, 2).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), original, "file untouched");
    }

    #[test]
    fn a_database_opens_and_reads_without_changing_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        const T: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("t");
        {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(T).unwrap().insert(1, 42).unwrap();
            txn.commit().unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        let db = redb::Database::builder()
            .create_with_backend(ReadOnlyFile::open(&path).unwrap())
            .unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(T).unwrap().insert(2, 7).unwrap();
        txn.commit().unwrap();
        let r = db.begin_read().unwrap();
        let t = r.open_table(T).unwrap();
        assert_eq!(t.get(1).unwrap().unwrap().value(), 42);
        assert_eq!(t.get(2).unwrap().unwrap().value(), 7);
        drop((t, r, db));
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
}
