//! POSIX behaviour on a real mount beyond pjdfstest: files past 4 GiB with
//! holes that cost nothing, 100,000 entries in one directory, mmap through
//! the page cache, O_APPEND, readdir that stays correct while other
//! entries are created and removed, `cp -a` of modes and ACLs, and what a
//! write takes away (set-ID bits, file capabilities).

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Mounted {
    dir: tempfile::TempDir,
}

impl Mounted {
    fn new() -> Self {
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: these tests need FUSE"
        );
        let m = Mounted {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(m.mnt()).unwrap();
        std::fs::write(m.dir.path().join("pw"), "posix test password\n").unwrap();
        m.ds(&[
            "init",
            "--password-file",
            m.dir.path().join("pw").to_str().unwrap(),
        ]);
        m.ds(&[
            "mount",
            m.mnt().to_str().unwrap(),
            "--password-file",
            m.dir.path().join("pw").to_str().unwrap(),
        ]);
        m
    }
    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
    fn ds(&self, args: &[&str]) {
        common::datastore_ok(self.dir.path(), &self.dir.path().join("store"), args);
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_datastore"))
            .args(["unmount", self.mnt().to_str().unwrap()])
            .output();
    }
}

#[test]
fn file_past_4_gib_with_a_hole() {
    let m = Mounted::new();
    let p = m.mnt().join("big");
    let data = common::random_bytes(5, 1 << 20);
    let at = 5u64 << 30;
    {
        let f = std::fs::File::create(&p).unwrap();
        f.write_all_at(&data, at).unwrap();
        f.sync_all().unwrap();
    }
    let f = std::fs::File::open(&p).unwrap();
    let meta = f.metadata().unwrap();
    assert_eq!(meta.len(), at + data.len() as u64);
    assert!(
        meta.blocks() * 512 < 4 << 20,
        "the 5 GiB hole costs nothing: {} blocks",
        meta.blocks()
    );
    let mut back = vec![0u8; data.len()];
    f.read_exact_at(&mut back, at).unwrap();
    assert!(back == data);
    let mut hole = vec![1u8; 4096];
    f.read_exact_at(&mut hole, 3 << 30).unwrap();
    assert!(hole.iter().all(|&b| b == 0));
}

#[test]
fn hundred_thousand_entries_in_one_directory() {
    let m = Mounted::new();
    let d = m.mnt().join("many");
    std::fs::create_dir(&d).unwrap();
    for i in 0..100_000 {
        std::fs::File::create(d.join(format!("entry-{i:06}"))).unwrap();
    }
    let mut names: Vec<String> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 100_000);
    assert_eq!(names[0], "entry-000000");
    assert_eq!(names[99_999], "entry-099999");
    assert!(d.join("entry-054321").exists());
}

#[test]
fn mmap_writes_reach_the_file() {
    let m = Mounted::new();
    let p = m.mnt().join("mapped");
    let len = 1 << 20;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.set_len(len as u64).unwrap();
    use std::os::unix::io::AsRawFd;
    // SAFETY: mapping a file we own, len bytes, unmapped below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        ptr,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    let pattern = common::random_bytes(77, len);
    // SAFETY: ptr maps len writable bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(pattern.as_ptr(), ptr as *mut u8, len);
        assert_eq!(libc::msync(ptr, len, libc::MS_SYNC), 0);
        libc::munmap(ptr, len);
    }
    f.sync_all().unwrap();
    drop(f);
    assert!(std::fs::read(&p).unwrap() == pattern);
}

#[test]
fn o_append_appends() {
    let m = Mounted::new();
    let p = m.mnt().join("log");
    for line in ["one\n", "two\n", "three\n"] {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&p)
            .unwrap();
        f.write_all(line.as_bytes()).unwrap();
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(0)
        .open(&p)
        .unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(b"four\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        "one\ntwo\nthree\nfour\n"
    );
}

