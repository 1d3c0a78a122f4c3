//! Sealing and opening the values of the volume's rows (meta stores them:
//! `meta::volume_rows`), every value sealed with AES-256-GCM under the
//! metadata key (see crypto::seal):
//!
//! - `inodes`:  ino -> sealed(Inode [+ inline extents or entries])  AAD "inode" || ino
//! - `dirents`: (parent, MAC(parent, name)) -> sealed(DirentRecord)
//!   AAD "dirent" || parent || mac
//! - `extents`: (ino, file offset) -> sealed(Extent)       AAD "extent" || ino || offset
//! - `volume`:  name -> u64 ("next_ino", "nonce_next")
//!
//! Visible without the key: inode numbers, how many entries each large
//! directory has, extent offsets of large files (so their sizes to chunk
//! granularity), and sealed value lengths (so roughly how many entries or
//! extents a small directory or file holds in its row). Names, contents, link targets, xattrs, modes, owners and
//! times are sealed.

use std::collections::BTreeMap;

use super::inode::{self, DirentRecord, Extent, Inode, InodeRow};
use crate::crypto::seal::MetaSealer;
use crate::meta::MetaError;

fn aad(kind: &str, a: u64, b: &[u8]) -> Vec<u8> {
    let mut v = kind.as_bytes().to_vec();
    v.extend_from_slice(&a.to_le_bytes());
    v.extend_from_slice(b);
    v
}

pub fn meta_err(e: impl std::error::Error + Send + Sync + 'static) -> MetaError {
    MetaError::Row(Box::new(e))
}

/// Seals an inode row; `extents` / `entries` given: the file's extents or
/// the directory's entries live in it.
pub fn seal_inode(
    s: &MetaSealer,
    ino: u64,
    inode: &Inode,
    extents: Option<&BTreeMap<u64, Extent>>,
    entries: Option<&BTreeMap<Vec<u8>, u64>>,
) -> Result<Vec<u8>, MetaError> {
    let plain = inode::encode_row(inode, extents, entries)?;
    s.seal(&aad("inode", ino, &[]), &plain).map_err(meta_err)
}

pub fn open_inode(s: &MetaSealer, ino: u64, sealed: &[u8]) -> Result<InodeRow, MetaError> {
    let plain = s.open(&aad("inode", ino, &[]), sealed).map_err(meta_err)?;
    inode::decode_row(&plain).map_err(|e| MetaError::Row(format!("inode {ino}: {e}").into()))
}

pub fn seal_dirent(
    s: &MetaSealer,
    parent: u64,
    mac: &[u8; 32],
    rec: &DirentRecord,
) -> Result<Vec<u8>, MetaError> {
    let plain = postcard::to_stdvec(rec)?;
    s.seal(&aad("dirent", parent, mac), &plain)
        .map_err(meta_err)
}

pub fn open_dirent(
    s: &MetaSealer,
    parent: u64,
    mac: &[u8; 32],
    sealed: &[u8],
) -> Result<DirentRecord, MetaError> {
    let plain = s
        .open(&aad("dirent", parent, mac), sealed)
        .map_err(meta_err)?;
    postcard::from_bytes(&plain).map_err(meta_err)
}

pub fn seal_extent(s: &MetaSealer, ino: u64, off: u64, e: &Extent) -> Result<Vec<u8>, MetaError> {
    let plain = postcard::to_stdvec(e)?;
    s.seal(&aad("extent", ino, &off.to_le_bytes()), &plain)
        .map_err(meta_err)
}

pub fn open_extent(s: &MetaSealer, ino: u64, off: u64, sealed: &[u8]) -> Result<Extent, MetaError> {
    let plain = s
        .open(&aad("extent", ino, &off.to_le_bytes()), sealed)
        .map_err(meta_err)?;
    postcard::from_bytes(&plain).map_err(meta_err)
}

#[cfg(test)]
pub(super) mod tests {
    //! Stores written before inode rows could hold extents (version 1 rows,
    //! every extent a table row) stay readable, and move to the new form
    //! file by file as files change.
    use std::sync::Arc;

    use super::*;
    use crate::config::{EngineConfig, StoreConfig, FORMAT_VERSION};
    use crate::crypto::{ChunkCrypto, FingerprintAlg};
    use crate::engine::Engine;
    use crate::meta::VolumeChanges;
    use crate::volume::{Caller, Kind, Volume, ROOT};

