//! Local segment files: append-only files of chunk records.
//!
//! Owns: the segment file header, file naming, the open segment's
//! roll-over (its append buffer is `append::AppendBuffer`), and positional
//! reads (through the page cache, or direct from the disk for reads that
//! stream through a file).
//!
//! Invariants:
//! - A segment file is only ever appended to, and only while it is the open
//!   segment of the running engine; after a restart a new segment is opened.
//! - Bytes beyond a segment's committed length (kept in the metadata segment
//!   table) belong to no committed chunk and are cut off at the next open.
//! - Segment ids only grow; a deleted id is never reused.
//! - The open segment's file may run up to 4 KiB past its length (zero
//!   padding of a direct write); a sealed segment is cut to its length.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::append::AppendBuffer;

pub const SEGMENT_MAGIC: [u8; 8] = *b"DSSEGMNT";
pub const SEGMENT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_LEN: u64 = 32;
/// Appends are gathered into writes of about this size.
const WRITE_BUFFER: usize = 4 << 20;
/// Sealed segments kept open until the next durable commit syncs them;
/// older ones are synced when they are sealed past this many.
const UNSYNCED_MAX: usize = 32;

pub fn segment_path(segments_dir: &Path, id: u64) -> PathBuf {
    segments_dir.join(format!("{id:016x}.seg"))
}

/// The id encoded in a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Lists (id, path) of every segment file, sorted by id.
pub fn list_segments(segments_dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(segments_dir)? {
        let entry = entry?;
        if let Some(id) = entry.file_name().to_str().and_then(parse_segment_name) {
            out.push((id, entry.path()));
        }
    }
    out.sort_by_key(|(id, _)| *id);
    Ok(out)
}

fn header_bytes(id: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&id.to_le_bytes());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment file header; returns a reason when it is not valid.
pub fn check_header(b: &[u8], id: u64) -> Result<(), BadHeader> {
    if b.len() < SEGMENT_HEADER_LEN as usize {
        return Err(BadHeader::Short);
    }
    if b[..32] != header_bytes(id) {
        return Err(BadHeader::Damaged);
    }
    Ok(())
}

/// Why a segment file's header is not this segment's.
#[derive(Debug, thiserror::Error)]
pub enum BadHeader {
    #[error("segment header cut short")]
    Short,
    #[error("segment header is damaged or names another segment")]
    Damaged,
}

/// The open (appendable) segment plus segments sealed since the last sync.
pub struct SegmentWriter {
    dir: PathBuf,
    id: u64,
    file: Arc<File>,
    /// The open segment's O_DIRECT write handle (None where the file
    /// system has no direct I/O).
    direct: Option<File>,
    /// Bytes appended and not yet written, and the logical length.
    buf: AppendBuffer,
    roll_at: u64,
    /// Sealed segments not yet fdatasync'ed, with their final length.
    /// (None: already synced early, see `UNSYNCED_MAX`.)
    sealed_unsynced: Vec<(u64, u64, Option<Arc<File>>)>,
}

impl SegmentWriter {
    /// Creates segment `id` (which must not exist) and makes it the open one.
    pub fn create(dir: &Path, id: u64, roll_at: u64) -> std::io::Result<Self> {
        let file = Self::create_file(dir, id)?;
        Ok(SegmentWriter {
            dir: dir.to_path_buf(),
            id,
            file: Arc::new(file),
            direct: open_direct_write(&segment_path(dir, id)),
            buf: AppendBuffer::new(WRITE_BUFFER + (1 << 20), &header_bytes(id)),
            roll_at,
            sealed_unsynced: Vec::new(),
        })
    }

