//! Attribute operations: getattr, setattr (mode, owner, size, times) with
//! the kernel's rules for set-user-ID and set-group-ID bits, and extended
//! attributes (POSIX ACLs among them, see `acl`).
//!
//! Invariant: every change happens under the volume lock and marks the
//! inode dirty for the next commit.

use super::error::{err, VResult, VolError};
use super::inode::{Inode, Kind, Time};
use super::*;

impl Volume {
    pub fn getattr(&self, ino: u64) -> VResult<Attr> {
        let mut st = lock(&self.state);
        self.attr_of(&mut st, ino)
    }

    /// What a write or truncate by an unprivileged caller does to a file
    /// (the mount handles this itself, FUSE_HANDLE_KILLPRIV_V2): clears
    /// set-user-ID, set-group-ID when group-execute is set, and file
    /// capabilities.
    pub fn kill_privileges(&self, ino: u64) -> VResult<()> {
        let mut st = lock(&self.state);
        let inode = self.load_inode(&mut st, ino)?;
        if Self::drop_privileges(inode, true) {
            inode.ctime = Time::now();
            Self::touch(&mut st, ino);
        }
        Ok(())
    }

    /// What changing a file's content takes away, as the kernel does for a
    /// local file system: file capabilities always; set-user-ID, and
    /// set-group-ID when group-execute is set, only from an `unprivileged`
    /// writer (one without CAP_FSETID). True when anything changed.
    pub(super) fn drop_privileges(inode: &mut Inode, unprivileged: bool) -> bool {
        let mut kill = 0;
        if unprivileged {
            kill |= libc::S_ISUID as u16;
            if inode.perm & 0o010 != 0 {
                kill |= libc::S_ISGID as u16;
            }
        }
        let had = inode.perm & kill != 0;
        inode.perm &= !kill;
        inode.xattrs.remove(CAPABILITY_XATTR).is_some() || had
    }

    pub fn setattr(&self, ino: u64, set: &SetAttr, c: Caller) -> VResult<Attr> {
        drop(self.state_for_change()?);
        let mut st = match set.size {
            Some(size) => self.lock_for_cut(ino, size)?,
            None => lock(&self.state),
        };
        if let Some(size) = set.size {
            if self.load_inode(&mut st, ino)?.kind == Kind::Dir {
                return err(libc::EISDIR);
            }
            self.truncate(&mut st, ino, size)?;
            Self::drop_privileges(self.load_inode(&mut st, ino)?, c.uid != 0);
        }
        let now = Time::now();
        let inode = self.load_inode(&mut st, ino)?;
        let owner = c.uid == 0 || c.uid == inode.uid;
        if let Some(mode) = set.mode {
            if !owner {
                return err(libc::EPERM);
            }
            let mut perm = (mode & 0o7777) as u16;
            if c.uid != 0 && c.gid != inode.gid {
                perm &= !0o2000;
            }
            inode.perm = perm;
            if let Some(access) = inode.xattrs.get_mut(acl::ACCESS_XATTR) {
                *access = acl::with_mode(access, perm);
            }
            inode.ctime = now;
        }
        if set.uid.is_some() || set.gid.is_some() {
            let uid_change = set.uid.is_some_and(|u| u != inode.uid);
            if c.uid != 0 && (uid_change || !owner) {
                return err(libc::EPERM);
            }
            if inode.kind != Kind::Dir {
                // The kernel's rule: set-user-ID always goes; set-group-ID
                // goes when group-execute is set (without it the bit marks
                // mandatory locking) or the caller is neither root nor in
                // the file's group.
                let mut kill = 0o4000;
                if inode.perm & 0o010 != 0 || (c.uid != 0 && c.gid != inode.gid) {
                    kill |= 0o2000;
                }
                inode.perm &= !kill;
                inode.xattrs.remove(CAPABILITY_XATTR);
            }
            if let Some(u) = set.uid {
                inode.uid = u;
            }
            if let Some(g) = set.gid {
                inode.gid = g;
            }
            inode.ctime = now;
        }
        if let Some(a) = set.atime {
            inode.atime = a.unwrap_or(now);
            inode.ctime = now;
        }
        if let Some(m) = set.mtime {
            inode.mtime = m.unwrap_or(now);
            inode.ctime = now;
        }
        if let Some(ct) = set.ctime {
            inode.ctime = ct;
        }
        if inode.kind == Kind::File {
            st.synced.note_attrs(ino);
        }
        Self::touch(&mut st, ino);
        self.attr_of(&mut st, ino)
    }

    // ---- xattrs ----------------------------------------------------------

    pub fn setxattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: XattrFlags,
        c: Caller,
    ) -> VResult<()> {
        if name.is_empty() || name.len() > 255 {
            return err(libc::ERANGE);
        }
        if value.len() > XATTR_MAX {
            return err(libc::E2BIG);
        }
        let mut st = self.state_for_change()?;
        let inode = self.load_inode(&mut st, ino)?;
        let exists = inode.xattrs.contains_key(name);
        if flags.create && exists {
            return err(libc::EEXIST);
        }
        if flags.replace && !exists {
            return err(libc::ENODATA);
        }
        if name == acl::ACCESS_XATTR {
            // Sets the mode the ACL implies; an ACL that only restates the
            // mode is not kept (as on an ACL-aware filesystem).
            let Some(m) = acl::mode_of(value) else {
                return err(libc::EINVAL);
            };
            if c.uid != 0 && c.uid != inode.uid {
                return err(libc::EPERM);
            }
            inode.perm = (inode.perm & !0o777) | m.mode;
            if c.uid != 0 && c.gid != inode.gid {
                inode.perm &= !0o2000;
            }
            if m.equivalent {
                inode.xattrs.remove(name);
            } else {
                inode.xattrs.insert(name.to_vec(), value.to_vec());
            }
        } else {
            inode.xattrs.insert(name.to_vec(), value.to_vec());
        }
        inode.ctime = Time::now();
        Self::touch(&mut st, ino);
        Ok(())
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> VResult<Vec<u8>> {
        let mut st = lock(&self.state);
        self.load_inode(&mut st, ino)?
            .xattrs
            .get(name)
            .cloned()
            .ok_or(VolError::new(libc::ENODATA))
    }

    pub fn listxattr(&self, ino: u64) -> VResult<Vec<u8>> {
        let mut st = lock(&self.state);
        let mut out = Vec::new();
        for k in self.load_inode(&mut st, ino)?.xattrs.keys() {
            out.extend_from_slice(k);
            out.push(0);
        }
        Ok(out)
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> VResult<()> {
        let mut st = self.state_for_change()?;
        let inode = self.load_inode(&mut st, ino)?;
        inode
            .xattrs
            .remove(name)
            .ok_or(VolError::new(libc::ENODATA))?;
        inode.ctime = Time::now();
        Self::touch(&mut st, ino);
        Ok(())
    }
}
