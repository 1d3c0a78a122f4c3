//! The volume's tables as rows of sealed bytes: meta stores them, in the
//! same transactions as the chunk index, and never sees their plaintext
//! (the volume seals and opens every value; docs/FORMAT.md, "Metadata
//! database", says what each row holds). With these, every table lives
//! behind meta's typed interface: a commit hands over one `VolumeChanges`
//! batch, reads ask for rows by key.
//!
//! - `inodes`:  ino -> sealed inode row
//! - `dirents`: (parent, name MAC) -> sealed entry (large directories)
//! - `extents`: (ino, file offset) -> sealed extent (large files)
//! - `volume`:  counter name -> u64 (`next_ino`, `nonce_next`, conversion)
//!
//! Invariant: a batch is applied whole inside the caller's transaction,
//! clears before puts (so a batch may clear a directory's rows and write
//! its new ones).

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

use super::{table_if_any, Meta, MetaError};

const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
const DIRENTS: TableDefinition<(u64, [u8; 32]), &[u8]> = TableDefinition::new("dirents");
const EXTENTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("extents");
const VOLUME: TableDefinition<&str, u64> = TableDefinition::new("volume");

/// A sealed value, as stored.
pub type Sealed = Vec<u8>;
/// A `dirents` key: (parent directory, name MAC).
pub type DirentKey = (u64, [u8; 32]);
/// An `extents` key: (inode, file offset).
pub type ExtentKey = (u64, u64);
/// Called with each inode row: (inode, sealed row).
pub type InodeVisitor<'a> = dyn FnMut(u64, &[u8]) -> Result<(), MetaError> + 'a;

/// One commit's changes to the volume's rows (values already sealed).
#[derive(Default, Debug)]
pub struct VolumeChanges {
    pub inodes: Vec<(u64, Sealed)>,
    pub removed_inodes: Vec<u64>,
    /// Directories whose `dirents` rows all go (before `dirents` apply).
    pub cleared_dirents: Vec<u64>,
    /// (parent, name MAC) -> the sealed entry, or None: removed.
    pub dirents: Vec<(DirentKey, Option<Sealed>)>,
    /// Files whose `extents` rows all go (before `extents` apply).
    pub cleared_extents: Vec<u64>,
    /// (ino, file offset) -> the sealed extent, or None: removed.
    pub extents: Vec<(ExtentKey, Option<Sealed>)>,
    /// Counter -> its value, or None: removed.
    pub counters: Vec<(String, Option<u64>)>,
}

impl VolumeChanges {
    /// Writes the batch into `txn`.
    pub(super) fn apply(&self, txn: &WriteTransaction) -> Result<(), MetaError> {
        let mut t = txn.open_table(INODES)?;
        for (ino, v) in &self.inodes {
            t.insert(*ino, v.as_slice())?;
        }
        for ino in &self.removed_inodes {
            t.remove(*ino)?;
        }
        let mut t = txn.open_table(DIRENTS)?;
        for dir in &self.cleared_dirents {
            t.retain_in((*dir, [0u8; 32])..=(*dir, [0xffu8; 32]), |_, _| false)?;
        }
        for (k, v) in &self.dirents {
            match v {
                Some(v) => t.insert(*k, v.as_slice())?,
                None => t.remove(*k)?,
            };
        }
        let mut t = txn.open_table(EXTENTS)?;
        for ino in &self.cleared_extents {
            t.retain_in((*ino, 0)..=(*ino, u64::MAX), |_, _| false)?;
        }
        for (k, v) in &self.extents {
            match v {
                Some(v) => t.insert(*k, v.as_slice())?,
                None => t.remove(*k)?,
            };
        }
        let mut t = txn.open_table(VOLUME)?;
        for (k, v) in &self.counters {
            match v {
                Some(v) => t.insert(k.as_str(), *v)?,
                None => t.remove(k.as_str())?,
            };
        }
        Ok(())
    }
}

/// Creates the volume's tables (empty) if they are missing.
pub(super) fn ensure_tables(txn: &WriteTransaction) -> Result<(), MetaError> {
    txn.open_table(INODES)?;
    txn.open_table(DIRENTS)?;
    txn.open_table(EXTENTS)?;
    txn.open_table(VOLUME)?;
    Ok(())
}