    fn create_file(dir: &Path, id: u64) -> std::io::Result<File> {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(segment_path(dir, id))?;
        f.write_all(&header_bytes(id))?;
        Ok(f)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn len(&self) -> u64 {
        self.buf.end()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == SEGMENT_HEADER_LEN
    }

    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// Appends one record; returns (segment id, offset). Rolls to a new
    /// segment first when this one would pass its size.
    pub fn append(&mut self, record: &[u8]) -> std::io::Result<(u64, u64)> {
        if !self.is_empty() && self.len() + record.len() as u64 > self.roll_at {
            self.roll()?;
        }
        if self.buf.room_left() < record.len() {
            self.flush()?;
        }
        let at = self.len();
        self.buf.push(record);
        if self.buf.unwritten() >= WRITE_BUFFER {
            self.flush()?;
        }
        Ok((self.id, at))
    }

    /// Writes buffered bytes to the file (no fsync).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.buf.flush(&self.file, &mut self.direct)
    }

    /// Makes sure bytes up to `end` of the open segment are in the file.
    pub fn flush_through(&mut self, id: u64, end: u64) -> std::io::Result<()> {
        if id == self.id && end > self.buf.flushed() {
            self.flush()?;
        }
        Ok(())
    }

    fn roll(&mut self) -> std::io::Result<()> {
        self.flush()?;
        let len = self.len();
        if self.file.metadata()?.len() > len {
            // Padding of the last direct write.
            self.file.set_len(len)?;
        }
        let next_id = self.id + 1;
        let next = Self::create_file(&self.dir, next_id)?;
        let old = std::mem::replace(&mut self.file, Arc::new(next));
        self.sealed_unsynced.push((self.id, len, Some(old)));
        self.id = next_id;
        self.direct = open_direct_write(&segment_path(&self.dir, next_id));
        self.buf.restart(&header_bytes(next_id));
        let open = self
            .sealed_unsynced
            .iter()
            .filter(|s| s.2.is_some())
            .count();
        if open > UNSYNCED_MAX {
            // Many segments written without a durable commit: sync the
            // oldest now rather than hold a descriptor for each (it stays
            // listed: its length goes into the next commit).
            if let Some(slot) = self.sealed_unsynced.iter_mut().find(|s| s.2.is_some()) {
                if let Some(f) = &slot.2 {
                    f.sync_data()?;
                }
                slot.2 = None;
            }
        }
        Ok(())
    }

    /// Flushes and returns what a commit records: the length of every
    /// segment written since the last durable commit. For a durable commit
    /// it also hands out the files to fdatasync and forgets the sealed ones.
    pub fn prepare_commit(&mut self, durable: bool) -> std::io::Result<CommitView> {
        self.flush()?;
        let mut lengths: Vec<(u64, u64)> = self
            .sealed_unsynced
            .iter()
            .map(|(id, len, _)| (*id, *len))
            .collect();
        lengths.push((self.id, self.len()));
        let mut to_sync = Vec::new();
        if durable {
            to_sync = std::mem::take(&mut self.sealed_unsynced)
                .into_iter()
                .filter_map(|(_, _, f)| f)
                .collect();
            to_sync.push(self.file.clone());
        }
        Ok(CommitView { lengths, to_sync })
    }

    /// Seals the open segment and starts a fresh one (used by GC so that the
    /// segment it compacts into is never one it is about to delete).
    pub fn force_roll(&mut self) -> std::io::Result<()> {
        if !self.is_empty() {
            self.roll()?;
        }
        Ok(())
    }
}

/// What a commit needs from the writer.
pub struct CommitView {
    pub lengths: Vec<(u64, u64)>,
    pub to_sync: Vec<Arc<File>>,
}

