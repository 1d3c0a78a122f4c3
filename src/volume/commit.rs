//! The volume's commit: its pending changes become one sealed batch of rows
//! written with the chunk index in one metadata transaction.
//!
//! Steps, under the volume lock: plan (which form each changed row takes:
//! a file's extents and a small directory's entries live in its inode row,
//! larger ones in table rows), seal (every row to write, under the current
//! metadata key), take (the pending changes are cleared and the cached row
//! forms updated). Then, without the volume lock, write: the engine commits
//! the batch (segment and index fsyncs) while requests go on.
//!
//! Invariants: commits run one at a time, in order (`commit_lock`); a
//! failed commit poisons the engine, so nothing later is committed and no
//! change is half-written; references the changes dropped are released in
//! the same engine batch that writes the changes, never earlier.

use std::collections::HashSet;

use super::error::VResult;
use super::inode::{self, DirentRecord, Inode, Kind, INLINE_EXTENTS_MAX};
use super::store;
use super::{lock, State, Volume};
use crate::crypto::seal::MetaSealer;
use crate::engine::ChunkRef;
use crate::meta::VolumeChanges;

/// A dirents-table row to write: key and sealed value (None: remove).
type DirentRow = ((u64, [u8; 32]), Option<Vec<u8>>);
/// An extents-table row to write: key and sealed value (None: remove).
type ExtentRow = ((u64, u64), Option<Vec<u8>>);

/// Which rows this commit writes and in which form.
#[derive(Default)]
struct RowPlan {
    /// Inode rows to write: changed inodes, files whose extents changed and
    /// directories whose entries changed (a row may hold either).
    inodes: Vec<u64>,
    /// Files whose rows now hold their extents, and of those, the ones
    /// that may still have table rows (cleared in the commit).
    inline_extents: HashSet<u64>,
    clear_extent_rows: Vec<u64>,
    /// Files whose row held their extents and no longer does: every
    /// extent is written as a table row.
    extents_to_rows: Vec<u64>,
    /// The same for directories and their entries.
    inline_entries: HashSet<u64>,
    clear_dirent_rows: Vec<u64>,
    entries_to_rows: Vec<u64>,
}

/// The sealed rows of one commit.
#[derive(Default)]
struct SealedRows {
    inodes: Vec<(u64, Vec<u8>)>,
    extents: Vec<ExtentRow>,
    dirents: Vec<DirentRow>,
}

/// What the commit takes out of the pending changes besides the rows.
struct TakenChanges {
    removed_inodes: Vec<u64>,
    counters: Vec<(&'static str, Option<u64>)>,
    releases: Vec<ChunkRef>,
    next_ino: u64,
}

impl Volume {
    /// The daemon's group commit: a durable commit when anything changed
    /// since the last one.
    pub fn commit_if_pending(&self) -> VResult<()> {
        let pending = {
            let st = lock(&self.state);
            !(st.pending.dirty_inodes.is_empty()
                && st.pending.counter_changes.is_empty()
                && st.pending.removed_inodes.is_empty()
                && st.pending.dirent_changes.is_empty()
                && st.pending.extent_changes.is_empty())
        };
        if pending {
            self.commit(true)?;
        }
        Ok(())
    }

    /// Persists every metadata change so far, sealed, in one transaction
    /// with the chunk index (durably when asked). See the module comment.
    pub fn commit(&self, durable: bool) -> VResult<()> {
        let _one_at_a_time = lock(&self.commit_lock);
        self.commit_locked(durable)
    }

