//! Bulk import: copies a local directory tree (or one file) into the
//! volume the way `cp -a` would, but through the volume's own calls
//! instead of FUSE round trips (what `datastore import` runs inside the
//! daemon).
//!
//! Owns: the walk (a few threads taking directories from a shared queue),
//! copying of content, ownership, mode, times and extended attributes
//! (ACLs included), symlinks, device nodes and FIFOs, and hard links among
//! the imported files.
//!
//! Invariants: the top entry must not exist (nothing already there is
//! touched); a failed entry is reported and the walk goes on with the
//! others (like cp); directory times are set last, after every child is
//! in place; the import ends with a durable commit, so what it reports as
//! imported survives a crash.

use std::collections::{HashMap, VecDeque};
use std::ffi::{CString, OsStr};
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use super::error::{VResult, VolError};
use super::inode::{Kind, Time};
use super::{lock, Caller, SetAttr, Volume, XattrFlags};

/// Content is read and written in pieces of this size.
const PIECE: usize = 1 << 20;
/// Failures kept for the report (all are counted).
const KEPT_ERRORS: usize = 5;

const ROOT_CALLER: Caller = Caller { uid: 0, gid: 0 };

/// What an import did.
#[derive(Debug, Default, Clone)]
pub struct ImportReport {
    pub files: u64,
    pub dirs: u64,
    /// Symlinks, device nodes, FIFOs, sockets.
    pub others: u64,
    /// Extra names of files imported once (hard links).
    pub links: u64,
    pub bytes: u64,
    pub failed: u64,
    /// The first few failures: "path: error".
    pub errors: Vec<String>,
}

/// Shared by the walking threads.
struct Walk {
    queue: Mutex<Queue>,
    ready: Condvar,
    /// Source (device, inode) of multiply linked files -> their inode here.
    linked: Mutex<HashMap<(u64, u64), u64>>,
    /// Directories imported, with their source (xattrs and times last).
    dirs: Mutex<Vec<(u64, PathBuf, Metadata)>>,
    report: Mutex<ImportReport>,
}

#[derive(Default)]
struct Queue {
    dirs: VecDeque<(PathBuf, u64)>,
    /// Directories queued or being read.
    pending: usize,
}

impl Volume {
    /// Imports `src` as `name` in directory `parent` with `threads`
    /// walking threads. Fails when `src` cannot be read or `name` exists
    /// (nothing is created), or when the top entry itself fails; otherwise
    /// reports what was imported and what failed below it.
    pub fn import(
        &self,
        src: &Path,
        parent: u64,
        name: &[u8],
        threads: usize,
    ) -> VResult<ImportReport> {
        let meta = std::fs::symlink_metadata(src).map_err(io_error)?;
        if self.lookup(parent, name).is_ok() {
            return Err(VolError::new(libc::EEXIST));
        }
        let walk = Walk {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            linked: Mutex::new(HashMap::new()),
            dirs: Mutex::new(Vec::new()),
            report: Mutex::new(ImportReport::default()),
        };
        self.import_entry(&walk, src, parent, name, &meta)?;
        std::thread::scope(|s| {
            for _ in 0..threads.max(1) {
                s.spawn(|| self.walk_dirs(&walk));
            }
        });
        // Directory xattrs and times last, as cp does: a default ACL set
        // first would be inherited by the imported children, and creating
        // them changed the times.
        let dirs = std::mem::take(&mut *lock(&walk.dirs));
        for (ino, path, meta) in dirs {
            let r = self
                .copy_xattrs(ino, &path, true)
                .and_then(|()| self.set_times(ino, &meta));
            if let Err(e) = r {
                walk.failed(&path, &e);
            }
        }
        self.persist()?;
        let report = lock(&walk.report).clone();
        Ok(report)
    }

