//! `datastore import` on a real mount (root and /dev/fuse required): a tree
//! with every kind of entry arrives as `cp -a` would leave it (contents,
//! owners, modes, nanosecond times, xattrs and ACLs, symlinks, hard links,
//! device nodes, FIFOs), survives a remount, and bad requests are refused
//! with a one-line error and the documented exit code.

mod common;

use common::mounted::Fixture;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn sh(cmd: &str, args: &[&str]) {
    let o = Command::new(cmd).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Sets atime and mtime with nanoseconds, on the entry itself.
fn set_times(p: &Path, secs: i64, nanos: i64) {
    let t = [
        libc::timespec {
            tv_sec: secs - 100,
            tv_nsec: nanos / 2,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        },
    ];
    // SAFETY: a valid C string and two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c(p).as_ptr(),
            t.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", p.display());
}

/// Every kind of entry cp -a copies, with owners, modes, times and xattrs.
fn make_source(root: &Path) {
    let sub = root.join("dir/sub");
    std::fs::create_dir_all(&sub).unwrap();
    for (i, len) in [0usize, 1, 4095, 70_000, (1 << 20) + 17, 3 << 20]
        .iter()
        .enumerate()
    {
        std::fs::write(
            sub.join(format!("f{i}")),
            common::random_bytes(i as u64, *len),
        )
        .unwrap();
    }
    // The same content twice: stored once, imported as two files.
    std::fs::write(root.join("dup"), common::random_bytes(4, 70_000)).unwrap();
    std::fs::hard_link(sub.join("f3"), root.join("dir/hard")).unwrap();
    std::os::unix::fs::symlink("dir/sub/f1", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", root.join("dangling")).unwrap();
    // SAFETY: valid C strings; plain mknod calls.
    unsafe {
        assert_eq!(libc::mkfifo(c(&root.join("fifo")).as_ptr(), 0o640), 0);
        let dev = libc::makedev(1, 3);
        assert_eq!(
            libc::mknod(c(&root.join("null")).as_ptr(), libc::S_IFCHR | 0o600, dev),
            0
        );
    }
    let tagged = sub.join("f2");
    // SAFETY: valid C strings and value.
    let rc = unsafe {
        libc::setxattr(
            c(&tagged).as_ptr(),
            c"user.tag".as_ptr(),
            b"blue".as_ptr().cast(),
            4,
            0,
        )
    };
    assert_eq!(rc, 0);
    sh("setfacl", &["-m", "u:1234:r", tagged.to_str().unwrap()]);
    sh("setfacl", &["-d", "-m", "g:99:rx", sub.to_str().unwrap()]);
    std::fs::set_permissions(
        sub.join("f4"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4751),
    )
    .unwrap();
    std::fs::set_permissions(
        root.join("dir"),
        std::os::unix::fs::PermissionsExt::from_mode(0o710),
    )
    .unwrap();
    sh(
        "chown",
        &["-h", "1234:5678", sub.join("f0").to_str().unwrap()],
    );
    sh(
        "chown",
        &["-h", "42:43", root.join("link").to_str().unwrap()],
    );
    sh("chown", &["1000:1000", sub.to_str().unwrap()]);
    // Times last, deepest first (children change their directory's).
    let mut all: Vec<PathBuf> = walk(root).into_keys().map(|p| root.join(p)).collect();
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        set_times(p, 1_600_000_000 + i as i64 * 1000, 123_456_789 + i as i64);
    }
}

/// The file's user.tag xattr.
fn user_tag(p: &Path) -> Option<String> {
    let mut buf = [0u8; 64];
    // SAFETY: valid C strings and a buffer of the length passed.
    let n = unsafe {
        libc::lgetxattr(
            c(p).as_ptr(),
            c"user.tag".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| String::from_utf8_lossy(&buf[..n as usize]).into_owned())
}

/// Relative path -> what cp -a preserves, for every entry under `root`.
fn walk(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let what = if ft.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link -> {}", std::fs::read_link(&p).unwrap().display())
            } else if ft.is_file() {
                format!(
                    "file {} nlink {}",
                    blake3::hash(&std::fs::read(&p).unwrap()),
                    m.nlink()
                )
            } else if ft.is_fifo() {
                "fifo".to_string()
            } else if ft.is_char_device() {
                format!("chardev {}", m.rdev())
            } else {
                "other".to_string()
            };
            let perm = if ft.is_symlink() {
                0
            } else {
                m.mode() & 0o7777
            };
            let acl = if ft.is_symlink() {
                String::new()
            } else {
                let o = Command::new("getfacl")
                    .args(["--absolute-names", "--omit-header", "--numeric"])
                    .arg(&p)
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&o.stdout).replace('\n', ",")
            };
            let user_xattr = if ft.is_file() { user_tag(&p) } else { None };
            let line = format!(
                "{what} mode {perm:o} owner {}:{} mtime {}.{} size {} acl [{acl}] tag {user_xattr:?}",
                m.uid(),
                m.gid(),
                m.mtime(),
                m.mtime_nsec(),
                if ft.is_dir() { 0 } else { m.size() },
            );
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), line);
        }
    }
    out
}