    /// `commit`, for a caller that holds the commit lock.
    pub(super) fn commit_locked(&self, durable: bool) -> VResult<()> {
        let mut st = lock(&self.state);
        let sealer = self.sealer();
        let plan = self.plan_rows(&mut st)?;
        let sealed = seal_rows(&st, &sealer, &plan)?;
        let coverage = super::intent::take_coverage(&mut st, self.intent().as_deref());
        let taken = take_pending(&mut st, &plan);
        drop(st);
        let counters = std::iter::once(("next_ino", Some(taken.next_ino)))
            .chain(taken.counters)
            .map(|(k, v)| (k.to_string(), v))
            .chain(coverage.counters())
            .collect();
        let rows = VolumeChanges {
            inodes: sealed.inodes,
            removed_inodes: taken.removed_inodes,
            cleared_dirents: plan.clear_dirent_rows,
            dirents: sealed.dirents,
            cleared_extents: plan.clear_extent_rows,
            extents: sealed.extents,
            counters,
        };
        self.engine.commit_volume(durable, &taken.releases, &rows)?;
        if durable {
            self.commit_done(coverage)?;
        }
        Ok(())
    }

    /// Decides each changed row's form. A directory's form is decided from
    /// all its entries, so a changed directory not cached yet is loaded.
    fn plan_rows(&self, st: &mut State) -> VResult<RowPlan> {
        let pending = &st.pending;
        let mut inodes: Vec<u64> = pending.dirty_inodes.iter().copied().collect();
        inodes.extend(pending.extent_changes.keys().map(|(ino, _)| *ino));
        inodes.extend(pending.dirent_changes.keys().map(|(dir, _)| *dir));
        inodes.sort_unstable();
        inodes.dedup();
        // `dirent_changes` is ordered by directory: dedup of the keys.
        let mut changed_dirs: Vec<u64> = pending.dirent_changes.keys().map(|(d, _)| *d).collect();
        changed_dirs.dedup();
        for ino in changed_dirs {
            if !st.pending.removed_inodes.contains(&ino)
                && !st.cached.dirs.contains_key(&ino)
                && st
                    .cached
                    .inodes
                    .get(&ino)
                    .is_none_or(|i| i.kind == Kind::Dir)
            {
                self.load_dir(st, ino)?;
            }
        }
        let mut plan = RowPlan::default();
        let cached = &st.cached;
        for &ino in &inodes {
            let Some(i) = cached.inodes.get(&ino) else {
                continue;
            };
            let extents = cached.extents.get(&ino).filter(|_| i.kind == Kind::File);
            if extents.is_some_and(|m| m.len() <= INLINE_EXTENTS_MAX) {
                plan.inline_extents.insert(ino);
                if !cached.inline.contains(&ino) {
                    plan.clear_extent_rows.push(ino);
                }
            } else if extents.is_some() && cached.inline.contains(&ino) {
                plan.extents_to_rows.push(ino);
            }
            let entries = cached.dirs.get(&ino).filter(|_| i.kind == Kind::Dir);
            if entries.is_some_and(inode::entries_fit) {
                plan.inline_entries.insert(ino);
                if !cached.inline_dirs.contains(&ino) {
                    plan.clear_dirent_rows.push(ino);
                }
            } else if entries.is_some() && cached.inline_dirs.contains(&ino) {
                plan.entries_to_rows.push(ino);
            }
        }
        plan.inodes = inodes;
        Ok(plan)
    }