/// Copies the volume's tables (for `Meta::rewrite_fresh`).
pub(super) fn copy_tables(src: &ReadTransaction, dst: &WriteTransaction) -> Result<(), MetaError> {
    super::copy_table(src, dst, INODES)?;
    super::copy_table(src, dst, DIRENTS)?;
    super::copy_table(src, dst, EXTENTS)?;
    super::copy_table(src, dst, VOLUME)
}

impl Meta {
    /// The sealed row of inode `ino`, if stored.
    pub fn inode_row(&self, ino: u64) -> Result<Option<Vec<u8>>, MetaError> {
        let txn = self.database().begin_read()?;
        let t = txn.open_table(INODES)?;
        Ok(t.get(ino)?.map(|v| v.value().to_vec()))
    }

    /// Every stored inode row, in inode order.
    pub fn for_each_inode_row(&self, f: &mut InodeVisitor) -> Result<(), MetaError> {
        let txn = self.database().begin_read()?;
        for row in txn.open_table(INODES)?.iter()? {
            let (k, v) = row?;
            f(k.value(), v.value())?;
        }
        Ok(())
    }

    /// Up to `n` stored inode numbers, from `from` on.
    pub fn inode_numbers_from(&self, from: u64, n: usize) -> Result<Vec<u64>, MetaError> {
        let txn = self.database().begin_read()?;
        let t = txn.open_table(INODES)?;
        let mut out = Vec::new();
        for row in t.range(from..)?.take(n) {
            out.push(row?.0.value());
        }
        Ok(out)
    }

    /// The `dirents` rows of directory `parent`: (name MAC, sealed entry).
    pub fn dirent_rows(&self, parent: u64) -> Result<Vec<([u8; 32], Sealed)>, MetaError> {
        let txn = self.database().begin_read()?;
        let t = txn.open_table(DIRENTS)?;
        let mut out = Vec::new();
        for row in t.range((parent, [0u8; 32])..=(parent, [0xffu8; 32]))? {
            let (k, v) = row?;
            out.push((k.value().1, v.value().to_vec()));
        }
        Ok(out)
    }

    /// The `extents` rows of file `ino`: (file offset, sealed extent).
    pub fn extent_rows(&self, ino: u64) -> Result<Vec<(u64, Sealed)>, MetaError> {
        let txn = self.database().begin_read()?;
        let t = txn.open_table(EXTENTS)?;
        let mut out = Vec::new();
        for row in t.range((ino, 0)..=(ino, u64::MAX))? {
            let (k, v) = row?;
            out.push((k.value().1, v.value().to_vec()));
        }
        Ok(out)
    }

    /// A counter of the `volume` table as committed (None: not set, or a
    /// store whose volume never opened).
    pub fn counter(&self, name: &str) -> Result<Option<u64>, MetaError> {
        let txn = self.database().begin_read()?;
        let Some(t) = table_if_any(&txn, VOLUME)? else {
            return Ok(None);
        };
        Ok(t.get(name)?.map(|v| v.value()))
    }

    /// The counters of the `volume` table whose names start with `prefix`:
    /// (the rest of the name, value).
    pub fn counters_with_prefix(&self, prefix: &str) -> Result<Vec<(String, u64)>, MetaError> {
        let txn = self.database().begin_read()?;
        let Some(t) = table_if_any(&txn, VOLUME)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in t.range(prefix..)? {
            let (k, v) = row?;
            let Some(rest) = k.value().strip_prefix(prefix) else {
                break;
            };
            out.push((rest.to_string(), v.value()));
        }
        Ok(out)
    }

    /// Calls `f` with every sealed value of the volume's tables.
    pub fn for_each_sealed(&self, f: &mut dyn FnMut(&[u8])) -> Result<(), MetaError> {
        let txn = self.database().begin_read()?;
        for row in txn.open_table(INODES)?.iter()? {
            f(row?.1.value());
        }
        for row in txn.open_table(DIRENTS)?.iter()? {
            f(row?.1.value());
        }
        for row in txn.open_table(EXTENTS)?.iter()? {
            f(row?.1.value());
        }
        Ok(())
    }
}
