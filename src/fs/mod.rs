//! The fuser adapter: translates FUSE requests into `Volume` calls and
//! volume errors into errnos. Holds no filesystem logic of its own.
//!
//! Invariants: this mount is the only writer of its volume (the daemon
//! holds the store's lock), so the kernel may cache entries and attributes
//! for `TTL`: it updates or invalidates them itself on every change made
//! through the mount (nlink on link/unlink, ctime on rename and xattr
//! changes, size on write/truncate/fallocate). A zero TTL doubled the wall
//! time of a source-tree copy (one lookup per path component per syscall).
//! While the store is locked (no volume loaded) every request but the
//! root's getattr fails with EACCES; `lock` invalidates cached attributes
//! and pages, so at most a name cached in the last `TTL` still resolves
//! (and its getattr then fails).

use crate::poison::{Recover, RecoverRw};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};

mod drop_behind;
mod page_fill;
mod repeats;
use drop_behind::DropBehind;
pub use page_fill::PageFill;

use crate::volume::{
    Attr, Caller, DirEntry, Kind, RenameMode, SetAttr, Time, VolError, Volume, XattrFlags, ROOT,
};

/// How long the kernel may cache an entry or attributes without asking.
const TTL: Duration = Duration::from_secs(1);

/// The volume a mount serves; None while the store is locked.
pub type SharedVolume = Arc<RwLock<Option<Arc<Volume>>>>;