    /// The dirents-table rows that record `parent`'s entry `name` as
    /// `child` (None: removed).
    fn dirent_rows(
        s: &MetaSealer,
        parent: u64,
        name: &[u8],
        child: Option<u64>,
    ) -> VResult<Vec<DirentRow>> {
        let mac = s.name_mac(parent, name).map_err(store::meta_err)?;
        let mut rows = Vec::with_capacity(2);
        // During a conversion the entry may still sit under the retiring
        // key's name MAC: that row goes in the same commit.
        if let Some(old) = s.retiring_name_mac(parent, name).map_err(store::meta_err)? {
            rows.push(((parent, old), None));
        }
        let value = match child {
            Some(ino) => Some(store::seal_dirent(
                s,
                parent,
                &mac,
                &DirentRecord {
                    name: name.to_vec(),
                    ino,
                },
            )?),
            None => None,
        };
        rows.push(((parent, mac), value));
        Ok(rows)
    }
}

/// Seals every row `plan` writes: the inode rows (holding their extents or
/// entries where planned), every extent or entry of a file or directory
/// going back to table rows, and the pending extent and entry changes not
/// held by a row.
fn seal_rows(st: &State, s: &MetaSealer, plan: &RowPlan) -> VResult<SealedRows> {
    let cached = &st.cached;
    let mut out = SealedRows::default();
    for &ino in &plan.inodes {
        if let Some(i) = cached.inodes.get(&ino) {
            out.inodes.push((ino, seal_inode_row(st, s, plan, ino, i)?));
        }
    }
    for &ino in &plan.extents_to_rows {
        for (off, e) in &cached.extents[&ino] {
            let sealed = store::seal_extent(s, ino, *off, e)?;
            out.extents.push(((ino, *off), Some(sealed)));
        }
    }
    for &ino in &plan.entries_to_rows {
        for (name, child) in &cached.dirs[&ino] {
            out.dirents
                .extend(Volume::dirent_rows(s, ino, name, Some(*child))?);
        }
    }
    for ((parent, name), change) in &st.pending.dirent_changes {
        if plan.inline_entries.contains(parent) || cached.inline_dirs.contains(parent) {
            // Held by the row, or all written above (no rows to remove).
            continue;
        }
        out.dirents
            .extend(Volume::dirent_rows(s, *parent, name, *change)?);
    }
    for ((ino, off), change) in &st.pending.extent_changes {
        if plan.inline_extents.contains(ino) || (change.is_some() && cached.inline.contains(ino)) {
            // Held by the row (or all written above).
            continue;
        }
        let value = match change {
            Some(e) => Some(store::seal_extent(s, *ino, *off, e)?),
            None => None,
        };
        out.extents.push(((*ino, *off), value));
    }
    Ok(out)
}

/// One inode row, sealed with its extents or entries when the plan puts
/// them in the row. A file with buffered writes is stored with the size
/// its stored data covers, so a crash never leaves it longer than that.
fn seal_inode_row(
    st: &State,
    s: &MetaSealer,
    plan: &RowPlan,
    ino: u64,
    i: &Inode,
) -> VResult<Vec<u8>> {
    let extents = plan
        .inline_extents
        .contains(&ino)
        .then(|| st.cached.extents.get(&ino))
        .flatten();
    let entries = plan
        .inline_entries
        .contains(&ino)
        .then(|| st.cached.dirs.get(&ino))
        .flatten();
    let sealed = match st.writes.stored_size.get(&ino) {
        Some(&size) if size < i.size => {
            let mut stored = i.clone();
            stored.size = size;
            store::seal_inode(s, ino, &stored, extents, entries)?
        }
        _ => store::seal_inode(s, ino, i, extents, entries)?,
    };
    Ok(sealed)
}

/// Clears the pending changes and records each written row's new form.
/// The references these changes dropped join the engine batch this commit
/// writes; later ones wait for the next commit.
fn take_pending(st: &mut State, plan: &RowPlan) -> TakenChanges {
    let pending = &mut st.pending;
    let taken = TakenChanges {
        removed_inodes: pending.removed_inodes.drain().collect(),
        counters: pending.counter_changes.drain().collect(),
        releases: std::mem::take(&mut pending.deferred_releases),
        next_ino: st.next_ino,
    };
    pending.dirty_inodes.clear();
    pending.dirent_changes.clear();
    pending.extent_changes.clear();
    for &ino in plan
        .inodes
        .iter()
        .filter(|i| st.cached.inodes.contains_key(i))
    {
        if plan.inline_extents.contains(&ino) {
            st.cached.inline.insert(ino);
        } else {
            st.cached.inline.remove(&ino);
        }
        if plan.inline_entries.contains(&ino) {
            st.cached.inline_dirs.insert(ino);
        } else {
            st.cached.inline_dirs.remove(&ino);
        }
    }
    taken
}
