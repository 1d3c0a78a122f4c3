//! Small file-system helpers shared by the layers: atomic replace,
//! directory fsync, giving a file's all-zero pages back, and refusing
//! files and directories another local user owns or can write.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// fsyncs a directory so that renames and creations in it are durable.
/// statvfs(3) of the file system holding `path`.
pub fn statvfs(path: &Path) -> std::io::Result<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: statvfs is plain old data; all zeros is a valid value.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and an out-pointer to that struct.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(s)
}

/// flock(2) of `file` without waiting, exclusive or shared: false when
/// another open file description holds a conflicting lock (or flock fails).
/// Held until every descriptor of that open file is closed.
pub fn try_flock(file: &File, exclusive: bool) -> bool {
    use std::os::unix::io::AsRawFd;
    let how = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: flock on a valid descriptor.
    unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) == 0 }
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes`: write a temp file, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Page size `punch_zero_pages` works in.
const PAGE: usize = 4096;

/// Turns every run of all-zero 4 KiB pages of a file nobody else is
/// writing into a hole (reads still return zeros, so the content is the
/// same) and fsyncs it. Returns the bytes given back. A file system that
/// cannot punch holes gives back nothing; that is not an error.
pub fn punch_zero_pages(path: &Path) -> std::io::Result<u64> {
    use std::io::Read;
    use std::os::unix::io::AsRawFd;
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let mut buf = vec![0u8; 256 * PAGE];
    let (mut pos, mut run_start, mut punched) = (0u64, None::<u64>, 0u64);
    let punch = |from: u64, to: u64| -> std::io::Result<bool> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: fallocate on an open descriptor with in-range offsets.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, from as i64, (to - from) as i64) };
        if rc == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(false),
            _ => Err(e),
        }
    };
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match (&f).read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        for page in buf[..filled].chunks(PAGE) {
            let zero = page.len() == PAGE && page.iter().all(|b| *b == 0);
            match (zero, run_start) {
                (true, None) => run_start = Some(pos),
                (false, Some(start)) => {
                    if !punch(start, pos)? {
                        return Ok(0);
                    }
                    punched += pos - start;
                    run_start = None;
                }
                _ => {}
            }
            pos += page.len() as u64;
        }
        if filled < buf.len() {
            break;
        }
    }
    if let Some(start) = run_start {
        if !punch(start, pos)? {
            return Ok(0);
        }
        punched += pos - start;
    }
    f.sync_all()?;
    Ok(punched)
}

/// Refuses what another local user could have made or could change: the
/// file or directory must be owned by root or by this process's user, and
/// writable by nobody else (no group or other write bit). Messages name the
/// path and what is wrong.
pub fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), NotPrivate> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let path = path.to_path_buf();
    if meta.uid() != 0 && meta.uid() != me {
        let owner = meta.uid();
        return Err(NotPrivate::Owner { path, owner, me });
    }
    if meta.mode() & 0o022 != 0 {
        let mode = meta.mode() & 0o7777;
        return Err(NotPrivate::Writable { path, mode });
    }
    Ok(())
}

/// A file or directory another local user made or could change.
#[derive(Debug, thiserror::Error)]
pub enum NotPrivate {
    #[error("{} is owned by uid {owner}, not by root or by you (uid {me}): refused", path.display())]
    Owner {
        path: std::path::PathBuf,
        owner: u32,
        me: u32,
    },
    #[error("{} is writable by group or others (mode {mode:o}): refused (chmod go-w it)", path.display())]
    Writable { path: std::path::PathBuf, mode: u32 },
}

/// Opens `path` for appending (created 0600), refusing a symlink and a
/// file another user owns or could write.
pub fn open_private_log(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::other(format!("{} is a symbolic link: refused", path.display()))
            } else {
                e
            }
        })?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file: refused",
            path.display()
        )));
    }
    check_private(path, &meta).map_err(std::io::Error::other)?;
    Ok(f)
}

/// (pid, uid) of the process at the other end of a Unix socket.
pub fn peer_credentials(s: &std::os::unix::net::UnixStream) -> Option<(i32, u32)> {
    use std::os::unix::io::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some((cred.pid, cred.uid))
}

/// Lowers the calling thread's CPU priority to `nice` and, with `idle_io`,
/// puts its disk I/O in the idle class (Linux applies both per thread).
/// Best effort: a refusal leaves the thread as it was.
pub fn lower_thread_priority(nice: i32, idle_io: bool) {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: a plain syscall on our own thread id; no memory is passed.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if idle_io {
        // SAFETY: as above (0 = the calling thread).
        unsafe {
            libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                0 as libc::c_long,
                IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_pages_become_holes_and_the_content_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut content = vec![0u8; 300 * PAGE + 100];
        content[..PAGE].fill(7); // data, then 3 zero pages
        content[4 * PAGE + 5] = 1; // a page with one non-zero byte
        content[200 * PAGE..201 * PAGE].fill(9); // across the read buffer's end
        content[300 * PAGE + 3] = 2; // a short last page is never punched
        std::fs::write(&path, &content).unwrap();
        let before = std::fs::metadata(&path).unwrap().blocks() * 512;
        let punched = punch_zero_pages(&path).unwrap();
        assert_eq!(punched, (3 + 195 + 99) * PAGE as u64);
        assert_eq!(std::fs::read(&path).unwrap(), content);
        let after = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(after + punched <= before, "{before} -> {after}");
        assert_eq!(
            punch_zero_pages(&path).unwrap(),
            punched,
            "holes read as zeros"
        );
    }
}