#[test]
fn readdir_stays_correct_under_concurrent_create_and_unlink() {
    let m = Mounted::new();
    let d = m.mnt().join("busy");
    std::fs::create_dir(&d).unwrap();
    for i in 0..200 {
        std::fs::File::create(d.join(format!("keep{i}"))).unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (d, stop) = (d.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let p = d.join(format!("tmp{}", i % 50));
                let _ = std::fs::File::create(&p);
                let _ = std::fs::remove_file(d.join(format!("tmp{}", (i + 25) % 50)));
                i += 1;
            }
        })
    };
    for _ in 0..50 {
        let names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let keep: Vec<&String> = names.iter().filter(|n| n.starts_with("keep")).collect();
        let unique: std::collections::HashSet<&String> = names.iter().collect();
        assert_eq!(keep.len(), 200, "a stable entry was missed or repeated");
        assert_eq!(unique.len(), names.len(), "an entry was listed twice");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `args` as the unprivileged `tests` user (scripts/test.sh creates it).
fn as_tests_user(args: &[&str]) -> String {
    run("runuser", &[&["-u", "tests", "--"][..], args].concat())
}

#[test]
fn cp_a_keeps_modes_and_acls() {
    // cp -a creates each file 0600 and then sets its ACL: the ACL must set
    // the mode (a plain xattr would leave every copy private, with a '+').
    let m = Mounted::new();
    let src = tempfile::tempdir_in("/var/tmp").unwrap();
    let modes = [("public", 0o644), ("script", 0o755), ("private", 0o600)];
    for (name, mode) in modes {
        let p = src.path().join(name);
        std::fs::write(&p, name).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let shared = src.path().join("shared");
    std::fs::write(&shared, "shared").unwrap();
    run("setfacl", &["-m", "u:1234:r", shared.to_str().unwrap()]);
    let dst = m.mnt().join("copy");
    run(
        "cp",
        &["-a", src.path().to_str().unwrap(), dst.to_str().unwrap()],
    );
    for (name, mode) in modes {
        let p = dst.join(name);
        assert_eq!(
            std::fs::metadata(&p).unwrap().mode() & 0o7777,
            mode,
            "{name}"
        );
        let ls = run("ls", &["-l", p.to_str().unwrap()]);
        assert!(!ls.split(' ').next().unwrap().ends_with('+'), "{ls}");
    }
    let shared = dst.join("shared");
    let acl = run("getfacl", &["-cn", shared.to_str().unwrap()]);
    assert!(acl.contains("user:1234:r--"), "{acl}");
    assert_eq!(std::fs::metadata(&shared).unwrap().mode() & 0o777, 0o644);
    // chmod moves the mask (the group bits of an extended ACL).
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let acl = run("getfacl", &["-cn", shared.to_str().unwrap()]);
    assert!(acl.contains("mask::---"), "{acl}");
    assert!(acl.contains("user:1234:r--"), "{acl}");
}

#[test]
fn an_unprivileged_write_or_truncate_clears_set_id_bits() {
    // The mount handles this itself (FUSE_HANDLE_KILLPRIV_V2); the `tests`
    // user is created by scripts/test.sh.
    let m = Mounted::new();
    for (name, how) in [("written", "printf x >> "), ("truncated", "truncate -s 1 ")] {
        let p = m.mnt().join(name);
        std::fs::write(&p, "data").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o6777)).unwrap();
        as_tests_user(&["sh", "-c", &format!("{how}{}", p.display())]);
        let mode = std::fs::metadata(&p).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o777, "{name}: mode {mode:o}");
    }
    // Root keeps them (CAP_FSETID).
    let p = m.mnt().join("by-root");
    std::fs::write(&p, "data").unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(b"x")
        .unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o4755);
}

/// A file capability (`setcap cap_net_raw+ep`: revision 2, effective).
fn set_capability(p: &Path) {
    let mut value = Vec::new();
    const CAP_NET_RAW: u32 = 13;
    for word in [0x0200_0001u32, 1 << CAP_NET_RAW, 0, 0, 0] {
        value.extend_from_slice(&word.to_le_bytes());
    }
    common::set_xattr(p, c"security.capability", &value);
}

fn has_capability(p: &Path) -> bool {
    common::has_xattr(p, c"security.capability")
}

