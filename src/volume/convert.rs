//! Key conversion, volume side: switching the keys a live volume seals and
//! writes with, and converting one inode at a time to the current keys.
//!
//! Converting an inode re-seals its record, its directory entries (under
//! the current name MAC; the retiring row goes in the same commit) and its
//! extents, and replaces every extent whose chunk is under a retiring key
//! generation by the same bytes stored under the current keys. Like a
//! flush, the chunk work runs without the volume lock: the extents are
//! snapshotted, converted, and swapped in only where they are unchanged
//! (a write meanwhile already replaced the others with current-key chunks,
//! and the unused conversion's reference is released).
//!
//! Invariants: a converted extent holds a reference to its new chunk before
//! the old one is released, in the same commit that writes the extent; a
//! chunk found already under the current generation is left alone.

use crate::poison::RecoverRw;
use std::collections::HashMap;
use std::sync::Arc;

use super::{lock, Extent, Kind, VResult, Volume};
use crate::crypto::seal::MetaSealer;
use crate::crypto::{Fingerprint, KeyRing};
use crate::engine::ChunkRef;

/// Old fingerprints already converted (to reference instead of re-reading).
/// Bounded: past this many entries it starts over (correct, only slower).
const CONVERTED_MEMORY: usize = 1 << 20;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConvertStep {
    /// Chunks re-encrypted (each distinct chunk counts once).
    pub chunks: u64,
    /// Their plaintext bytes.
    pub bytes: u64,
}

fn chunk_ref(e: &Extent) -> ChunkRef {
    ChunkRef {
        fingerprint: e.fingerprint,
        len: e.len,
    }
}

/// The extents one conversion step re-encrypts, and where the next
/// step of the same file starts (None: the file is done).
type ConvertTake = (Vec<(u64, Extent)>, Option<u64>);

impl Volume {
    /// Switches the keys the volume and its engine write with. Changes not
    /// committed yet are sealed with the new sealer when they are; nothing
    /// is written or read with a half-switched pair (the commit and state
    /// locks are held across the switch).
    pub fn rekey(
        &self,
        keys: Arc<KeyRing>,
        make_sealer: &dyn Fn(u64) -> VResult<MetaSealer>,
    ) -> VResult<()> {
        let sealer = make_sealer(super::reserve_nonce_block(&self.engine)?)?;
        let _one_at_a_time = lock(&self.commit_lock);
        let _st = lock(&self.state);
        self.engine.set_keys(Some(keys));
        *self.sealer.write_locked() = Arc::new(sealer);
        Ok(())
    }

    /// Up to `n` inode numbers stored in the database, from `from` on.
    pub fn stored_inodes_from(&self, from: u64, n: usize) -> VResult<Vec<u64>> {
        Ok(self.engine.meta().inode_numbers_from(from, n)?)
    }

    /// Converts one inode to the current keys (see the module comment),
    /// from file offset `from` on and for about `budget` bytes of extents;
    /// returns where to go on in this inode (None: it is done). The inode
    /// record and directory entries are re-sealed in the first step. The
    /// changes are committed by the next volume commit.
    pub fn convert_inode(
        &self,
        ino: u64,
        from: u64,
        budget: u64,
        converted: &mut HashMap<Fingerprint, ChunkRef>,
    ) -> VResult<(ConvertStep, Option<u64>)> {
        let current = self.engine.keys()?.current.generation;
        let Some((snapshot, next)) = self.take_for_convert(ino, from, budget)? else {
            return Ok((ConvertStep::default(), None));
        };
        // Unlocked: bring every retiring-key chunk over to the current keys.
        let mut step = ConvertStep::default();
        let mut replacements: Vec<(u64, Extent, ChunkRef)> = Vec::new();
        let mut fail = None;
        for (off, old) in &snapshot {
            match self.convert_chunk(old, current, converted, &mut step) {
                Ok(Some(new)) => replacements.push((*off, *old, new)),
                Ok(None) => {}
                Err(e) => {
                    fail = Some(e);
                    break;
                }
            }
        }
        let unused = self.swap_converted(ino, replacements);
        self.engine.release(&unused)?;
        match fail {
            Some(e) => Err(e),
            None => Ok((step, next)),
        }
    }