fn assert_same_tree(src: &Path, copy: &Path) {
    let (a, b) = (walk(src), walk(copy));
    for (p, want) in &a {
        assert_eq!(b.get(p), Some(want), "{}", p.display());
    }
    assert_eq!(a.len(), b.len(), "extra entries in the copy");
}

#[test]
fn import_copies_a_tree_with_its_metadata_like_cp_a_and_it_survives_a_remount() {
    let f = Fixture::new(&[]);
    let src = f.dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_source(&src);
    f.mount();
    std::fs::create_dir(f.mnt().join("into")).unwrap();
    // The kernel has looked the name up (and cached that it is absent).
    assert!(!f.mnt().join("into/copy").exists());
    let dest = f.mnt().join("into/copy");
    let out = f.ok(&["import", src.to_str().unwrap(), dest.to_str().unwrap()]);
    assert!(out.contains("Imported 7 files"), "{out}");
    assert!(out.contains("4 other entries, 1 hard links"), "{out}");
    assert_same_tree(&src, &dest);
    // A single file, into the mount's root, by a relative destination.
    let one = src.join("dir/sub/f5");
    let o = Command::new(env!("CARGO_BIN_EXE_datastore"))
        .current_dir(f.mnt())
        .args(["import", one.to_str().unwrap(), "single"])
        .env("HOME", f.dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(f.mnt().join("single")).unwrap() == std::fs::read(&one).unwrap());
    f.unmount();
    f.mount();
    assert_same_tree(&src, &dest);
    f.unmount();
    let scrub = f.ok(&["scrub"]);
    assert!(scrub.contains("Scrubbed"), "{scrub}");
}

#[test]
fn import_refuses_what_it_cannot_do_with_one_line_and_its_exit_code() {
    let f = Fixture::new(&[]);
    let src = f.dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a"), b"abc").unwrap();
    f.mount();
    let mnt = f.mnt();
    let s = src.to_str().unwrap();
    let expect = |args: &[&str], code: i32, says: &str| {
        let o = f.run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    };
    std::fs::create_dir(mnt.join("taken")).unwrap();
    let taken = mnt.join("taken");
    expect(&["import", s, taken.to_str().unwrap()], 2, "already exists");
    let outside = f.dir.path().join("elsewhere");
    expect(
        &["import", s, outside.to_str().unwrap()],
        2,
        "not inside a datastore mount",
    );
    let missing = f.dir.path().join("missing");
    let dest = mnt.join("new");
    expect(
        &["import", missing.to_str().unwrap(), dest.to_str().unwrap()],
        2,
        "cannot read",
    );
    std::fs::write(mnt.join("file"), b"x").unwrap();
    let nested = mnt.join("file/new");
    expect(
        &["import", s, nested.to_str().unwrap()],
        2,
        "is not a directory",
    );
    let inner = mnt.join("file");
    expect(
        &["import", inner.to_str().unwrap(), dest.to_str().unwrap()],
        2,
        "inside this store's mount",
    );
    f.ok(&["lock"]);
    expect(&["import", s, dest.to_str().unwrap()], 5, "locked");
    f.ok(&["unlock", "--password-file", f.pw().to_str().unwrap()]);
    // Nothing was created by the refused requests.
    let mut names: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["file", "taken"]);
    assert_eq!(std::fs::read_dir(&taken).unwrap().count(), 0);
}

/// Source and destination names that are not UTF-8 import like any other
/// (the request to the daemon used to carry paths lossily: the source
/// became `src-\u{FFFD}`, which does not exist).
#[test]
fn import_takes_paths_that_are_not_utf8() {
    let f = Fixture::new(&[]);
    let src = f.dir.path().join(std::ffi::OsStr::from_bytes(b"src-\xff"));
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("file"), b"content").unwrap();
    f.mount();
    let dest = f.mnt().join(std::ffi::OsStr::from_bytes(b"copy-\xfe"));
    let o = Command::new(env!("CARGO_BIN_EXE_datastore"))
        .arg("import")
        .arg(&src)
        .arg(&dest)
        .env("DATASTORE_STORE", f.store())
        .env("HOME", f.dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(dest.join("file")).unwrap(), b"content");
    f.unmount();
}
