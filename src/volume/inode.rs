//! Inode and extent records as the volume keeps them in memory and (sealed)
//! on disk. Encoded with postcard; the encoding is versioned by the record's
//! first field: version 1 is the inode alone, version 2 is the inode
//! followed by `Option<Vec<(offset, Extent)>>`, the file's extents when it
//! has at most `INLINE_EXTENTS_MAX` (None: they are rows of the extents
//! table); version 3 adds `Option<Vec<(name, ino)>>`, a small directory's
//! entries in name order (None: they are rows of the dirents table). A
//! decoded inode always carries the current version.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub const RECORD_VERSION: u8 = 3;
/// A file with at most this many extents keeps them in its inode row
/// rather than one extents-table row each (a row costs a key, a seal and
/// a B-tree slot: most files are one chunk).
pub const INLINE_EXTENTS_MAX: usize = 8;
/// A directory whose entries take at most `INLINE_ENTRIES_BYTES` encoded
/// (at most `INLINE_ENTRIES_MAX` of them) keeps them in its inode row
/// rather than one dirents-table row each (a row costs a 40-byte key, a
/// seal and a B-tree slot: about 75 bytes besides the name). A row larger
/// than a 4 KiB page gets a leaf of its own (8 or 16 KiB), still a
/// fraction of the table rows it replaces; the byte bound keeps the row
/// within 16 KiB, and so bounds what a commit rewrites per changed
/// directory.
pub const INLINE_ENTRIES_MAX: usize = 1024;
pub const INLINE_ENTRIES_BYTES: usize = 16000;

/// Bytes of `v` as a postcard varint.
fn varint_len(v: u64) -> usize {
    (64 - v.leading_zeros() as usize).max(1).div_ceil(7)
}

/// Whether a directory's entries fit in its inode row.
pub fn entries_fit(entries: &BTreeMap<Vec<u8>, u64>) -> bool {
    entries.len() <= INLINE_ENTRIES_MAX
        && entries
            .iter()
            .map(|(n, ino)| n.len() + varint_len(n.len() as u64) + varint_len(*ino))
            .sum::<usize>()
            <= INLINE_ENTRIES_BYTES
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

/// Seconds and nanoseconds since the epoch (may be negative).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

impl Time {
    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }
    pub fn from_system(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Time {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let (mut secs, mut nanos) = (-(d.as_secs() as i64), d.subsec_nanos());
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Time { secs, nanos }
            }
        }
    }
    pub fn to_system(self) -> SystemTime {
        if self.secs >= 0 {
            UNIX_EPOCH + Duration::new(self.secs as u64, self.nanos)
        } else {
            UNIX_EPOCH - Duration::new(self.secs.unsigned_abs(), 0) + Duration::new(0, self.nanos)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub version: u8,
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (07777).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub rdev: u32,
    /// Directories: the parent directory (root: itself).
    pub parent: u64,
    pub symlink: Option<Vec<u8>>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Inode {
    pub fn new(kind: Kind, perm: u16, uid: u32, gid: u32, parent: u64) -> Self {
        let now = Time::now();
        Inode {
            version: RECORD_VERSION,
            kind,
            perm: perm & 0o7777,
            uid,
            gid,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            rdev: 0,
            parent,
            symlink: None,
            xattrs: BTreeMap::new(),
        }
    }
}

/// One chunk of a file's content at a file offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub fingerprint: [u8; 32],
    pub len: u32,
}

/// A directory entry as stored (sealed) under the MAC of its name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirentRecord {
    pub name: Vec<u8>,
    pub ino: u64,
}

/// An inode row decoded: the inode and, if the row holds them, its
/// file's extents or its directory's entries.
#[derive(Debug, PartialEq, Eq)]
pub struct InodeRow {
    pub inode: Inode,
    pub extents: Option<BTreeMap<u64, Extent>>,
    pub entries: Option<BTreeMap<Vec<u8>, u64>>,
}

/// The plaintext of an inode row (current version).
pub fn encode_row(
    inode: &Inode,
    extents: Option<&BTreeMap<u64, Extent>>,
    entries: Option<&BTreeMap<Vec<u8>, u64>>,
) -> Result<Vec<u8>, postcard::Error> {
    let mut current = inode.clone();
    current.version = RECORD_VERSION;
    let plain = postcard::to_stdvec(&current)?;
    let extents: Option<Vec<(u64, Extent)>> =
        extents.map(|m| m.iter().map(|(off, e)| (*off, *e)).collect());
    let plain = postcard::to_extend(&extents, plain)?;
    let entries: Option<Vec<(&[u8], u64)>> =
        entries.map(|m| m.iter().map(|(n, ino)| (n.as_slice(), *ino)).collect());
    postcard::to_extend(&entries, plain)
}

type InlineExtents = Option<Vec<(u64, Extent)>>;
type InlineEntries = Option<Vec<(Vec<u8>, u64)>>;

/// Why an inode row could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error(transparent)]
    Encoding(#[from] postcard::Error),
    #[error("inode record version {0} is newer than this datastore")]
    Newer(u8),
}

