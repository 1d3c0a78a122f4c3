//! Inode and extent records as the volume keeps them in memory and (sealed)
//! on disk. Encoded with postcard; the encoding is versioned by the record's
//! first field: version 1 is the inode alone, version 2 is the inode
//! followed by `Option<Vec<(offset, Extent)>>`, the file's extents when it
//! has at most `INLINE_EXTENTS_MAX` (None: they are rows of the extents
//! table). A decoded inode always carries the current version.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub const RECORD_VERSION: u8 = 2;
/// A file with at most this many extents keeps them in its inode row
/// rather than one extents-table row each (a row costs a key, a seal and
/// a B-tree slot: most files are one chunk).
pub const INLINE_EXTENTS_MAX: usize = 8;

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

/// An inode row decoded: the inode and, if the row holds them, its extents.
#[derive(Debug, PartialEq, Eq)]
pub struct InodeRow {
    pub inode: Inode,
    pub extents: Option<BTreeMap<u64, Extent>>,
}

/// The plaintext of an inode row (current version).
pub fn encode_row(
    inode: &Inode,
    extents: Option<&BTreeMap<u64, Extent>>,
) -> Result<Vec<u8>, postcard::Error> {
    let mut current = inode.clone();
    current.version = RECORD_VERSION;
    let plain = postcard::to_stdvec(&current)?;
    let inline: Option<Vec<(u64, Extent)>> =
        extents.map(|m| m.iter().map(|(off, e)| (*off, *e)).collect());
    postcard::to_extend(&inline, plain)
}

/// Decodes an inode row of any version this build knows.
pub fn decode_row(plain: &[u8]) -> Result<InodeRow, String> {
    let (mut inode, rest) = postcard::take_from_bytes::<Inode>(plain).map_err(|e| e.to_string())?;
    let extents = match inode.version {
        1 => None,
        2 => postcard::from_bytes::<Option<Vec<(u64, Extent)>>>(rest)
            .map_err(|e| e.to_string())?
            .map(|v| v.into_iter().collect()),
        v => {
            return Err(format!(
                "inode record version {v} is newer than this datastore"
            ))
        }
    };
    inode.version = RECORD_VERSION;
    Ok(InodeRow { inode, extents })
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
        let plain = encode_row(&inode, Some(&map)).unwrap();
        let row = decode_row(&plain).unwrap();
        assert_eq!(row.extents.as_ref(), Some(&map));
        assert_eq!(row.inode, inode);
        let none = decode_row(&encode_row(&inode, None).unwrap()).unwrap();
        assert_eq!(none.extents, None);
        let mut newer = plain.clone();
        newer[0] = RECORD_VERSION + 1;
        assert!(decode_row(&newer).unwrap_err().contains("newer"));
    }
}
