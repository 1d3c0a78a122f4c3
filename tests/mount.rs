//! Real mounts (root and /dev/fuse required; these tests fail, never skip,
//! without them): a tree copied in reads back identical across a remount;
//! no plaintext marker reaches the store; locked mounts refuse access until
//! unlocked; a second mount of a store is refused; kill -9 of the daemon
//! loses nothing that was fsync'ed; a full disk fails writes, not the
//! mount.

mod common;

use common::mounted::{diff, Fixture};

use std::path::Path;
use std::process::Command;

/// A tree with nested directories, small and large files, a symlink and
/// a hard link.
fn make_tree(root: &Path) {
    for d in 0..8 {
        let dir = root.join(format!("dir{d}")).join("sub");
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..25 {
            let len = [0, 1, 15, 4096, 70_000, 300_000][f % 6] + d * 13;
            std::fs::write(
                dir.join(format!("f{f}.bin")),
                common::random_bytes((d * 100 + f) as u64, len),
            )
            .unwrap();
        }
    }
    std::fs::write(root.join("big"), common::random_bytes(7, 40 << 20)).unwrap();
    std::os::unix::fs::symlink("dir0/sub/f1.bin", root.join("link")).unwrap();
    std::fs::hard_link(root.join("dir1/sub/f2.bin"), root.join("hard")).unwrap();
}