/// Decodes an inode row of any version this build knows.
pub fn decode_row(plain: &[u8]) -> Result<InodeRow, RowError> {
    let (mut inode, rest) = postcard::take_from_bytes::<Inode>(plain)?;
    let (extents, entries) = match inode.version {
        1 => (None, None),
        2 => (postcard::from_bytes::<InlineExtents>(rest)?, None),
        3 => postcard::from_bytes::<(InlineExtents, InlineEntries)>(rest)?,
        v => return Err(RowError::Newer(v)),
    };
    inode.version = RECORD_VERSION;
    Ok(InodeRow {
        inode,
        extents: extents.map(|v| v.into_iter().collect()),
        entries: entries.map(|v| v.into_iter().collect()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Inode {
        let mut i = Inode::new(Kind::File, 0o644, 1000, 1000, 1);
        i.size = 70_000;
        i
    }

    #[test]
    fn version_1_rows_still_decode_with_extents_in_the_table() {
        let mut old = sample();
        old.version = 1;
        let plain = postcard::to_stdvec(&old).unwrap();
        let row = decode_row(&plain).unwrap();
        assert_eq!(row.extents, None);
        assert_eq!(row.inode.version, RECORD_VERSION);
        assert_eq!(row.inode.size, 70_000);
    }

    #[test]
    fn inline_extents_round_trip_and_newer_versions_are_refused() {
        let map: BTreeMap<u64, Extent> = [
            (
                0,
                Extent {
                    fingerprint: [7; 32],
                    len: 65_536,
                },
            ),
            (
                65_536,
                Extent {
                    fingerprint: [9; 32],
                    len: 4_464,
                },
            ),
        ]
        .into_iter()
        .collect();
        let inode = sample();
        let plain = encode_row(&inode, Some(&map), None).unwrap();
        let row = decode_row(&plain).unwrap();
        assert_eq!(row.extents.as_ref(), Some(&map));
        assert_eq!(row.entries, None);
        assert_eq!(row.inode, inode);
        let none = decode_row(&encode_row(&inode, None, None).unwrap()).unwrap();
        assert_eq!(none.extents, None);
        let mut newer = plain.clone();
        newer[0] = RECORD_VERSION + 1;
        assert!(decode_row(&newer)
            .unwrap_err()
            .to_string()
            .contains("newer"));
    }

    #[test]
    fn version_2_rows_decode_and_inline_entries_round_trip() {
        let mut old = sample();
        old.version = 2;
        let map: BTreeMap<u64, Extent> = [(
            0,
            Extent {
                fingerprint: [3; 32],
                len: 100,
            },
        )]
        .into_iter()
        .collect();
        let v2 = postcard::to_stdvec(&old).unwrap();
        let inline: InlineExtents = Some(map.iter().map(|(o, e)| (*o, *e)).collect());
        let v2 = postcard::to_extend(&inline, v2).unwrap();
        let row = decode_row(&v2).unwrap();
        assert_eq!(row.extents.as_ref(), Some(&map));
        assert_eq!(row.entries, None);

        let dir = Inode::new(Kind::Dir, 0o755, 0, 0, 1);
        let entries: BTreeMap<Vec<u8>, u64> = [(b"a.json".to_vec(), 7), (b"b".to_vec(), 1 << 40)]
            .into_iter()
            .collect();
        let row = decode_row(&encode_row(&dir, None, Some(&entries)).unwrap()).unwrap();
        assert_eq!(row.entries.as_ref(), Some(&entries));
        assert_eq!(row.extents, None);
        assert_eq!(row.inode, dir);
    }

    #[test]
    fn varint_len_matches_postcard() {
        for v in [0, 1, 127, 128, 16_383, 16_384, 1 << 40, u64::MAX] {
            assert_eq!(varint_len(v), postcard::to_stdvec(&v).unwrap().len(), "{v}");
        }
    }

    #[test]
    fn entries_fit_bounds_count_and_name_bytes() {
        // Short names: the count bounds.
        let many: BTreeMap<Vec<u8>, u64> = (0..INLINE_ENTRIES_MAX as u64)
            .map(|i| (vec![b'a' + (i % 26) as u8, b'a' + (i / 26) as u8], i))
            .collect();
        assert!(entries_fit(&many));
        let mut one_more = many.clone();
        one_more.insert(b"~".to_vec(), 1);
        assert!(!entries_fit(&one_more));
        // Long names: the bytes bound, and the worst-case row (with the
        // inode, the seal and the key) still fits in 16 KiB.
        let long: BTreeMap<Vec<u8>, u64> = (0..60u8)
            .map(|i| (vec![b'A' + i; 255], u64::MAX - i as u64))
            .collect();
        assert!(!entries_fit(&long));
        let fits: BTreeMap<Vec<u8>, u64> = long.into_iter().take(59).collect();
        let encoded: usize = fits.keys().map(|n| n.len() + 2 + 10).sum();
        assert!(encoded <= INLINE_ENTRIES_BYTES);
        assert!(entries_fit(&fits));
        let dir = Inode::new(Kind::Dir, 0o755, u32::MAX, u32::MAX, u64::MAX);
        let row = encode_row(&dir, None, Some(&fits)).unwrap();
        assert!(row.len() + 32 + 8 <= 16 << 10, "{} bytes", row.len());
    }
}