/// Reads `len` bytes at `offset`, distinguishing a short file.
pub fn read_exact_at(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// Alignment of direct reads (file offset, length and memory): the page
/// size, a multiple of every logical block size up to 4 KiB.
const DIRECT_ALIGN: u64 = super::append::ALIGN as u64;

/// Opens a segment for reads that bypass the page cache (O_DIRECT); None
/// where the file system has no direct I/O (tmpfs).
pub fn open_direct(path: &Path) -> Option<File> {
    open_direct_for(path, false)
}

/// Opens the open segment for writes that bypass the page cache
/// (O_DIRECT); None where the file system has no direct I/O.
pub fn open_direct_write(path: &Path) -> Option<File> {
    open_direct_for(path, true)
}

fn open_direct_for(path: &Path, write: bool) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

/// Reads `len` bytes at `offset` from a file opened by `open_direct`: the
/// whole blocks around them go from the disk straight into the returned
/// buffer, which holds the bytes asked for from the returned index on.
/// Errors as `read_exact_at` (EINVAL where the file system refuses).
pub fn read_direct_at(file: &File, offset: u64, len: usize) -> std::io::Result<(Vec<u8>, usize)> {
    let first = offset - offset % DIRECT_ALIGN;
    let end = (offset + len as u64).next_multiple_of(DIRECT_ALIGN);
    let span = (end - first) as usize;
    let mut buf = vec![0u8; span + DIRECT_ALIGN as usize];
    let pad = buf.as_ptr().align_offset(DIRECT_ALIGN as usize);
    let want = (offset - first) as usize + len;
    let mut got = 0;
    while got < want {
        match file.read_at(&mut buf[pad + got..pad + span], first + got as u64) {
            // Short only at the end of the file (where no aligned read can
            // continue).
            Ok(n) if n == 0 || (got + n < want && (got + n) as u64 % DIRECT_ALIGN != 0) => {
                return Err(std::io::ErrorKind::UnexpectedEof.into())
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((buf, pad + (offset - first) as usize))
}

/// One step of a walk over a segment's bytes.
pub enum WalkItem<'a> {
    /// A record whose header and ciphertext CRC both check.
    Record {
        offset: u64,
        header: super::record::RecordHeader,
        bytes: &'a [u8],
    },
    /// Damage at `offset`; the walk resumes at the next valid record.
    Damaged { offset: u64, reason: String },
}

/// Walks the records of a whole segment image (header included), checking
/// header and body CRCs. After damage it resynchronises on the next offset
/// where a valid record starts, so one bad byte hides no other records.
pub fn walk_records<'a>(image: &'a [u8], id: u64, mut f: impl FnMut(WalkItem<'a>)) {
    use super::record::{check_body, parse_header};
    if let Err(bad) = check_header(image, id) {
        let reason = bad.to_string();
        f(WalkItem::Damaged { offset: 0, reason });
    }
    let valid_at = |pos: usize| -> Option<(super::record::RecordHeader, usize)> {
        let h = parse_header(&image[pos..]).ok()?;
        let end = pos + h.record_len() as usize;
        (end <= image.len() && check_body(&h, &image[pos..end])).then_some((h, end))
    };
    let mut pos = SEGMENT_HEADER_LEN as usize;
    while pos < image.len() {
        match valid_at(pos) {
            Some((header, end)) => {
                f(WalkItem::Record {
                    offset: pos as u64,
                    header,
                    bytes: &image[pos..end],
                });
                pos = end;
            }
            None => {
                let reason = match parse_header(&image[pos..]) {
                    Err(e) => e.to_string(),
                    Ok(h) if pos + h.record_len() as usize > image.len() => {
                        "record runs past the end of the segment".into()
                    }
                    Ok(_) => "ciphertext CRC mismatch".into(),
                };
                f(WalkItem::Damaged {
                    offset: pos as u64,
                    reason,
                });
                pos = (pos + 1..image.len())
                    .find(|&p| {
                        image[p..].starts_with(&super::record::MAGIC) && valid_at(p).is_some()
                    })
                    .unwrap_or(image.len());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_reads_return_the_bytes_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let data: Vec<u8> = (0..3 * 4096 + 123u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let Some(direct) = open_direct(&path) else {
            panic!("{} has no direct I/O", dir.path().display());
        };
        let cases = [
            (0, 1),
            (0, 4096),
            (1, 4095),
            (4000, 200),
            (5000, 7000),
            (12000, 411),
        ];
        for (offset, len) in cases {
            let (buf, start) = read_direct_at(&direct, offset, len).unwrap();
            let want = &data[offset as usize..offset as usize + len];
            assert_eq!(&buf[start..start + len], want, "{offset}+{len}");
        }
        // Past the end of the file: a short read, as read_exact_at reports.
        let err = read_direct_at(&direct, 12000, 412).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
