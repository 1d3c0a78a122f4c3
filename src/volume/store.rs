//! The volume's tables in the metadata database, every value sealed with
//! AES-256-GCM under the metadata key (see crypto::seal):
//!
//! - `inodes`:  ino -> sealed(Inode)                       AAD "inode" || ino
//! - `dirents`: (parent, MAC(parent, name)) -> sealed(DirentRecord)
//!   AAD "dirent" || parent || mac
//! - `extents`: (ino, file offset) -> sealed(Extent)       AAD "extent" || ino || offset
//! - `volume`:  name -> u64 ("next_ino", "nonce_next")
//!
//! Visible without the key: inode numbers, how many entries each directory
//! has, extent offsets (so file sizes to chunk granularity), and sealed
//! value lengths. Names, contents, link targets, xattrs, modes, owners and
//! times are sealed.

use redb::{TableDefinition, WriteTransaction};

use super::inode::{DirentRecord, Extent, Inode};
use crate::crypto::seal::MetaSealer;
use crate::meta::MetaError;

pub const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
pub const DIRENTS: TableDefinition<(u64, [u8; 32]), &[u8]> = TableDefinition::new("dirents");
pub const EXTENTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("extents");
pub const VOLUME: TableDefinition<&str, u64> = TableDefinition::new("volume");

fn aad(kind: &str, a: u64, b: &[u8]) -> Vec<u8> {
    let mut v = kind.as_bytes().to_vec();
    v.extend_from_slice(&a.to_le_bytes());
    v.extend_from_slice(b);
    v
}

pub fn meta_err(e: impl std::fmt::Display) -> MetaError {
    MetaError::Db(e.to_string())
}

pub fn seal_inode(s: &MetaSealer, ino: u64, inode: &Inode) -> Result<Vec<u8>, MetaError> {
    let plain = postcard::to_stdvec(inode)?;
    s.seal(&aad("inode", ino, &[]), &plain).map_err(meta_err)
}

pub fn open_inode(s: &MetaSealer, ino: u64, sealed: &[u8]) -> Result<Inode, MetaError> {
    let plain = s.open(&aad("inode", ino, &[]), sealed).map_err(meta_err)?;
    postcard::from_bytes(&plain).map_err(meta_err)
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

pub fn ensure_tables(txn: &WriteTransaction) -> Result<(), MetaError> {
    txn.open_table(INODES)?;
    txn.open_table(DIRENTS)?;
    txn.open_table(EXTENTS)?;
    txn.open_table(VOLUME)?;
    Ok(())
}

pub fn get_counter(db: &redb::Database, name: &str) -> Result<Option<u64>, MetaError> {
    let txn = db.begin_read()?;
    let t = match txn.open_table(VOLUME) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(t.get(name)?.map(|v| v.value()))
}

/// Copies the volume's tables (for `Meta::rewrite_fresh`).
pub fn copy_tables(src: &redb::ReadTransaction, dst: &WriteTransaction) -> Result<(), MetaError> {
    use crate::meta::copy_table;
    copy_table(src, dst, INODES)?;
    copy_table(src, dst, DIRENTS)?;
    copy_table(src, dst, EXTENTS)?;
    copy_table(src, dst, VOLUME)
}

/// Counts sealed values by the key generation they are under.
pub fn count_sealed(
    db: &redb::Database,
) -> Result<std::collections::BTreeMap<Option<crate::crypto::KeyGen>, u64>, MetaError> {
    use redb::ReadableTable;
    let mut out = std::collections::BTreeMap::new();
    let txn = db.begin_read()?;
    let mut count = |v: &[u8]| {
        *out.entry(crate::crypto::seal::sealed_generation(v))
            .or_insert(0) += 1
    };
    for row in txn.open_table(INODES)?.iter()? {
        count(row?.1.value());
    }
    for row in txn.open_table(DIRENTS)?.iter()? {
        count(row?.1.value());
    }
    for row in txn.open_table(EXTENTS)?.iter()? {
        count(row?.1.value());
    }
    Ok(out)
}
