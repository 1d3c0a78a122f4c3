//! The metadata journal: between full checkpoints, a sync uploads only the
//! blocks of the metadata database that changed since the last upload.
//!
//! The database file is cut into BLOCK-byte blocks; the hash of every block
//! as last shipped is kept in memory (SHA-256 through the store's crypto
//! provider). A journal entry is the new file length and the changed blocks:
//! `len (u64 LE) || count (u32 LE) || count x (index (u64 LE) || size (u32
//! LE) || bytes)`, sealed like every blob. Restoring is the base checkpoint
//! with every later entry applied in order. A new full checkpoint is written
//! when the entries since the last one would outgrow half the database (and
//! always first after a start, when nothing is known about the bucket).

use keystore::{KeystoreError, Provider};

/// Block size of the diff.
pub const BLOCK: usize = 64 << 10;

/// What the bucket holds of the database, as far as this process knows.
#[derive(Clone, Debug)]
pub struct Shipped {
    /// Checkpoint the current chain starts from.
    pub base: u64,
    /// Newest object of the chain (the base or a journal entry).
    pub last: u64,
    pub hashes: Vec<[u8; 32]>,
    /// Bytes of journal entries since the base.
    pub journal_bytes: u64,
}

pub fn block_hashes(p: Provider, db: &[u8]) -> Result<Vec<[u8; 32]>, KeystoreError> {
    db.chunks(BLOCK).map(|b| p.sha256(b)).collect()
}

/// The journal entry taking `old` hashes to `db` (None: nothing changed).
pub fn diff(db: &[u8], old: &[[u8; 32]], new: &[[u8; 32]]) -> Option<Vec<u8>> {
    let changed: Vec<usize> = (0..new.len())
        .filter(|&i| old.get(i) != Some(&new[i]))
        .collect();
    if changed.is_empty() && old.len() == new.len() {
        return None;
    }
    let mut out = Vec::with_capacity(12 + changed.len() * (BLOCK + 12));
    out.extend_from_slice(&(db.len() as u64).to_le_bytes());
    out.extend_from_slice(&(changed.len() as u32).to_le_bytes());
    for i in changed {
        let block = &db[i * BLOCK..((i + 1) * BLOCK).min(db.len())];
        out.extend_from_slice(&(i as u64).to_le_bytes());
        out.extend_from_slice(&(block.len() as u32).to_le_bytes());
        out.extend_from_slice(block);
    }
    Some(out)
}

/// A journal entry whose lengths do not add up.
#[derive(Debug, thiserror::Error)]
#[error("a metadata journal entry is malformed")]
pub struct MalformedEntry;

/// Applies a journal entry to the database image `db`.
pub fn apply(db: &mut Vec<u8>, entry: &[u8]) -> Result<(), MalformedEntry> {
    let bad = || MalformedEntry;
    let u64_at = |b: &[u8], at: usize| -> Result<u64, MalformedEntry> {
        Ok(u64::from_le_bytes(
            b.get(at..at + 8).ok_or_else(bad)?.try_into().expect("8"),
        ))
    };
    let u32_at = |b: &[u8], at: usize| -> Result<u32, MalformedEntry> {
        Ok(u32::from_le_bytes(
            b.get(at..at + 4).ok_or_else(bad)?.try_into().expect("4"),
        ))
    };
    let len = usize::try_from(u64_at(entry, 0)?).map_err(|_| bad())?;
    let count = u32_at(entry, 8)?;
    db.resize(len, 0);
    let mut at = 12;
    for _ in 0..count {
        let index = usize::try_from(u64_at(entry, at)?).map_err(|_| bad())?;
        let size = u32_at(entry, at + 8)? as usize;
        at += 12;
        let bytes = entry.get(at..at + size).ok_or_else(bad)?;
        let start = index.checked_mul(BLOCK).ok_or_else(bad)?;
        let dst = db.get_mut(start..start + size).ok_or_else(bad)?;
        dst.copy_from_slice(bytes);
        at += size;
    }
    if at != entry.len() {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applying_the_diff_reproduces_the_new_image() {
        let p = Provider::DEFAULT;
        let old: Vec<u8> = (0..BLOCK * 5 + 100).map(|i| (i % 251) as u8).collect();
        for new_len in [BLOCK * 3 + 7, BLOCK * 5 + 100, BLOCK * 7] {
            let mut new = old.clone();
            new.resize(new_len, 9);
            new[BLOCK + 3] ^= 0xff;
            let (ho, hn) = (
                block_hashes(p, &old).unwrap(),
                block_hashes(p, &new).unwrap(),
            );
            let entry = diff(&new, &ho, &hn).unwrap();
            assert!(entry.len() < new.len(), "only changed blocks travel");
            let mut image = old.clone();
            apply(&mut image, &entry).unwrap();
            assert_eq!(image, new);
        }
        let h = block_hashes(p, &old).unwrap();
        assert!(diff(&old, &h, &h).is_none());
        assert!(apply(&mut old.clone(), &[1, 2, 3]).is_err());
    }
}