    /// One walking thread: reads queued directories until none is left.
    fn walk_dirs(&self, walk: &Walk) {
        loop {
            let (dir, ino) = {
                let mut q = lock(&walk.queue);
                loop {
                    if let Some(job) = q.dirs.pop_front() {
                        break job;
                    }
                    if q.pending == 0 {
                        return;
                    }
                    q = walk.ready.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            };
            match std::fs::read_dir(&dir) {
                Ok(entries) => {
                    for entry in entries {
                        match entry {
                            Ok(entry) => {
                                let path = entry.path();
                                let name = entry.file_name();
                                let r = std::fs::symlink_metadata(&path)
                                    .map_err(io_error)
                                    .and_then(|meta| {
                                        self.import_entry(walk, &path, ino, name.as_bytes(), &meta)
                                    });
                                if let Err(e) = r {
                                    walk.failed(&path, &e);
                                }
                            }
                            Err(e) => walk.failed(&dir, &io_error(e)),
                        }
                    }
                }
                Err(e) => walk.failed(&dir, &io_error(e)),
            }
            let mut q = lock(&walk.queue);
            q.pending -= 1;
            if q.pending == 0 {
                walk.ready.notify_all();
            }
        }
    }

    /// Creates one entry (a directory is queued for the walk).
    fn import_entry(
        &self,
        walk: &Walk,
        path: &Path,
        parent: u64,
        name: &[u8],
        meta: &Metadata,
    ) -> VResult<()> {
        let ft = meta.file_type();
        let mode = meta.mode() & 0o7777;
        if ft.is_dir() {
            let a = self.mkdir(parent, name, mode, ROOT_CALLER)?;
            self.copy_owner_and_mode(a.ino, meta)?;
            lock(&walk.dirs).push((a.ino, path.to_path_buf(), meta.clone()));
            let mut q = lock(&walk.queue);
            q.dirs.push_back((path.to_path_buf(), a.ino));
            q.pending += 1;
            walk.ready.notify_one();
            lock(&walk.report).dirs += 1;
            return Ok(());
        }
        if ft.is_file() {
            let source = (meta.dev(), meta.ino());
            let ino = if meta.nlink() > 1 {
                // The map stays locked while the first name is created, so
                // a second name of the same file waits for its inode.
                let mut linked = lock(&walk.linked);
                if let Some(&ino) = linked.get(&source) {
                    drop(linked);
                    self.link(ino, parent, name)?;
                    lock(&walk.report).links += 1;
                    return Ok(());
                }
                let a = self.mknod(parent, name, Kind::File, mode, 0, ROOT_CALLER)?;
                linked.insert(source, a.ino);
                a.ino
            } else {
                self.mknod(parent, name, Kind::File, mode, 0, ROOT_CALLER)?
                    .ino
            };
            let bytes = self.copy_content(ino, path)?;
            self.copy_attributes(ino, path, meta)?;
            self.set_times(ino, meta)?;
            let mut r = lock(&walk.report);
            r.files += 1;
            r.bytes += bytes;
            return Ok(());
        }
        let ino = if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(io_error)?;
            let a = self.symlink(parent, name, target.as_os_str().as_bytes(), ROOT_CALLER)?;
            a.ino
        } else {
            let kind = if ft.is_fifo() {
                Kind::Fifo
            } else if ft.is_socket() {
                Kind::Socket
            } else if ft.is_char_device() {
                Kind::CharDev
            } else if ft.is_block_device() {
                Kind::BlockDev
            } else {
                return Err(VolError::new(libc::EINVAL));
            };
            let a = self.mknod(parent, name, kind, mode, meta.rdev() as u32, ROOT_CALLER)?;
            a.ino
        };
        self.copy_attributes(ino, path, meta)?;
        self.set_times(ino, meta)?;
        lock(&walk.report).others += 1;
        Ok(())
    }