pub struct DatastoreFs {
    volume: SharedVolume,
    fill: Arc<PageFill>,
    drop_behind: DropBehind,
    /// Open directory handles: the snapshot readdir serves by index.
    /// Open directory handles: the listing, and whether it was read since
    /// opendir (a read from offset 0 after that is a rewinddir: read again).
    dirs: Mutex<HashMap<u64, (Vec<DirEntry>, bool)>>,
    next_fh: AtomicU64,
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

fn to_fuse(a: &Attr) -> FileAttr {
    let i = &a.inode;
    FileAttr {
        ino: INodeNo(a.ino),
        size: i.size,
        blocks: a.blocks,
        atime: i.atime.to_system(),
        mtime: i.mtime.to_system(),
        ctime: i.ctime.to_system(),
        crtime: i.ctime.to_system(),
        kind: file_type(i.kind),
        perm: i.perm,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn errno(e: &VolError) -> Errno {
    if let Some(cause) = &e.cause {
        repeats::log_collapsed(format!("datastore: I/O error: {cause}"));
    }
    crate::metrics::record_error(e.errno);
    Errno::from_i32(e.errno)
}

fn time_of(t: TimeOrNow) -> Option<Time> {
    match t {
        TimeOrNow::SpecificTime(s) => Some(Time::from_system(s)),
        TimeOrNow::Now => None,
    }
}

/// Whether open flags give write access (an invalid access mode counts).
fn writable(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
}

/// How the kernel is to treat a file handle opened with `flags`.
///
/// A write-only handle bypasses the page cache (FOPEN_DIRECT_IO): nothing
/// can be read through it, so caching its writes only costs a copy into
/// fresh pages, and the kernel then also skips asking for
/// `security.capability` before each write (the volume drops file
/// capabilities on every write itself). The kernel drops cached pages of
/// the range a direct write covers, so other handles (and mappings) of the
/// file read the new data. Readable handles keep the page cache.
fn open_flags(flags: i32) -> FopenFlags {
    if flags & libc::O_ACCMODE == libc::O_WRONLY {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::empty()
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

impl DatastoreFs {
    pub fn new(volume: SharedVolume, fill: Arc<PageFill>) -> Self {
        DatastoreFs {
            volume,
            drop_behind: DropBehind::new(fill.clone()),
            fill,
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    /// The loaded volume, or EACCES (logged) while the store is locked.
    fn vol(&self) -> Result<Arc<Volume>, Errno> {
        match self.volume.read_locked().as_ref() {
            Some(v) => Ok(v.clone()),
            None => {
                repeats::log_collapsed(
                    "datastore: store is locked: request refused (run `datastore unlock`)".into(),
                );
                Err(Errno::EACCES)
            }
        }
    }
}

macro_rules! vol_or_reply {
    ($self:ident, $reply:ident) => {
        match $self.vol() {
            Ok(v) => v,
            Err(e) => return $reply.error(e),
        }
    };
}

fn reply_entry(reply: ReplyEntry, r: Result<Attr, VolError>) {
    match r {
        Ok(a) => reply.entry(&TTL, &to_fuse(&a), Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), VolError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

impl Filesystem for DatastoreFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        // The volume clears set-user/group-ID bits and file capabilities on
        // write, truncate and chown itself. (The kernel still asks for
        // security.capability before writes through the page cache; write-
        // only handles bypass it, see `open_flags`.)
        let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Some(v) = self.volume.read_locked().as_ref() {
            if let Err(e) = v.sync_all() {
                crate::log_line!("datastore: final sync failed: {e}");
            }
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let v = vol_or_reply!(self, reply);
        match v.lookup(parent.0, name.as_bytes()) {
            // A negative entry (inode 0) the kernel may cache for `TTL`:
            // creating a file asks first whether the name exists.
            Err(e) if e.errno == libc::ENOENT && e.cause.is_none() => {
                let mut none = to_fuse(&Attr {
                    ino: 0,
                    inode: crate::volume::Inode::new(Kind::File, 0, 0, 0, 0),
                    blocks: 0,
                });
                none.ino = INodeNo(0);
                reply.entry(&TTL, &none, Generation(0))
            }
            r => reply_entry(reply, r),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let v = match self.vol() {
            Ok(v) => v,
            Err(e) if ino.0 == ROOT => {
                // Locked: the mount point itself still stats as a directory.
                let now = SystemTime::now();
                let _ = e;
                return reply.attr(
                    &TTL,
                    &FileAttr {
                        ino,
                        size: 0,
                        blocks: 0,
                        atime: now,
                        mtime: now,
                        ctime: now,
                        crtime: now,
                        kind: FileType::Directory,
                        perm: 0o700,
                        nlink: 2,
                        uid: 0,
                        gid: 0,
                        rdev: 0,
                        blksize: 4096,
                        flags: 0,
                    },
                );
            }
            Err(e) => return reply.error(e),
        };
        match v.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &to_fuse(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let v = vol_or_reply!(self, reply);
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_of),
            mtime: mtime.map(time_of),
            ctime: ctime.map(Time::from_system),
        };
        let who = caller(req);
        let apply = move || match v.setattr(ino.0, &set, who) {
            Ok(a) => reply.attr(&TTL, &to_fuse(&a)),
            Err(e) => reply.error(errno(&e)),
        };
        if size.is_none() {
            return apply();
        }
        // A size change is ordered after any page fill of the file.
        let fill = self.fill.clone();
        self.fill.change(ino.0, move || {
            apply();
            fill.end_change(ino.0);
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let v = vol_or_reply!(self, reply);
        match v.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let v = vol_or_reply!(self, reply);
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => Kind::File,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => return reply.error(Errno::EINVAL),
        };
        reply_entry(
            reply,
            v.mknod(
                parent.0,
                name.as_bytes(),
                kind,
                mode & !umask,
                rdev,
                caller(req),
            ),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let v = vol_or_reply!(self, reply);
        reply_entry(
            reply,
            v.mkdir(parent.0, name.as_bytes(), mode & !umask, caller(req)),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let v = vol_or_reply!(self, reply);
        reply_empty(reply, v.unlink(parent.0, name.as_bytes()));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let v = vol_or_reply!(self, reply);
        reply_empty(reply, v.rmdir(parent.0, name.as_bytes()));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let v = vol_or_reply!(self, reply);
        reply_entry(
            reply,
            v.symlink(
                parent.0,
                link_name.as_bytes(),
                target.as_os_str().as_bytes(),
                caller(req),
            ),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let v = vol_or_reply!(self, reply);
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else if flags.is_empty() {
            RenameMode::Replace
        } else {
            return reply.error(Errno::EINVAL);
        };
        reply_empty(
            reply,
            v.rename(
                parent.0,
                name.as_bytes(),
                newparent.0,
                newname.as_bytes(),
                mode,
            ),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let v = vol_or_reply!(self, reply);
        reply_entry(reply, v.link(ino.0, newparent.0, newname.as_bytes()));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let v = vol_or_reply!(self, reply);
        if !writable(flags.0) {
            return match v.open_file(ino.0) {
                Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
                Err(e) => reply.error(errno(&e)),
            };
        }
        // No page fill of a file open for writing (until its release).
        let fill = self.fill.clone();
        self.fill.change(ino.0, move || match v.open_file(ino.0) {
            Ok(()) => reply.opened(FileHandle(0), open_flags(flags.0)),
            Err(e) => {
                fill.end_change(ino.0);
                reply.error(errno(&e))
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let v = vol_or_reply!(self, reply);
        let started = std::time::Instant::now();
        let ticket = self.fill.ticket(ino.0);
        match v.read_around(ino.0, offset, size) {
            Ok((d, around)) => {
                crate::metrics::record_read(d.len(), started);
                self.drop_behind.access(ino.0, offset, d.len() as u64);
                reply.data(&d);
                if let (Some(t), Some(a)) = (ticket, around) {
                    self.fill
                        .offer(ino.0, t, offset, offset + d.len() as u64, a);
                }
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let v = vol_or_reply!(self, reply);
        // The kernel sets the flag for writers without CAP_FSETID, but not
        // on every path (direct I/O writes here): a non-root writer counts
        // as one too.
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) || req.uid() != 0 {
            if let Err(e) = v.kill_privileges(ino.0) {
                return reply.error(errno(&e));
            }
        }
        let started = std::time::Instant::now();
        match v.write(ino.0, offset, data) {
            Ok(n) => {
                crate::metrics::record_write(n, started);
                self.drop_behind.access(ino.0, offset, n as u64);
                reply.written(n as u32);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do at every close: the last close (release) starts the
        // flush. ENOSYS tells the kernel to stop sending FLUSH at all, one
        // round trip less per close().
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if writable(flags.0) {
            self.fill.end_change(ino.0);
        }
        self.drop_behind.forget(ino.0);
        let v = vol_or_reply!(self, reply);
        reply_empty(reply, v.release(ino.0));
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let v = vol_or_reply!(self, reply);
        reply_empty(reply, v.fsync(ino.0));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let v = vol_or_reply!(self, reply);
        match v.read_dir(ino.0) {
            Ok(entries) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.dirs.locked().insert(fh, (entries, false));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut dirs = self.dirs.locked();
        let Some((entries, read_before)) = dirs.get_mut(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        if offset == 0 && *read_before {
            // rewinddir(3): names made since opendir must show.
            let v = vol_or_reply!(self, reply);
            match v.read_dir(ino.0) {
                Ok(fresh) => *entries = fresh,
                Err(e) => return reply.error(errno(&e)),
            }
        }
        *read_before = true;
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(*ino),
                (i + 1) as u64,
                file_type(*kind),
                OsStr::from_bytes(name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.locked().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let v = vol_or_reply!(self, reply);
        reply_empty(reply, v.persist());
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let v = vol_or_reply!(self, reply);
        match v.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, 255, s.bsize,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let v = vol_or_reply!(self, reply);
        let flags = XattrFlags {
            create: flags & libc::XATTR_CREATE != 0,
            replace: flags & libc::XATTR_REPLACE != 0,
        };
        reply_empty(
            reply,
            v.setxattr(ino.0, name.as_bytes(), value, flags, caller(req)),
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let v = vol_or_reply!(self, reply);
        match v.getxattr(ino.0, name.as_bytes()) {
            Ok(val) => xattr_reply(reply, size, &val),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let v = vol_or_reply!(self, reply);
        match v.listxattr(ino.0) {
            Ok(val) => xattr_reply(reply, size, &val),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let v = vol_or_reply!(self, reply);
        reply_empty(reply, v.removexattr(ino.0, name.as_bytes()));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let v = vol_or_reply!(self, reply);
        let made = v.mknod(
            parent.0,
            name.as_bytes(),
            Kind::File,
            mode & !umask,
            0,
            caller(req),
        );
        let a = match made {
            Ok(a) => a,
            Err(e) => return reply.error(errno(&e)),
        };
        let ino = a.ino;
        let open = move || match v.open_file(a.ino) {
            Ok(()) => {
                reply.created(
                    &TTL,
                    &to_fuse(&a),
                    Generation(0),
                    FileHandle(0),
                    open_flags(flags),
                );
                true
            }
            Err(e) => {
                reply.error(errno(&e));
                false
            }
        };
        if !writable(flags) {
            open();
            return;
        }
        let fill = self.fill.clone();
        self.fill.change(ino, move || {
            if !open() {
                fill.end_change(ino);
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let v = vol_or_reply!(self, reply);
        reply_empty(reply, v.fallocate(ino.0, offset, length, mode));
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, val: &[u8]) {
    if size == 0 {
        reply.size(val.len() as u32);
    } else if (size as usize) < val.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(val);
    }
}