    const ME: Caller = Caller { uid: 0, gid: 0 };
    const META_KEY: [u8; 32] = [0x44; 32];

    /// The volume of `dir` under fixed test keys (also intent.rs's tests).
    pub(in crate::volume) fn open(dir: &std::path::Path) -> Volume {
        let crypto = ChunkCrypto::new(
            keystore::Provider::DEFAULT,
            &std::array::from_fn(|i| i as u8),
            &[0x5a; 32],
            FingerprintAlg::Blake3Keyed,
        )
        .unwrap();
        let engine = Engine::open(dir, Some(Arc::new(crypto))).unwrap();
        Volume::open(Arc::new(engine), &META_KEY).unwrap()
    }

    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        crate::test_data::XorShift::new(seed | 1).bytes(len, 0)
    }

    /// `ino`'s inode row sealed as record `version` (1 or 2) stored it,
    /// without what the row holds besides the inode, and the row as it is
    /// (its extents or entries go to table rows).
    fn old_form_row(v: &Volume, ino: u64, version: u8) -> (Vec<u8>, InodeRow) {
        let s = v.sealer();
        let sealed = v.engine().meta().inode_row(ino).unwrap().unwrap();
        let row = open_inode(&s, ino, &sealed).unwrap();
        let mut old = row.inode.clone();
        old.version = version;
        let mut plain = postcard::to_stdvec(&old).unwrap();
        if version == 2 {
            plain = postcard::to_extend(&None::<Vec<(u64, Extent)>>, plain).unwrap();
        }
        (s.seal(&aad("inode", ino, &[]), &plain).unwrap(), row)
    }

    /// Rewrites `ino`'s row the way version 1 stored it.
    fn downgrade(v: &Volume, ino: u64) {
        let s = v.sealer();
        let (sealed, row) = old_form_row(v, ino, 1);
        let extents = row
            .extents
            .expect("a small file's row holds its extents")
            .iter()
            .map(|(off, e)| ((ino, *off), Some(seal_extent(&s, ino, *off, e).unwrap())))
            .collect();
        let rows = VolumeChanges {
            inodes: vec![(ino, sealed)],
            extents,
            ..Default::default()
        };
        v.engine().commit_volume(true, &[], &rows).unwrap();
    }

    fn extent_rows(v: &Volume, ino: u64) -> usize {
        v.engine().meta().extent_rows(ino).unwrap().len()
    }

    fn read_all(v: &Volume, ino: u64) -> Vec<u8> {
        let size = v.getattr(ino).unwrap().inode.size;
        v.read(ino, 0, size as u32).unwrap()
    }

    #[test]
    fn version_1_rows_are_read_and_rewritten_in_the_current_form() {
        let dir = tempfile::tempdir().unwrap();
        Engine::create(dir.path(), "old-store", &EngineConfig::default()).unwrap();
        let mut cfg = StoreConfig::load(dir.path()).unwrap();
        cfg.format_version = 1;
        cfg.save(dir.path()).unwrap();
        let a = bytes(3, 150_000);
        let b = bytes(4, 20_000);
        let (f, g);
        {
            let v = open(dir.path());
            f = v.mknod(ROOT, b"f", Kind::File, 0o600, 0, ME).unwrap().ino;
            g = v.mknod(ROOT, b"g", Kind::File, 0o600, 0, ME).unwrap().ino;
            for (ino, data) in [(f, &a), (g, &b)] {
                v.open_file(ino).unwrap();
                v.write(ino, 0, data).unwrap();
                v.release(ino).unwrap();
            }
            v.sync_all().unwrap();
            assert_eq!((extent_rows(&v, f), extent_rows(&v, g)), (0, 0));
            downgrade(&v, f);
            downgrade(&v, g);
            assert!(extent_rows(&v, f) >= 1 && extent_rows(&v, g) == 1);
        }
        // Opening the volume moved the store to the format an older build
        // refuses (rather than reading inline extents as holes).
        assert_eq!(
            StoreConfig::load(dir.path()).unwrap().format_version,
            FORMAT_VERSION
        );
        let mut cfg = StoreConfig::load(dir.path()).unwrap();
        cfg.format_version = FORMAT_VERSION + 1;
        cfg.save(dir.path()).unwrap();
        let refused = StoreConfig::load(dir.path()).unwrap_err();
        let newer = format!("format version {}", FORMAT_VERSION + 1);
        assert!(refused.to_string().contains(&newer), "{refused}");
        cfg.format_version = FORMAT_VERSION;
        cfg.save(dir.path()).unwrap();
        {
            let v = open(dir.path());
            assert!(read_all(&v, f) == a, "old-form file f reads back");
            assert!(read_all(&v, g) == b, "old-form file g reads back");
            v.open_file(g).unwrap();
            v.write(g, b.len() as u64, b"!").unwrap();
            v.release(g).unwrap();
            v.sync_all().unwrap();
            // g changed: its row now holds its extents. So does f's: the
            // read moved its access time (relatime), which rewrote its row.
            assert_eq!(extent_rows(&v, g), 0);
            assert_eq!(extent_rows(&v, f), 0);
        }
        let v = open(dir.path());
        assert!(read_all(&v, f) == a, "f after the reopen");
        assert!(
            read_all(&v, g) == [&b[..], b"!"].concat(),
            "g after the reopen"
        );
    }

    /// Rewrites directory `ino`'s row and entries the way version 2 stored
    /// them: one dirents-table row per entry.
    fn downgrade_dir(v: &Volume, ino: u64) {
        let s = v.sealer();
        let (sealed, row) = old_form_row(v, ino, 2);
        let mut dirents = Vec::new();
        for (name, child) in row
            .entries
            .expect("a small directory's row holds its entries")
        {
            let mac = s.name_mac(ino, &name).unwrap();
            let rec = DirentRecord { name, ino: child };
            dirents.push(((ino, mac), Some(seal_dirent(&s, ino, &mac, &rec).unwrap())));
        }
        let rows = VolumeChanges {
            inodes: vec![(ino, sealed)],
            dirents,
            ..Default::default()
        };
        v.engine().commit_volume(true, &[], &rows).unwrap();
    }

    fn dirent_rows(v: &Volume, ino: u64) -> usize {
        v.engine().meta().dirent_rows(ino).unwrap().len()
    }

    fn names(v: &Volume, dir: u64) -> Vec<Vec<u8>> {
        let mut n: Vec<Vec<u8>> = v.read_dir(dir).unwrap().into_iter().map(|e| e.2).collect();
        n.retain(|n| n != b"." && n != b"..");
        n.sort();
        n
    }

    #[test]
    fn version_2_directories_are_read_and_move_into_their_rows_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        Engine::create(dir.path(), "old-store", &EngineConfig::default()).unwrap();
        let mut cfg = StoreConfig::load(dir.path()).unwrap();
        cfg.format_version = 2;
        cfg.save(dir.path()).unwrap();
        let (a, b);
        {
            let v = open(dir.path());
            a = v.mkdir(ROOT, b"a", 0o755, ME).unwrap().ino;
            b = v.mkdir(ROOT, b"b", 0o755, ME).unwrap().ino;
            for d in [a, b] {
                v.mknod(d, b"x", Kind::File, 0o600, 0, ME).unwrap();
                v.mknod(d, b"y", Kind::Fifo, 0o600, 0, ME).unwrap();
            }
            v.sync_all().unwrap();
            assert_eq!((dirent_rows(&v, a), dirent_rows(&v, b)), (0, 0));
            for d in [ROOT, a, b] {
                downgrade_dir(&v, d);
            }
            assert_eq!((dirent_rows(&v, a), dirent_rows(&v, b)), (2, 2));
        }
        assert_eq!(
            StoreConfig::load(dir.path()).unwrap().format_version,
            FORMAT_VERSION
        );
        {
            let v = open(dir.path());
            assert_eq!(names(&v, ROOT), [b"a".to_vec(), b"b".to_vec()]);
            for d in [a, b] {
                assert_eq!(names(&v, d), [b"x".to_vec(), b"y".to_vec()]);
                assert_eq!(v.lookup(d, b"y").unwrap().inode.kind, Kind::Fifo);
            }
            v.mknod(b, b"z", Kind::File, 0o600, 0, ME).unwrap();
            v.unlink(b, b"x").unwrap();
            v.sync_all().unwrap();
            // b changed: its row now holds its entries; a is untouched.
            assert_eq!((dirent_rows(&v, a), dirent_rows(&v, b)), (2, 0));
        }
        let v = open(dir.path());
        assert_eq!(names(&v, a), [b"x".to_vec(), b"y".to_vec()]);
        assert_eq!(names(&v, b), [b"y".to_vec(), b"z".to_vec()]);
        assert_eq!(v.lookup(b, b"x").unwrap_err().errno, libc::ENOENT);
    }
}