    /// Copies a regular file's bytes; returns how many. They are chunked
    /// here, on the walking thread, not left to the flusher.
    fn copy_content(&self, ino: u64, path: &Path) -> VResult<u64> {
        let mut f = File::open(path).map_err(io_error)?;
        self.open_file(ino)?;
        let copied = (|| -> VResult<u64> {
            let mut buf = vec![0u8; PIECE];
            let mut off = 0u64;
            loop {
                let n = read_full(&mut f, &mut buf).map_err(io_error)?;
                if n == 0 {
                    break;
                }
                self.write(ino, off, &buf[..n])?;
                off += n as u64;
            }
            self.flush_inode(ino)?;
            Ok(off)
        })();
        let released = self.release(ino);
        let n = copied?;
        released?;
        Ok(n)
    }

    /// Owner, mode and extended attributes of the source.
    fn copy_attributes(&self, ino: u64, path: &Path, meta: &Metadata) -> VResult<()> {
        self.copy_owner_and_mode(ino, meta)?;
        self.copy_xattrs(ino, path, false)
    }

    /// Owner, then mode (chown clears set-ID bits); a symlink has no mode.
    fn copy_owner_and_mode(&self, ino: u64, meta: &Metadata) -> VResult<()> {
        let set = SetAttr {
            uid: Some(meta.uid()),
            gid: Some(meta.gid()),
            ..Default::default()
        };
        self.setattr(ino, &set, ROOT_CALLER)?;
        if !meta.file_type().is_symlink() {
            let set = SetAttr {
                mode: Some(meta.mode() & 0o7777),
                ..Default::default()
            };
            self.setattr(ino, &set, ROOT_CALLER)?;
        }
        Ok(())
    }

    fn copy_xattrs(&self, ino: u64, path: &Path, dir: bool) -> VResult<()> {
        for (name, value) in xattrs_of(path).map_err(io_error)? {
            // A default ACL only exists on directories.
            if !dir && name == b"system.posix_acl_default" {
                continue;
            }
            self.setxattr(ino, &name, &value, XattrFlags::default(), ROOT_CALLER)?;
        }
        Ok(())
    }

    fn set_times(&self, ino: u64, meta: &Metadata) -> VResult<()> {
        let t = |secs: i64, nanos: i64| {
            Time::from_system(
                std::time::UNIX_EPOCH
                    + std::time::Duration::new(
                        secs.max(0) as u64,
                        nanos.clamp(0, 999_999_999) as u32,
                    ),
            )
        };
        let set = SetAttr {
            atime: Some(Some(t(meta.atime(), meta.atime_nsec()))),
            mtime: Some(Some(t(meta.mtime(), meta.mtime_nsec()))),
            ..Default::default()
        };
        self.setattr(ino, &set, ROOT_CALLER).map(|_| ())
    }
}

impl Walk {
    fn failed(&self, path: &Path, e: &VolError) {
        let mut r = lock(&self.report);
        r.failed += 1;
        if r.errors.len() < KEPT_ERRORS {
            r.errors.push(format!("{}: {e}", path.display()));
        }
    }
}

/// A failure reading the source, as its errno (the report names the path).
fn io_error(e: std::io::Error) -> VolError {
    VolError::new(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Reads until `buf` is full or the file ends.
fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The extended attributes of `path` itself (not a symlink's target).
fn xattrs_of(path: &Path) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut names = vec![0u8; 4096];
    let len = loop {
        // SAFETY: a valid C string and a buffer of the length passed.
        let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            break n as usize;
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => names.resize(names.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name)?;
        let mut value = vec![0u8; 4096];
        loop {
            // SAFETY: valid C strings and a buffer of the length passed.
            let n = unsafe {
                libc::lgetxattr(
                    c.as_ptr(),
                    cname.as_ptr(),
                    value.as_mut_ptr().cast(),
                    value.len(),
                )
            };
            if n >= 0 {
                value.truncate(n as usize);
                out.push((OsStr::from_bytes(name).as_bytes().to_vec(), value));
                break;
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) => value.resize(value.len() * 4, 0),
                // Gone since the listing: nothing to copy.
                Some(libc::ENODATA) => break,
                _ => return Err(e),
            }
        }
    }
    Ok(out)
}
