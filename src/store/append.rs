//! The open segment's append buffer: records gathered in memory, written
//! to the file in large pieces.
//!
//! Large pieces go to the disk with O_DIRECT, straight from this buffer:
//! no page-cache pages are filled with data that is read back rarely (GC,
//! scrub, a later overwrite), and on virtual machines that hand free guest
//! memory back to the host, every fresh page-cache page costs a host fault
//! (measured on the bench VM: 4 GiB buffered write 0.8 s of CPU right after
//! a cache drop, 14 s once the freed pages had been reported). Small
//! pieces (commits of a few records, a reader waiting for a record still
//! in memory) are ordinary buffered writes.
//!
//! Invariants:
//! - The buffer holds the file's bytes from `base` (a multiple of
//!   `ALIGN`) to the logical end; bytes before `flushed` are already in
//!   the file, the rest only here.
//! - A direct write covers whole `ALIGN` blocks from `base`: the last one
//!   is padded with zeros, so the file may run up to `ALIGN - 1` bytes past
//!   the logical end. Those bytes belong to no record; the segment's
//!   committed length (metadata) is what readers trust, and a sealed
//!   segment is cut to its length.
//! - The memory region is allocated once, aligned, and never moves (a
//!   record larger than its room grows it by copying into a new region).

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Alignment of direct writes: file offset, length and memory.
pub const ALIGN: usize = 4096;
/// Flushes of at least this many new bytes go direct.
const DIRECT_MIN: usize = 256 << 10;

pub struct AppendBuffer {
    /// Allocation; the data region starts at `pad` and is `ALIGN`-aligned.
    region: Vec<u8>,
    pad: usize,
    room: usize,
    /// File offset of the region's first byte.
    base: u64,
    /// Bytes held (from `base`).
    filled: usize,
    /// File offset up to which the bytes are in the file.
    flushed: u64,
}

impl AppendBuffer {
    /// A buffer of `room` bytes for a new file that already holds `start`
    /// (its header), kept here as the first partial block.
    pub fn new(room: usize, start: &[u8]) -> Self {
        let room = room.next_multiple_of(ALIGN);
        let region = vec![0u8; room + ALIGN];
        let pad = region.as_ptr().align_offset(ALIGN);
        let mut b = AppendBuffer {
            region,
            pad,
            room,
            base: 0,
            filled: 0,
            flushed: start.len() as u64,
        };
        b.data_mut()[..start.len()].copy_from_slice(start);
        b.filled = start.len();
        b
    }

    /// Starts over for a new file (the region is kept).
    pub fn restart(&mut self, start: &[u8]) {
        self.base = 0;
        self.filled = 0;
        self.flushed = start.len() as u64;
        self.push(start);
    }

    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.region[self.pad..self.pad + self.room]
    }

    fn data(&self) -> &[u8] {
        &self.region[self.pad..self.pad + self.room]
    }

    /// The logical end of the file (written plus buffered).
    pub fn end(&self) -> u64 {
        self.base + self.filled as u64
    }

    /// File offset up to which the bytes are in the file.
    pub fn flushed(&self) -> u64 {
        self.flushed
    }

    /// Bytes not yet written to the file.
    pub fn unwritten(&self) -> usize {
        (self.end() - self.flushed) as usize
    }

    /// Adds bytes at the end (the caller flushes when `unwritten` is large).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.filled + bytes.len() > self.room {
            // Only a record larger than the whole region gets here (the
            // caller flushes first): grow, keeping the alignment.
            let mut bigger = AppendBuffer::new(self.filled + bytes.len(), &[]);
            bigger.data_mut()[..self.filled].copy_from_slice(&self.data()[..self.filled]);
            bigger.base = self.base;
            bigger.filled = self.filled;
            bigger.flushed = self.flushed;
            *self = bigger;
        }
        let at = self.filled;
        self.data_mut()[at..at + bytes.len()].copy_from_slice(bytes);
        self.filled += bytes.len();
    }

    /// Room left before the region would have to grow.
    pub fn room_left(&self) -> usize {
        self.room - self.filled
    }

    /// Writes the unwritten bytes to `file`: direct through `direct` when
    /// there are many, otherwise buffered. A direct write the file system
    /// refuses (EINVAL) clears `direct` and is done buffered. Afterwards
    /// the buffer keeps only the last partial block.
    pub fn flush(&mut self, file: &File, direct: &mut Option<File>) -> std::io::Result<()> {
        if self.unwritten() == 0 {
            return Ok(());
        }
        let mut done = false;
        if self.unwritten() >= DIRECT_MIN {
            if let Some(d) = direct.as_ref() {
                let whole = self.filled.next_multiple_of(ALIGN);
                let filled = self.filled;
                self.data_mut()[filled..whole].fill(0);
                match d.write_all_at(&self.data()[..whole], self.base) {
                    Ok(()) => done = true,
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => *direct = None,
                    Err(e) => return Err(e),
                }
            }
        }
        if !done {
            let from = (self.flushed - self.base) as usize;
            file.write_all_at(&self.data()[from..self.filled], self.flushed)?;
        }
        self.flushed = self.end();
        let keep = self.filled % ALIGN;
        let cut = self.filled - keep;
        self.region
            .copy_within(self.pad + cut..self.pad + self.filled, self.pad);
        self.base += cut as u64;
        self.filled = keep;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
            .collect()
    }

    /// Whatever mix of small (buffered) and large (direct) flushes, the
    /// file's first `end()` bytes are exactly what was pushed, and nothing
    /// but zeros lies past them.
    #[test]
    fn flushed_file_holds_exactly_the_pushed_bytes() {
        // /var/tmp is on disk (direct I/O); /tmp may be tmpfs.
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("seg");
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let header = pattern(32, 1);
        file.write_all_at(&header, 0).unwrap();
        let mut direct = crate::store::segment::open_direct_write(&path);
        let mut buf = AppendBuffer::new(1 << 20, &header);
        let mut want = header.clone();
        let sizes = [
            100, 300_000, 5, 4096, 700_000, 1, 200_000, 70_000, 2_000_000, 9,
        ];
        for (i, &n) in sizes.iter().enumerate() {
            let piece = pattern(n, i as u32 + 7);
            if buf.room_left() < n {
                buf.flush(&file, &mut direct).unwrap();
            }
            buf.push(&piece);
            want.extend_from_slice(&piece);
            if i % 3 != 1 {
                buf.flush(&file, &mut direct).unwrap();
            }
            assert_eq!(buf.end(), want.len() as u64);
        }
        buf.flush(&file, &mut direct).unwrap();
        assert_eq!(buf.unwritten(), 0);
        let got = std::fs::read(&path).unwrap();
        assert_eq!(&got[..want.len()], &want[..]);
        assert!(got.len() - want.len() < ALIGN);
        assert!(got[want.len()..].iter().all(|&b| b == 0));
    }
}