    /// Under the volume lock: marks the inode's row and a directory's
    /// entries (first step only) or about `budget` bytes of a file's
    /// extents from `from` on to be written again (so the next commit
    /// re-seals them), and returns those extents with where the next step
    /// starts. None when the inode is gone.
    fn take_for_convert(&self, ino: u64, from: u64, budget: u64) -> VResult<Option<ConvertTake>> {
        let mut st = self.lock_unflushing(ino);
        if st.pending.removed_inodes.contains(&ino) {
            return Ok(None);
        }
        let kind = match self.load_inode(&mut st, ino) {
            Ok(i) => i.kind,
            Err(e) if e.errno == libc::ENOENT => return Ok(None),
            Err(e) => return Err(e),
        };
        Self::touch(&mut st, ino);
        match kind {
            Kind::Dir if from == 0 => {
                let entries: Vec<(Vec<u8>, u64)> = self
                    .load_dir(&mut st, ino)?
                    .iter()
                    .map(|(n, c)| (n.clone(), *c))
                    .collect();
                for (name, child) in entries {
                    st.pending.dirent_changes.insert((ino, name), Some(child));
                }
                Ok(Some((Vec::new(), None)))
            }
            Kind::File => {
                let mut taken = 0u64;
                let mut next = None;
                let mut extents: Vec<(u64, Extent)> = Vec::new();
                for (o, e) in self.load_extents(&mut st, ino)?.range(from..) {
                    if taken >= budget {
                        next = Some(*o);
                        break;
                    }
                    taken += e.len as u64;
                    extents.push((*o, *e));
                }
                for (off, e) in &extents {
                    st.pending.extent_changes.insert((ino, *off), Some(*e));
                }
                Ok(Some((extents, next)))
            }
            _ => Ok(Some((Vec::new(), None))),
        }
    }

    /// Under the volume lock: swaps in each converted chunk whose extent is
    /// unchanged since it was taken (the old reference is released with the
    /// commit); returns the converted chunks nothing uses.
    fn swap_converted(
        &self,
        ino: u64,
        replacements: Vec<(u64, Extent, ChunkRef)>,
    ) -> Vec<ChunkRef> {
        let mut unused = Vec::new();
        let mut st = self.lock_unflushing(ino);
        let alive = !st.pending.removed_inodes.contains(&ino);
        for (off, old, new) in replacements {
            let map = st.cached.extents.get_mut(&ino).filter(|_| alive);
            match map {
                Some(m) if m.get(&off) == Some(&old) => {
                    let e = Extent {
                        fingerprint: new.fingerprint,
                        len: old.len,
                    };
                    m.insert(off, e);
                    st.pending.extent_changes.insert((ino, off), Some(e));
                    st.pending.deferred_releases.push(chunk_ref(&old));
                }
                _ => unused.push(new),
            }
        }
        unused
    }

    /// The current-key chunk for `old` with one reference taken, or None
    /// when `old` is already under the current keys.
    fn convert_chunk(
        &self,
        old: &Extent,
        current: crate::crypto::KeyGen,
        converted: &mut HashMap<Fingerprint, ChunkRef>,
        step: &mut ConvertStep,
    ) -> VResult<Option<ChunkRef>> {
        if let Some(new) = converted.get(&old.fingerprint) {
            if self.engine.add_reference(new)? {
                return Ok(Some(*new));
            }
        }
        if self.engine.chunk_generation(&old.fingerprint)? == current {
            return Ok(None);
        }
        let data = self.engine.read_chunk(&old.fingerprint)?;
        let new = self.engine.put_chunk(&data)?;
        step.chunks += 1;
        step.bytes += data.len() as u64;
        if converted.len() >= CONVERTED_MEMORY {
            converted.clear();
        }
        converted.insert(old.fingerprint, new);
        Ok(Some(new))
    }
}
