//! Namespace operations: lookup, creating nodes (files, directories,
//! symlinks, hard links), unlink and rmdir, rename (with RENAME_NOREPLACE
//! and RENAME_EXCHANGE), and directory listings.
//!
//! Invariants: every change happens under the volume lock and is recorded
//! as a pending change for the next commit; a directory's link count is 2
//! plus its subdirectories; an inode whose last link goes stays until its
//! last open handle is released (then `free_inode`).

use super::error::{err, VResult, VolError};
use super::inode::{Inode, Kind, Time};
use super::*;

/// The two directory entries a rename names.
struct RenameEnds<'a> {
    parent: u64,
    name: &'a [u8],
    newparent: u64,
    newname: &'a [u8],
}

impl Volume {
    pub fn lookup(&self, parent: u64, name: &[u8]) -> VResult<Attr> {
        let mut st = lock(&self.state);
        if name.len() > NAME_MAX {
            return err(libc::ENAMETOOLONG);
        }
        let child = match name {
            b"." => parent,
            b".." => self.load_inode(&mut st, parent)?.parent,
            _ => *self
                .load_dir(&mut st, parent)?
                .get(name)
                .ok_or(VolError::new(libc::ENOENT))?,
        };
        self.attr_of(&mut st, child)
    }

    fn new_node(
        &self,
        st: &mut State,
        parent: u64,
        name: &[u8],
        mut inode: Inode,
    ) -> VResult<Attr> {
        Self::check_name(name)?;
        let pgid = {
            let p = self.load_inode(st, parent)?;
            if p.nlink == 0 {
                return err(libc::ENOENT);
            }
            (p.perm & 0o2000 != 0).then_some(p.gid)
        };
        if self.load_dir(st, parent)?.contains_key(name) {
            return err(libc::EEXIST);
        }
        // BSD/SysV rule: a setgid directory passes its group (and, to
        // subdirectories, the setgid bit) on.
        if let Some(g) = pgid {
            inode.gid = g;
            if inode.kind == Kind::Dir {
                inode.perm |= 0o2000;
            }
        }
        let ino = st.next_ino;
        st.next_ino += 1;
        st.synced.created.insert(ino);
        let is_dir = inode.kind == Kind::Dir;
        st.cached.inodes.insert(ino, inode);
        Self::touch(st, ino);
        if is_dir {
            st.cached.dirs.insert(ino, BTreeMap::new());
            // No rows yet: nothing for its first commit to clear.
            st.cached.inline_dirs.insert(ino);
        }
        if inode_kind_is_file(st, ino) {
            st.cached.extents.insert(ino, BTreeMap::new());
            // No rows yet: nothing for its first commit to clear.
            st.cached.inline.insert(ino);
        }
        Self::set_dirent(st, parent, name, Some(ino));
        let now = Time::now();
        let p = self.load_inode(st, parent)?;
        if is_dir {
            p.nlink += 1;
        }
        p.mtime = now;
        p.ctime = now;
        Self::touch(st, parent);
        self.attr_of(st, ino)
    }

    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        kind: Kind,
        mode: u32,
        rdev: u32,
        c: Caller,
    ) -> VResult<Attr> {
        let mut st = self.state_for_change()?;
        let mut inode = Inode::new(kind, (mode & 0o7777) as u16, c.uid, c.gid, parent);
        inode.rdev = rdev;
        self.new_node(&mut st, parent, name, inode)
    }

    pub fn mkdir(&self, parent: u64, name: &[u8], mode: u32, c: Caller) -> VResult<Attr> {
        let mut st = self.state_for_change()?;
        let inode = Inode::new(Kind::Dir, (mode & 0o7777) as u16, c.uid, c.gid, parent);
        self.new_node(&mut st, parent, name, inode)
    }

    pub fn symlink(&self, parent: u64, name: &[u8], target: &[u8], c: Caller) -> VResult<Attr> {
        if target.len() > 4095 {
            return err(libc::ENAMETOOLONG);
        }
        let mut st = self.state_for_change()?;
        let mut inode = Inode::new(Kind::Symlink, 0o777, c.uid, c.gid, parent);
        inode.symlink = Some(target.to_vec());
        inode.size = target.len() as u64;
        self.new_node(&mut st, parent, name, inode)
    }

    pub fn readlink(&self, ino: u64) -> VResult<Vec<u8>> {
        let mut st = lock(&self.state);
        let inode = self.load_inode(&mut st, ino)?;
        inode.symlink.clone().ok_or(VolError::new(libc::EINVAL))
    }

    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> VResult<Attr> {
        let mut st = self.state_for_change()?;
        Self::check_name(name)?;
        let inode = self.load_inode(&mut st, ino)?;
        if inode.kind == Kind::Dir {
            return err(libc::EPERM);
        }
        if inode.nlink >= u32::MAX - 1 {
            return err(libc::EMLINK);
        }
        if self.load_dir(&mut st, parent)?.contains_key(name) {
            return err(libc::EEXIST);
        }
        let now = Time::now();
        let inode = self.load_inode(&mut st, ino)?;
        inode.nlink += 1;
        inode.ctime = now;
        Self::touch(&mut st, ino);
        Self::set_dirent(&mut st, parent, name, Some(ino));
        let p = self.load_inode(&mut st, parent)?;
        p.mtime = now;
        p.ctime = now;
        Self::touch(&mut st, parent);
        self.attr_of(&mut st, ino)
    }

    /// Drops one link of `ino`; frees it when unlinked and not open.
    fn drop_link(&self, st: &mut State, ino: u64) -> VResult<()> {
        let now = Time::now();
        let inode = self.load_inode(st, ino)?;
        inode.ctime = now;
        if inode.kind == Kind::Dir {
            inode.nlink = 0;
        } else {
            inode.nlink = inode.nlink.saturating_sub(1);
        }
        let gone = inode.nlink == 0;
        Self::touch(st, ino);
        if gone && st.open_counts.get(&ino).copied().unwrap_or(0) == 0 {
            self.free_inode(st, ino)?;
        }
        Ok(())
    }

    pub(super) fn free_inode(&self, st: &mut State, ino: u64) -> VResult<()> {
        let extents = std::mem::take(self.load_extents(st, ino)?);
        let refs: Vec<ChunkRef> = extents
            .values()
            .map(|e| ChunkRef {
                fingerprint: e.fingerprint,
                len: e.len,
            })
            .collect();
        st.pending.deferred_releases.extend(refs);
        // Extents held in the inode row go with it.
        if !st.cached.inline.remove(&ino) {
            for off in extents.keys() {
                st.pending.extent_changes.insert((ino, *off), None);
            }
        }
        st.cached.extents.remove(&ino);
        st.writes.buffers.remove(&ino);
        st.writes.buffered.remove(&ino);
        st.writes.stored_size.remove(&ino);
        st.synced.forget(ino);
        st.cached.inodes.remove(&ino);
        st.cached.dirs.remove(&ino);
        // (A removed directory is empty: its pending entry removals, if it
        // had table rows, are written as before.)
        st.cached.inline_dirs.remove(&ino);
        st.pending.dirty_inodes.remove(&ino);
        st.pending.removed_inodes.insert(ino);
        Ok(())
    }

    pub(super) fn remove_orphans(&self, st: &mut State) -> VResult<()> {
        let mut orphans = Vec::new();
        let sealer = self.sealer();
        self.engine.meta().for_each_inode_row(&mut |ino, sealed| {
            if store::open_inode(&sealer, ino, sealed)?.inode.nlink == 0 {
                orphans.push(ino);
            }
            Ok(())
        })?;
        for ino in orphans {
            self.free_inode(st, ino)?;
        }
        Ok(())
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> VResult<()> {
        let mut st = self.state_for_change()?;
        let child = *self
            .load_dir(&mut st, parent)?
            .get(name)
            .ok_or(VolError::new(libc::ENOENT))?;
        if self.load_inode(&mut st, child)?.kind == Kind::Dir {
            return err(libc::EISDIR);
        }
        Self::set_dirent(&mut st, parent, name, None);
        let now = Time::now();
        let p = self.load_inode(&mut st, parent)?;
        p.mtime = now;
        p.ctime = now;
        Self::touch(&mut st, parent);
        self.drop_link(&mut st, child)
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> VResult<()> {
        let mut st = self.state_for_change()?;
        if name == b"." {
            return err(libc::EINVAL);
        }
        if name == b".." {
            return err(libc::ENOTEMPTY);
        }
        let child = *self
            .load_dir(&mut st, parent)?
            .get(name)
            .ok_or(VolError::new(libc::ENOENT))?;
        if self.load_inode(&mut st, child)?.kind != Kind::Dir {
            return err(libc::ENOTDIR);
        }
        if !self.load_dir(&mut st, child)?.is_empty() {
            return err(libc::ENOTEMPTY);
        }
        Self::set_dirent(&mut st, parent, name, None);
        let now = Time::now();
        let p = self.load_inode(&mut st, parent)?;
        p.nlink = p.nlink.saturating_sub(1);
        p.mtime = now;
        p.ctime = now;
        Self::touch(&mut st, parent);
        self.drop_link(&mut st, child)
    }

    /// True when `dir` is `ancestor` or lies below it.
    fn is_within(&self, st: &mut State, mut dir: u64, ancestor: u64) -> VResult<bool> {
        loop {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == ROOT {
                return Ok(false);
            }
            dir = self.load_inode(st, dir)?.parent;
        }
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        mode: RenameMode,
    ) -> VResult<()> {
        let mut st = self.state_for_change()?;
        Self::check_name(newname)?;
        let src = *self
            .load_dir(&mut st, parent)?
            .get(name)
            .ok_or(VolError::new(libc::ENOENT))?;
        let dst = self.load_dir(&mut st, newparent)?.get(newname).copied();
        let src_dir = self.load_inode(&mut st, src)?.kind == Kind::Dir;
        if src_dir && self.is_within(&mut st, newparent, src)? {
            return err(libc::EINVAL);
        }
        let now = Time::now();
        let ends = RenameEnds {
            parent,
            name,
            newparent,
            newname,
        };
        match (mode, dst) {
            (RenameMode::NoReplace, Some(_)) => return err(libc::EEXIST),
            (RenameMode::Exchange, None) => return err(libc::ENOENT),
            (RenameMode::Exchange, Some(d)) => {
                return self.exchange(&mut st, &ends, (src, src_dir), d, now)
            }
            _ => {}
        }
        if dst == Some(src) {
            return Ok(()); // same file under both names: nothing to do
        }
        if let Some(d) = dst {
            self.drop_target(&mut st, src_dir, d, newparent)?;
        }
        Self::set_dirent(&mut st, parent, name, None);
        Self::set_dirent(&mut st, newparent, newname, Some(src));
        {
            let s = self.load_inode(&mut st, src)?;
            s.ctime = now;
            if src_dir {
                s.parent = newparent;
            }
        }
        Self::touch(&mut st, src);
        if src_dir && parent != newparent {
            let p = self.load_inode(&mut st, parent)?;
            p.nlink = p.nlink.saturating_sub(1);
            self.load_inode(&mut st, newparent)?.nlink += 1;
        }
        self.touch_parents(&mut st, &ends, now)
    }

    /// RENAME_EXCHANGE: the two entries swap inodes; directories moving
    /// between parents move a link count with them.
    fn exchange(
        &self,
        st: &mut State,
        ends: &RenameEnds,
        (src, src_dir): (u64, bool),
        d: u64,
        now: Time,
    ) -> VResult<()> {
        let (parent, newparent) = (ends.parent, ends.newparent);
        let dst_dir = self.load_inode(st, d)?.kind == Kind::Dir;
        if dst_dir && self.is_within(st, parent, d)? {
            return err(libc::EINVAL);
        }
        Self::set_dirent(st, parent, ends.name, Some(d));
        Self::set_dirent(st, newparent, ends.newname, Some(src));
        for (ino, is_dir, new_parent) in [(src, src_dir, newparent), (d, dst_dir, parent)] {
            let i = self.load_inode(st, ino)?;
            i.ctime = now;
            if is_dir {
                i.parent = new_parent;
            }
            Self::touch(st, ino);
        }
        if src_dir != dst_dir && parent != newparent {
            let (gain, lose) = if src_dir {
                (newparent, parent)
            } else {
                (parent, newparent)
            };
            self.load_inode(st, gain)?.nlink += 1;
            let l = self.load_inode(st, lose)?;
            l.nlink = l.nlink.saturating_sub(1);
        }
        self.touch_parents(st, ends, now)
    }

    /// Removes the entry a rename replaces (`d` in `newparent`): a file
    /// only by a file, a directory only by a directory, and only when empty.
    fn drop_target(&self, st: &mut State, src_dir: bool, d: u64, newparent: u64) -> VResult<()> {
        let dst_dir = self.load_inode(st, d)?.kind == Kind::Dir;
        match (src_dir, dst_dir) {
            (true, false) => return err(libc::ENOTDIR),
            (false, true) => return err(libc::EISDIR),
            (true, true) if !self.load_dir(st, d)?.is_empty() => return err(libc::ENOTEMPTY),
            _ => {}
        }
        if dst_dir {
            let np = self.load_inode(st, newparent)?;
            np.nlink = np.nlink.saturating_sub(1);
        }
        self.drop_link(st, d)
    }

    /// Both parents of a rename changed now.
    fn touch_parents(&self, st: &mut State, ends: &RenameEnds, now: Time) -> VResult<()> {
        for p in [ends.parent, ends.newparent] {
            let pi = self.load_inode(st, p)?;
            pi.mtime = now;
            pi.ctime = now;
            Self::touch(st, p);
        }
        Ok(())
    }

    /// The entries of a directory, "." and ".." first (a snapshot: readdir
    /// serves it by index, so concurrent changes never repeat or skip a
    /// stable entry).
    pub fn read_dir(&self, ino: u64) -> VResult<Vec<DirEntry>> {
        let mut st = lock(&self.state);
        let parent = self.load_inode(&mut st, ino)?.parent;
        let entries: Vec<(Vec<u8>, u64)> = self
            .load_dir(&mut st, ino)?
            .iter()
            .map(|(n, i)| (n.clone(), *i))
            .collect();
        let mut out = vec![
            (ino, Kind::Dir, b".".to_vec()),
            (parent, Kind::Dir, b"..".to_vec()),
        ];
        for (name, child) in entries {
            let kind = self.load_inode(&mut st, child)?.kind;
            out.push((child, kind, name));
        }
        Ok(out)
    }
}