#[test]
fn writing_or_truncating_drops_file_capabilities_even_as_root() {
    // As on a local file system: a changed program loses its capabilities,
    // whoever changed it. Write-only handles bypass the page cache, so the
    // volume does this itself rather than the kernel.
    let m = Mounted::new();
    let write_only = |p: &Path| {
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.write_all_at(b"x", 1).unwrap();
    };
    let read_write = |p: &Path| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap();
        f.write_all_at(b"x", 1).unwrap();
    };
    let truncate = |p: &Path| {
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.set_len(1).unwrap();
    };
    type Change<'a> = (&'a str, &'a dyn Fn(&Path));
    let changes: [Change; 3] = [
        ("write-only", &write_only),
        ("read-write", &read_write),
        ("truncate", &truncate),
    ];
    for (name, change) in changes {
        let p = m.mnt().join(name);
        std::fs::write(&p, "data").unwrap();
        set_capability(&p);
        assert!(has_capability(&p), "{name}: the capability was not set");
        change(&p);
        assert!(!has_capability(&p), "{name}: the capability survived");
    }
    // Changing only the times or the mode keeps it.
    let p = m.mnt().join("kept");
    std::fs::write(&p, "data").unwrap();
    set_capability(&p);
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::File::open(&p)
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH)
        .unwrap();
    assert!(
        has_capability(&p),
        "a chmod or utimes dropped the capability"
    );
}

/// The kernel's rules, checked against gocryptfs (ext4 underneath) on the
/// same machine: chown by root keeps set-group-ID without group-execute
/// and drops set-user-ID; an O_DIRECT write by a non-root user drops both.
#[test]
fn chown_and_direct_writes_treat_set_id_bits_as_the_kernel_does() {
    let m = Mounted::new();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    let chown = |p: &Path| run("chown", &["0:1001", p.to_str().unwrap()]);
    for (before, after) in [(0o2644, 0o2644), (0o2754, 0o0754), (0o6644, 0o2644)] {
        let p = m.mnt().join(format!("chown-{before:o}"));
        std::fs::write(&p, "data").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(before)).unwrap();
        chown(&p);
        assert_eq!(mode(&p), after, "chown of mode {before:o}");
    }
    let p = m.mnt().join("direct");
    std::fs::write(&p, vec![0u8; 8192]).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o6777)).unwrap();
    as_tests_user(&[
        "dd",
        "if=/dev/zero",
        &format!("of={}", p.display()),
        "bs=4096",
        "count=1",
        "oflag=direct",
        "conv=notrunc",
        "status=none",
    ]);
    assert_eq!(mode(&p), 0o777);
}

/// rewinddir(3) on a handle opened before names were created shows them.
#[test]
fn rewinddir_shows_names_made_after_opendir() {
    let m = Mounted::new();
    let d = m.mnt().join("dir");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("first"), "").unwrap();
    let c = std::ffi::CString::new(d.to_str().unwrap()).unwrap();
    let names = |dir: *mut libc::DIR| {
        let mut out = Vec::new();
        loop {
            // SAFETY: `dir` is an open DIR*; readdir returns NULL at the end.
            let e = unsafe { libc::readdir(dir) };
            if e.is_null() {
                break out;
            }
            // SAFETY: d_name is NUL-terminated.
            let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
            out.push(name.to_string_lossy().into_owned());
        }
    };
    // SAFETY: opendir on a valid path; closed below.
    let dir = unsafe { libc::opendir(c.as_ptr()) };
    assert!(!dir.is_null());
    assert!(names(dir).contains(&"first".to_string()));
    for i in 0..100 {
        std::fs::write(d.join(format!("later{i}")), "").unwrap();
    }
    // SAFETY: `dir` is open.
    unsafe { libc::rewinddir(dir) };
    let again = names(dir);
    // SAFETY: `dir` is open; closed once.
    unsafe { libc::closedir(dir) };
    let later = again.iter().filter(|n| n.starts_with("later")).count();
    assert_eq!(later, 100, "{again:?}");
}

/// The mount says relatime: a read after a write (or of a file whose
/// access time is older than its change) moves the access time.
#[test]
fn reads_move_the_access_time_as_relatime_says() {
    let m = Mounted::new();
    let p = m.mnt().join("file");
    std::fs::write(&p, "content").unwrap();
    run("touch", &["-a", "-d", "2001-01-01", p.to_str().unwrap()]);
    let before = std::fs::metadata(&p).unwrap().atime();
    assert!(before < 1_000_000_000 + 50_000_000, "{before}");
    let _ = std::fs::read(&p).unwrap();
    let after = std::fs::metadata(&p).unwrap().atime();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - after).abs() < 60, "atime {after}, now {now}");
    // A second read right after does not move it again (no write per read).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let _ = std::fs::read(&p).unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().atime(), after);
}