#[test]
fn tree_copy_reads_back_identical_across_remount() {
    let f = Fixture::new(&[]);
    let src = f.dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src);
    f.mount();
    let o = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(f.mnt().join("copy"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    diff(&src, &f.mnt().join("copy"));
    let meta = std::fs::symlink_metadata(f.mnt().join("copy/hard")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.nlink(), 2);
    f.unmount();
    assert!(!f.is_mounted());
    f.mount();
    diff(&src, &f.mnt().join("copy"));
    let status: serde_json::Value = serde_json::from_str(&f.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["locked"], false);
    assert!(status["logical_bytes"].as_u64().unwrap() >= 40 << 20);
    f.unmount();
    let scrub = f.ok(&["scrub"]);
    assert!(scrub.contains("Scrubbed"), "{scrub}");
}

#[test]
fn no_marker_reaches_the_store() {
    let f = Fixture::new(&[]);
    f.mount();
    let marker = hex::encode(common::random_bytes(0x5eed, 12));
    let dir = f.mnt().join(format!("d-{marker}"));
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join(format!("f-{marker}"));
    std::fs::write(&file, marker.repeat(500)).unwrap();
    std::os::unix::fs::symlink(&marker, f.mnt().join("link")).unwrap();
    common::set_xattr(&file, c"user.tag", marker.as_bytes());
    f.unmount();
    let hits = common::find_bytes(&f.store(), &marker.as_bytes()[..16]);
    assert!(hits.is_empty(), "marker at rest: {hits:?}");
}

#[test]
fn locked_mount_refuses_until_unlocked() {
    let f = Fixture::new(&[]);
    f.mount();
    std::fs::write(f.mnt().join("secret.txt"), b"contents").unwrap();
    f.unmount();
    f.mount_locked();
    let err = std::fs::read(f.mnt().join("secret.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    assert_eq!(
        std::fs::read_dir(f.mnt()).unwrap_err().raw_os_error(),
        Some(libc::EACCES)
    );
    assert_eq!(
        std::fs::write(f.mnt().join("new"), b"x")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EACCES)
    );
    let status: serde_json::Value = serde_json::from_str(&f.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["locked"], true, "status works while locked");
    let show: serde_json::Value =
        serde_json::from_str(&f.ok(&["encryption", "show", "--json"])).unwrap();
    assert!(
        show["lock_state"]
            .as_str()
            .unwrap()
            .contains("mounted, locked"),
        "{show}"
    );
    let wrong = f.dir.path().join("wrong");
    std::fs::write(&wrong, "not the password\n").unwrap();
    let o = f.run(&["unlock", "--password-file", wrong.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        std::fs::read(f.mnt().join("secret.txt"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EACCES)
    );
    f.ok(&["unlock", "--password-file", f.pw().to_str().unwrap()]);
    assert_eq!(
        std::fs::read(f.mnt().join("secret.txt")).unwrap(),
        b"contents"
    );
    f.ok(&["lock"]);
    assert_eq!(
        std::fs::read(f.mnt().join("secret.txt"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EACCES)
    );
}

#[test]
fn second_mount_of_a_store_is_refused() {
    let f = Fixture::new(&[]);
    f.mount();
    let other = f.dir.path().join("mnt2");
    std::fs::create_dir(&other).unwrap();
    let o = f.run(&[
        "mount",
        other.to_str().unwrap(),
        "--password-file",
        f.pw().to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = f.run(&["mount", f.dir.path().join("pw").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "a file is not a mount point");
}

#[test]
fn kill_9_keeps_every_fsynced_file() {
    let f = Fixture::new(&[]);
    f.mount();
    let mnt = f.mnt();
    // Files written and fsync'ed, then more writes and renames in flight.
    let mut synced = Vec::new();
    for i in 0..30u64 {
        let p = mnt.join(format!("synced{i}"));
        let data = common::random_bytes(i, 10_000 + (i as usize) * 37_000);
        let mut file = std::fs::File::create(&p).unwrap();
        std::io::Write::write_all(&mut file, &data).unwrap();
        file.sync_all().unwrap();
        synced.push((p, data));
    }
    let writer = {
        let mnt = mnt.clone();
        std::thread::spawn(move || {
            for i in 0..3000u64 {
                let p = mnt.join(format!("busy{i}"));
                if std::fs::write(&p, common::random_bytes(1000 + i, 200_000)).is_err() {
                    break;
                }
                let _ = std::fs::rename(&p, mnt.join(format!("renamed{i}")));
                // Overwrites and unlinks drop chunk references while
                // commits run: none may be dropped before the commit that
                // stops referencing it.
                let _ = std::fs::write(
                    mnt.join("overwritten"),
                    common::random_bytes(5000 + i, 100_000 + (i as usize % 7) * 50_000),
                );
                if i % 3 == 0 && i > 0 {
                    let _ = std::fs::remove_file(mnt.join(format!("renamed{}", i - 1)));
                }
            }
        })
    };
    // Past two group commits (every 500 ms), with the writer still busy.
    std::thread::sleep(std::time::Duration::from_millis(1300));
    let pid = Command::new("pgrep")
        .arg("-f")
        .arg(format!("mount {} --foreground", mnt.display()))
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&pid.stdout)
        .lines()
        .next()
        .expect("daemon pid")
        .trim()
        .to_string();
    assert!(Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap()
        .success());
    let _ = writer.join();
    let _ = Command::new("umount").arg("-l").arg(&mnt).status();
    // Wait for the dead daemon's lock to go.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let scrub = f.run(&["scrub"]);
    assert!(
        scrub.status.success(),
        "scrub after kill -9: {}",
        String::from_utf8_lossy(&scrub.stdout)
    );
    // Compacting every segment drops whatever no committed extent
    // references: a reference released too early loses data here.
    let gc = f.run(&["gc", "--threshold", "1"]);
    assert!(
        gc.status.success(),
        "gc after kill -9: {}",
        String::from_utf8_lossy(&gc.stderr)
    );
    f.mount();
    let over = std::fs::read(mnt.join("overwritten"));
    assert!(
        over.is_ok() || over.as_ref().unwrap_err().kind() == std::io::ErrorKind::NotFound,
        "overwritten file unreadable after kill -9: {over:?}"
    );
    for (p, data) in &synced {
        assert!(
            std::fs::read(p).unwrap() == *data,
            "{} differs after kill -9",
            p.display()
        );
    }
    // Files that survived the crash hold only bytes that were written to them.
    for e in std::fs::read_dir(&mnt).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(i) = name.strip_prefix("renamed").or(name.strip_prefix("busy")) {
            let i: u64 = i.parse().unwrap();
            let got = std::fs::read(e.path()).unwrap();
            let want = common::random_bytes(1000 + i, 200_000);
            assert!(
                want.starts_with(&got),
                "{name} holds bytes never written to it"
            );
        }
    }
}

#[test]
fn full_disk_fails_writes_but_keeps_the_mount_and_committed_files_readable() {
    // The store, and with it daemon.log, on a 64 MiB tmpfs: when the disk
    // fills, even the daemon's error messages cannot be written.
    let f = Fixture::with_store_on_tmpfs("64m");
    f.mount();
    let mnt = f.mnt();
    let kept = common::random_bytes(1, 3 << 20);
    let mut file = std::fs::File::create(mnt.join("kept")).unwrap();
    std::io::Write::write_all(&mut file, &kept).unwrap();
    file.sync_all().unwrap();
    drop(file);

    let mut failure = None;
    for i in 0..100u64 {
        let fill = (|| {
            let mut file = std::fs::File::create(mnt.join(format!("fill{i}")))?;
            std::io::Write::write_all(&mut file, &common::random_bytes(100 + i, 2 << 20))?;
            file.sync_all()
        })();
        if let Err(e) = fill {
            failure = Some(e);
            break;
        }
    }
    let e = failure.expect("64 MiB filled up");
    assert!(
        matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EIO)),
        "a full disk fails writes with ENOSPC or EIO, got {e}"
    );
    // More writes, closed without fsync: their flushes fail in the
    // background, as do the periodic commits, and each failure is reported
    // to daemon.log on the full disk.
    for i in 0..5u64 {
        let _ = std::fs::write(
            mnt.join(format!("late{i}")),
            common::random_bytes(200 + i, 1 << 20),
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // The mount still answers, and unmounts cleanly.
    assert!(f.is_mounted(), "the mount went away when the disk filled");
    let names: Vec<_> = std::fs::read_dir(&mnt)
        .expect("the mount still answers")
        .map(|d| d.unwrap().file_name())
        .collect();
    assert!(names.iter().any(|n| n == "kept"), "{names:?}");
    // Files committed before the failure stay readable (each open drops the
    // kernel's cached pages, so this read reaches the daemon), and status
    // says why changes are refused.
    assert!(
        std::fs::read(mnt.join("kept")).expect("committed files stay readable") == kept,
        "kept differs while the disk is full"
    );
    let why = f.status()["writes_stopped"]
        .as_str()
        .expect("status names the failed write")
        .to_string();
    assert!(why.contains("No space left on device"), "{why}");
    let text = f.ok(&["status"]);
    assert!(text.contains("Writes stopped:"), "{text}");
    // Writes after the failure were lost: unmount goes ahead and says so.
    let o = f.run(&["unmount", mnt.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("final sync failed"));
    assert!(!f.is_mounted());

    // With room again, everything fsynced before the failure is intact.
    f.resize_store_tmpfs("256m");
    f.mount();
    assert!(
        std::fs::read(mnt.join("kept")).unwrap() == kept,
        "kept differs"
    );
    assert!(
        f.status().get("writes_stopped").is_none(),
        "a remount resumes writes"
    );
    std::fs::write(mnt.join("after"), b"room again").unwrap();
    f.unmount();
    f.ok(&["scrub"]);
}
