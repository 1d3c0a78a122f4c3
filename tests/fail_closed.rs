//! Fail closed (issue "Fail closed"): damaged or missing metadata never
//! costs data, read-only commands never write to the store, and a rolled
//! back store directory never reuses a (key, nonce) pair. Real mounts and
//! the real command.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::mounted::Fixture;

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file under `dir`: path -> (size, mtime ns, BLAKE3 of the content).
fn tree_state(dir: &Path) -> BTreeMap<PathBuf, (u64, i64, String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                let hash = blake3::hash(&std::fs::read(&p).unwrap())
                    .to_hex()
                    .to_string();
                let mtime = m.mtime() * 1_000_000_000 + m.mtime_nsec();
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    (m.len(), mtime, hash),
                );
            }
        }
    }
    out
}

/// Asserts that `args` fails with exit `exit` and says `says`.
fn refused(f: &Fixture, args: &[&str], exit: i32, says: &str) {
    let o = f.run(args);
    assert_eq!(code(&o), exit, "{args:?}: {}", stderr(&o));
    assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
}

fn index(f: &Fixture) -> PathBuf {
    f.store().join("meta").join("index.redb")
}

/// A store with one committed file, unmounted; returns the file's bytes.
fn store_with_a_file(f: &Fixture) -> Vec<u8> {
    let data = common::random_bytes(27, 3 << 20);
    f.mount();
    std::fs::write(f.mnt().join("kept"), &data).unwrap();
    f.unmount();
    data
}

fn mount_args(f: &Fixture) -> Vec<String> {
    vec![
        "mount".into(),
        f.mnt().to_str().unwrap().into(),
        "--password-file".into(),
        f.pw().to_str().unwrap().into(),
    ]
}

/// Runs every command the issue names against a store whose database is
/// gone or damaged: none may change a file of the store; the ones that need
/// the database fail with exit 10 and say `what`.
fn every_command_refuses(f: &Fixture, what: &str) {
    let before = tree_state(&f.store());
    let mount = mount_args(f);
    let mount: Vec<&str> = mount.iter().map(String::as_str).collect();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["scrub"],
        &["gc"],
        &["encryption", "scan"],
        &mount,
    ] {
        let o = f.run(args);
        assert_eq!(code(&o), 10, "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(what), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!f.is_mounted());
    }
    // `encryption show` does not need the database: it may succeed.
    let _ = f.run(&["encryption", "show"]);
    let after = tree_state(&f.store());
    let changed: Vec<_> = before
        .iter()
        .filter(|(p, v)| after.get(*p) != Some(v) && !p.ends_with("daemon.log"))
        .map(|(p, _)| p)
        .collect();
    assert!(changed.is_empty(), "changed or removed: {changed:?}");
    let added: Vec<_> = after.keys().filter(|p| !before.contains_key(*p)).collect();
    assert!(added.is_empty(), "created: {added:?}");
}

/// The store's largest segment file (the one holding the test's data).
fn biggest_segment(f: &Fixture) -> PathBuf {
    std::fs::read_dir(f.store().join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap()
}

/// Flips one bit in the middle of the largest segment file.
fn flip_middle_of_biggest_segment(f: &Fixture) {
    let path = biggest_segment(f);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
}

fn segment_files(f: &Fixture) -> usize {
    std::fs::read_dir(f.store().join("segments"))
        .unwrap()
        .count()
}

#[test]
fn a_missing_or_empty_metadata_database_deletes_nothing() {
    let f = Fixture::new(&[]);
    let data = store_with_a_file(&f);
    let saved = std::fs::read(index(&f)).unwrap();
    let segments = segment_files(&f);

    std::fs::remove_file(index(&f)).unwrap();
    every_command_refuses(&f, "missing");
    assert!(!index(&f).exists(), "no database was created in its place");

    std::fs::write(index(&f), b"").unwrap();
    every_command_refuses(&f, "missing");
    assert_eq!(segment_files(&f), segments);

    // Put back, everything is there.
    std::fs::write(index(&f), &saved).unwrap();
    f.mount();
    assert_eq!(std::fs::read(f.mnt().join("kept")).unwrap(), data);
}

#[test]
fn a_damaged_metadata_database_is_reported_not_a_panic() {
    let f = Fixture::new(&[]);
    let data = store_with_a_file(&f);
    let saved = std::fs::read(index(&f)).unwrap();

    std::fs::write(index(&f), &saved[..saved.len() / 2]).unwrap();
    every_command_refuses(&f, "corrupt");

    // redb's header and its first pages.
    let mut flipped = saved.clone();
    for b in flipped.iter_mut().take(4096).skip(64) {
        *b ^= 0x5a;
    }
    std::fs::write(index(&f), &flipped).unwrap();
    every_command_refuses(&f, "corrupt");

    std::fs::write(index(&f), &saved).unwrap();
    f.mount();
    assert_eq!(std::fs::read(f.mnt().join("kept")).unwrap(), data);
}

#[test]
fn read_only_commands_change_nothing_and_work_on_read_only_media() {
    let f = Fixture::new(&[]);
    store_with_a_file(&f);
    let before = tree_state(&f.store());
    let files_before = segment_files(&f);
    for _ in 0..3 {
        for args in [
            &["status"][..],
            &["status", "--json"],
            &["scrub"],
            &["encryption", "show"],
            &["encryption", "scan"],
        ] {
            f.ok(args);
        }
    }
    assert_eq!(tree_state(&f.store()), before, "a read-only command wrote");
    assert_eq!(segment_files(&f), files_before);

    // The same store on read-only media (a read-only bind mount).
    let ro = f.dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let sh = |cmd: &str| {
        assert!(std::process::Command::new("sh")
            .args(["-c", cmd])
            .status()
            .unwrap()
            .success());
    };
    sh(&format!(
        "mount --bind {0} {1} && mount -o remount,bind,ro {1}",
        f.store().display(),
        ro.display()
    ));
    let run = |args: &[&str]| {
        let mut all = vec!["--store", ro.to_str().unwrap()];
        all.extend_from_slice(args);
        f.run(&all)
    };
    for args in [&["status"][..], &["scrub"], &["encryption", "show"]] {
        let o = run(args);
        assert_eq!(code(&o), 0, "{args:?} on read-only media: {}", stderr(&o));
    }
    sh(&format!("umount {}", ro.display()));
    assert_eq!(tree_state(&f.store()), before);
}

/// A segment file the database does not know (an older copy of the
/// database was put back) is left in place, and the newer database put
/// back afterwards finds every file.
#[test]
fn segments_the_database_does_not_know_are_kept() {
    let f = Fixture::new(&[]);
    let first = store_with_a_file(&f);
    // The metadata directory as a backup of it holds it: the database and
    // its checkpoint (an older database alone is refused, see below).
    let older = (
        std::fs::read(index(&f)).unwrap(),
        std::fs::read(checkpoint(&f)).unwrap(),
    );
    f.mount();
    let second = common::random_bytes(28, 5 << 20);
    std::fs::write(f.mnt().join("second"), &second).unwrap();
    f.unmount();
    let newer = (
        std::fs::read(index(&f)).unwrap(),
        std::fs::read(checkpoint(&f)).unwrap(),
    );
    let segments_before = tree_state(&f.store().join("segments"));

    std::fs::write(index(&f), &older.0).unwrap();
    std::fs::write(checkpoint(&f), &older.1).unwrap();
    f.mount();
    assert_eq!(std::fs::read(f.mnt().join("kept")).unwrap(), first);
    assert!(!f.mnt().join("second").exists());
    f.unmount();
    let segments_after = tree_state(&f.store().join("segments"));
    for (p, v) in &segments_before {
        assert_eq!(segments_after.get(p), Some(v), "{p:?} removed or changed");
    }

    std::fs::write(index(&f), &newer.0).unwrap();
    std::fs::write(checkpoint(&f), &newer.1).unwrap();
    f.mount();
    assert_eq!(std::fs::read(f.mnt().join("second")).unwrap(), second);
    assert_eq!(std::fs::read(f.mnt().join("kept")).unwrap(), first);
}

/// What names the (key, nonce) pair a sealed value was sealed with, in each
/// form docs/FORMAT.md describes (the generation is in the tag).
fn key_and_nonce(v: &[u8]) -> Vec<u8> {
    match u32::from_be_bytes(v[..4].try_into().unwrap()) & 0xFF_FFFF {
        0xFF_FFFF => v[..4 + 16 + 12].to_vec(), // tag, salt, nonce
        0 => v[..12].to_vec(),                  // generation key, counter nonce
        _ => v[..16].to_vec(),                  // epoch key, nonce
    }
}

fn sealed_values(store: &Path) -> Vec<Vec<u8>> {
    let meta = datastore::meta::Meta::open(
        &store.join("meta").join("index.redb"),
        datastore::meta::OpenMode::ReadOnly,
    )
    .unwrap();
    datastore::volume::sealed_values_in(&meta).unwrap()
}

/// A copy of the store directory (a VM snapshot, a restored backup) and the
/// original both go on from the same state: no (key, nonce) pair may seal
/// two different values across the two histories.
#[test]
fn a_restored_copy_of_the_store_never_reuses_a_key_and_nonce() {
    let f = Fixture::new(&[]);
    f.mount();
    for i in 0..20 {
        std::fs::write(f.mnt().join(format!("before{i}")), format!("common {i}")).unwrap();
    }
    f.unmount();
    let copy = f.dir.path().join("copy");
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(f.store())
        .arg(&copy)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let write_history = |store: &Path, tag: &str| {
        let mnt = f.dir.path().join(format!("mnt-{tag}"));
        std::fs::create_dir_all(&mnt).unwrap();
        let (s, m, pw) = (store.to_str().unwrap(), mnt.to_str().unwrap(), f.pw());
        f.ok(&[
            "--store",
            s,
            "mount",
            m,
            "--password-file",
            pw.to_str().unwrap(),
        ]);
        for i in 0..20 {
            std::fs::write(mnt.join(format!("{tag}{i}")), format!("{tag} history {i}")).unwrap();
            std::fs::create_dir(mnt.join(format!("dir-{tag}{i}"))).unwrap();
        }
        f.ok(&["--store", s, "unmount", m]);
    };
    write_history(&f.store(), "original");
    write_history(&copy, "restored");
    let mut sealed_with: std::collections::HashMap<Vec<u8>, Vec<u8>> = Default::default();
    let mut values = 0;
    for store in [f.store(), copy] {
        for v in sealed_values(&store) {
            values += 1;
            let prior = sealed_with
                .entry(key_and_nonce(&v))
                .or_insert_with(|| v.clone());
            assert_eq!(
                *prior,
                v,
                "two values sealed under one key and nonce ({})",
                hex::encode(key_and_nonce(&v))
            );
        }
    }
    assert!(values > 80, "{values} sealed values");
}

fn sh(cmd: &str) {
    let ok = std::process::Command::new("sh")
        .args(["-c", cmd])
        .status()
        .unwrap()
        .success();
    assert!(ok, "{cmd}");
}

/// A store directory another user can write is refused by every command
/// that would trust it; a log that is a symlink is never followed.
#[test]
fn a_store_directory_or_log_another_user_controls_is_refused() {
    let f = Fixture::new(&[]);
    let store = f.store();
    let mount = mount_args(&f);
    let mount: Vec<&str> = mount.iter().map(String::as_str).collect();
    for mode in ["0777", "0770"] {
        sh(&format!("chmod {mode} {}", store.display()));
        for args in [&mount[..], &["unlock"], &["gc"], &["status"]] {
            refused(&f, args, 8, "writable by group or others");
        }
    }
    sh(&format!(
        "chmod 0700 {0} && chown 65534 {0}",
        store.display()
    ));
    let o = f.run(&mount);
    assert_eq!(code(&o), 8, "{}", stderr(&o));
    assert!(stderr(&o).contains("owned by uid 65534"), "{}", stderr(&o));
    sh(&format!("chown 0 {}", store.display()));

    // daemon.log made a symlink to a root-only file: not appended to.
    let victim = f.dir.path().join("victim");
    std::fs::write(&victim, "root's file\n").unwrap();
    std::os::unix::fs::symlink(&victim, store.join("daemon.log")).unwrap();
    let o = f.run(&mount);
    assert_eq!(code(&o), 8, "{}", stderr(&o));
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's file\n");
    assert!(!f.is_mounted());
    std::fs::remove_file(store.join("daemon.log")).unwrap();
    f.mount();
    assert!(f.is_mounted());
}

/// Another user listening on the control socket (here: put there while the
/// directory was writable) never receives the password.
#[test]
fn unlock_sends_no_password_to_a_socket_another_user_serves() {
    let f = Fixture::new(&[]);
    let store = f.store();
    sh(&format!("chmod 0777 {}", store.display()));
    let heard = f.dir.path().join("heard");
    sh(&format!(
        "touch {0} && chmod 0666 {0} && chmod 0755 {1}",
        heard.display(),
        f.dir.path().display()
    ));
    let script = format!(
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.bind('{}')\ns.listen(1)\nc,_=s.accept()\nc.settimeout(5)\ndata=b''\ntry:\n  data=c.recv(4096)\nexcept Exception:\n  pass\nopen('{}','wb').write(data)\nc.sendall(b'ok unlocked\\n')\n",
        store.join("control.sock").display(),
        heard.display()
    );
    let mut listener = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            &script,
        ])
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !store.join("control.sock").exists() && t.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    sh(&format!("chmod 0700 {}", store.display()));
    let o = f.run(&["unlock", "--password-file", f.pw().to_str().unwrap()]);
    assert_eq!(code(&o), 8, "{}", stderr(&o));
    assert!(stderr(&o).contains("not by root"), "{}", stderr(&o));
    let _ = listener.kill();
    let _ = listener.wait();
    let got = std::fs::read(&heard).unwrap();
    assert!(
        !String::from_utf8_lossy(&got).contains(common::mounted::PW),
        "the password reached another user's socket"
    );
}

#[test]
fn a_mount_point_inside_or_above_the_store_is_refused() {
    let f = Fixture::new(&[]);
    let store = f.store();
    let inside = store.join("inside");
    std::fs::create_dir(&inside).unwrap();
    for mnt in [store.clone(), inside, f.dir.path().to_path_buf()] {
        let o = f.run(&[
            "mount",
            mnt.to_str().unwrap(),
            "--password-file",
            f.pw().to_str().unwrap(),
        ]);
        assert_eq!(code(&o), 2, "{}: {}", mnt.display(), stderr(&o));
        assert!(stderr(&o).contains("overlap"), "{}", stderr(&o));
    }
    assert!(!f.is_mounted());
}

/// `status | head -1` and `status >&-`: no panic, the command's own exit
/// code; a caller's pipe is not held open by the background daemon.
#[test]
fn output_to_a_closed_pipe_and_inherited_descriptors() {
    let f = Fixture::new(&[]);
    let bin = env!("CARGO_BIN_EXE_datastore");
    let store = f.store();
    let run_sh = |cmd: &str| {
        std::process::Command::new("sh")
            .args(["-c", cmd])
            .env("DATASTORE_STORE", &store)
            .output()
            .unwrap()
    };
    for cmd in [
        format!("{bin} status | head -c1 >/dev/null; echo ${{PIPESTATUS:-}}"),
        format!("{bin} status >&-"),
        format!("{bin} encryption show >&- 2>&-"),
    ] {
        let o = run_sh(&cmd);
        assert!(o.status.success(), "{cmd}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{cmd}: {}", stderr(&o));
    }
    // A harness reading the mount's output through an extra descriptor
    // (fd 5 here) must see EOF when `mount` returns, not at unmount.
    let mut child = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(
                "{bin} mount {} --password-file {} 5>&1",
                f.mnt().display(),
                f.pw().display()
            ),
        ])
        .env("DATASTORE_STORE", &store)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        let _ = tx.send(s);
    });
    let got = rx.recv_timeout(std::time::Duration::from_secs(30));
    let _ = child.wait();
    assert!(f.is_mounted());
    assert!(got.is_ok(), "EOF did not come while the daemon ran");
}

/// After writes stopped (a full disk), no change is answered with success
/// only to be undone at the next mount, and `unmount` says the final sync
/// failed.
#[test]
fn after_writes_stopped_changes_fail_instead_of_being_undone() {
    let f = Fixture::with_store_on_tmpfs("64m");
    f.mount();
    let mnt = f.mnt();
    std::fs::write(mnt.join("kept"), b"committed before the disk filled").unwrap();
    std::fs::create_dir(mnt.join("dir")).unwrap();
    std::fs::File::open(&mnt).unwrap().sync_all().unwrap();
    let mut filled = false;
    for i in 0..100u64 {
        let fill = (|| {
            let mut file = std::fs::File::create(mnt.join(format!("fill{i}")))?;
            std::io::Write::write_all(&mut file, &common::random_bytes(100 + i, 2 << 20))?;
            file.sync_all()
        })();
        if fill.is_err() {
            filled = true;
            break;
        }
    }
    assert!(filled, "64 MiB filled up");
    assert!(f.status()["writes_stopped"].is_string());
    let refused = |what: &str, r: std::io::Result<()>| {
        let e = r.expect_err(&format!("{what} succeeded after writes stopped"));
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    refused("rm", std::fs::remove_file(mnt.join("kept")));
    refused("mkdir", std::fs::create_dir(mnt.join("new-dir")));
    refused("mv", std::fs::rename(mnt.join("dir"), mnt.join("moved")));
    refused("rmdir", std::fs::remove_dir(mnt.join("dir")));
    refused("create", std::fs::write(mnt.join("new-file"), b"x"));
    let o = f.run(&["unmount", mnt.to_str().unwrap()]);
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    assert!(stderr(&o).contains("final sync failed"), "{}", stderr(&o));
    assert!(!f.is_mounted());

    f.resize_store_tmpfs("512m");
    f.mount();
    assert_eq!(
        std::fs::read(mnt.join("kept")).unwrap(),
        b"committed before the disk filled"
    );
    assert!(mnt.join("dir").is_dir());
    for gone in ["new-dir", "moved", "new-file"] {
        assert!(!mnt.join(gone).exists(), "{gone}");
    }
}

/// A flipped byte in a segment, then `repair`, then the same file copied
/// in again (a restore from a backup): the copy is stored anew instead of
/// deduplicating onto the bad record, and heals the old file too.
#[test]
fn a_damaged_chunk_is_repaired_by_writing_its_data_again() {
    let f = Fixture::new(&[]);
    let data = store_with_a_file(&f);
    flip_middle_of_biggest_segment(&f);

    assert_eq!(code(&f.run(&["scrub"])), 10);
    let o = f.run(&["repair", "--dry-run"]);
    assert_eq!(code(&o), 10, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("DAMAGED chunk"));
    let pw = f.pw();
    let out = f.ok(&[
        "repair",
        "--json",
        "--list-files",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["marked"], true, "{report}");
    assert_eq!(report["damaged"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["files"], serde_json::json!(["/kept"]), "{report}");

    f.mount();
    assert!(
        std::fs::read(f.mnt().join("kept")).is_err(),
        "the damage reads as EIO"
    );
    std::fs::write(f.mnt().join("restored"), &data).unwrap();
    f.unmount();
    f.mount();
    assert_eq!(std::fs::read(f.mnt().join("restored")).unwrap(), data);
    assert_eq!(std::fs::read(f.mnt().join("kept")).unwrap(), data, "healed");
    f.unmount();
    let again: serde_json::Value =
        serde_json::from_str(&f.ok(&["repair", "--dry-run", "--json"])).unwrap();
    assert!(again["damaged"].as_array().unwrap().is_empty(), "{again}");
}

fn checkpoint(f: &Fixture) -> PathBuf {
    f.store().join("meta").join("checkpoint")
}

fn len_of(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// Waits (up to 20 s) until the checkpoint file changes from `before`
/// bytes: the daemon appended a delta (every 5 s after a change).
fn wait_for_checkpoint_change(f: &Fixture, before: u64) {
    let t = std::time::Instant::now();
    while len_of(&checkpoint(f)) == before && t.elapsed().as_secs() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_ne!(
        len_of(&checkpoint(f)),
        before,
        "no checkpoint frame in 20 s"
    );
}

/// Writes `name` on the mount, fsyncs it and waits for the checkpoint
/// frame that holds it (the first change of a mount writes a base, later
/// ones append deltas).
fn write_and_wait_for_a_frame(f: &Fixture, name: &str, data: &[u8]) {
    let before = len_of(&checkpoint(f));
    std::fs::write(f.mnt().join(name), data).unwrap();
    std::fs::File::open(f.mnt().join(name))
        .unwrap()
        .sync_all()
        .unwrap();
    wait_for_checkpoint_change(f, before);
}

/// A store with `kept` (returned), mounted again: `early` written and
/// in the mount's first frame (a base), `late` (`late_data`) in the next
/// (a delta); then the daemon is killed.
fn crash_after_two_frames(f: &Fixture, late_data: &[u8]) -> Vec<u8> {
    let first = store_with_a_file(f);
    f.mount();
    write_and_wait_for_a_frame(f, "early", b"in the base this mount wrote");
    write_and_wait_for_a_frame(f, "late", late_data);
    f.kill_daemon();
    first
}

/// The mounted daemon appends the metadata that changed to the checkpoint
/// every 5 s: after a crash and the loss of index.redb, `repair` brings
/// back a file written seconds before (not only what the last unmount
/// held).
#[test]
fn repair_brings_back_what_the_checkpoint_journal_holds_after_a_crash() {
    let f = Fixture::new(&[]);
    let second = common::random_bytes(41, 1 << 20);
    let first = crash_after_two_frames(&f, &second);
    std::fs::remove_file(index(&f)).unwrap();
    let out = f.ok(&["repair"]);
    assert!(out.contains("Put back the metadata checkpoint"), "{out}");
    assert!(!out.contains("and 0 later changes"), "{out}");
    f.mount();
    assert_eq!(std::fs::read(f.mnt().join("kept")).unwrap(), first);
    assert_eq!(
        std::fs::read(f.mnt().join("early")).unwrap(),
        b"in the base this mount wrote"
    );
    assert_eq!(std::fs::read(f.mnt().join("late")).unwrap(), second);
    f.unmount();
    f.ok(&["scrub"]);
}

/// An older copy of index.redb put back (a careless restore): every
/// command refuses it (exit 10) before anything is cut or reclaimed, and
/// `repair` puts back the newer state from the checkpoint.
#[test]
fn an_older_copy_of_the_database_is_refused_and_repair_puts_back_the_newer_state() {
    let f = Fixture::new(&[]);
    let first = store_with_a_file(&f);
    let older = std::fs::read(index(&f)).unwrap();
    f.mount();
    let second = common::random_bytes(42, 2 << 20);
    std::fs::write(f.mnt().join("later"), &second).unwrap();
    f.unmount();
    let segments_before = common::dir_bytes(&f.store().join("segments"));
    std::fs::write(index(&f), &older).unwrap();
    for args in [&["status"][..], &["scrub"], &["gc"]] {
        refused(&f, args, 10, "older than its checkpoint");
    }
    let o = f.run(
        &mount_args(&f)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(code(&o), 10, "{}", stderr(&o));
    assert!(!f.is_mounted());
    assert_eq!(
        common::dir_bytes(&f.store().join("segments")),
        segments_before,
        "nothing cut"
    );
    refused(
        &f,
        &["repair", "--dry-run"],
        10,
        "would put back its checkpoint",
    );
    f.ok(&["repair"]);
    f.mount();
    assert_eq!(std::fs::read(f.mnt().join("kept")).unwrap(), first);
    assert_eq!(std::fs::read(f.mnt().join("later")).unwrap(), second);
    f.unmount();
}

/// A symlink put in place of the checkpoint while mounted: the daemon's
/// next delta is refused (logged), the file it points at is never written,
/// and the unmount's base replaces the link with a checkpoint of its own.
#[test]
fn a_symlink_in_place_of_the_checkpoint_is_never_written_through() {
    let f = Fixture::new(&[]);
    store_with_a_file(&f);
    f.mount();
    write_and_wait_for_a_frame(&f, "early", b"in the base this mount wrote");
    let victim = f.dir.path().join("victim");
    std::fs::write(&victim, b"root's file").unwrap();
    std::fs::remove_file(checkpoint(&f)).unwrap();
    std::os::unix::fs::symlink(&victim, checkpoint(&f)).unwrap();
    std::fs::write(f.mnt().join("late"), b"a change for the next frame").unwrap();
    let log = f.store().join("daemon.log");
    let t = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("metadata checkpoint failed")
        && t.elapsed().as_secs() < 20
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("metadata checkpoint failed"), "{text}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"root's file");
    f.unmount();
    assert_eq!(std::fs::read(&victim).unwrap(), b"root's file");
    assert!(!std::fs::symlink_metadata(checkpoint(&f))
        .unwrap()
        .is_symlink());
    f.ok(&["scrub"]);
}

/// A torn or damaged last frame: `repair` puts back the state of the frame
/// before and says where the checkpoint ended; scrub reports the damage.
#[test]
fn a_damaged_checkpoint_frame_costs_only_the_frames_after_it() {
    let f = Fixture::new(&[]);
    let first = crash_after_two_frames(&f, b"in the last frame");
    // The newest frame's last byte (its body CRC) flipped.
    let mut bytes = std::fs::read(checkpoint(&f)).unwrap();
    *bytes.last_mut().unwrap() ^= 0x40;
    std::fs::write(checkpoint(&f), &bytes).unwrap();
    let o = f.run(&["scrub"]);
    assert_eq!(code(&o), 10, "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("checkpoint"), "{out}");
    std::fs::remove_file(index(&f)).unwrap();
    let out = f.ok(&["repair"]);
    assert!(out.contains("The checkpoint ends early"), "{out}");
    f.mount();
    assert_eq!(std::fs::read(f.mnt().join("kept")).unwrap(), first);
    assert!(f.mnt().join("early").exists());
    assert!(!f.mnt().join("late").exists(), "only in the damaged frame");
    f.unmount();
    f.ok(&["scrub"]);

    // A damaged checkpoint beside an intact database: repair writes it
    // again from the database.
    let mut bytes = std::fs::read(checkpoint(&f)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(checkpoint(&f), &bytes).unwrap();
    assert_eq!(code(&f.run(&["scrub"])), 10);
    assert_eq!(code(&f.run(&["repair", "--dry-run"])), 10);
    let out = f.ok(&["repair"]);
    assert!(out.contains("Wrote the metadata checkpoint again"), "{out}");
    f.ok(&["scrub"]);
}

/// `rm meta/index.redb` (or a damaged one), then `repair`: every file
/// committed before the last checkpoint frame (a whole image at every
/// unmount, the changed blocks every 5 s while mounted) comes back.
#[test]
fn a_lost_metadata_database_is_put_back_from_its_checkpoint() {
    let f = Fixture::new(&[]);
    let data = store_with_a_file(&f);
    assert!(checkpoint(&f).exists(), "unmount writes a checkpoint");
    for damage in ["remove", "truncate"] {
        match damage {
            "remove" => std::fs::remove_file(index(&f)).unwrap(),
            _ => {
                let bytes = std::fs::read(index(&f)).unwrap();
                std::fs::write(index(&f), &bytes[..bytes.len() / 3]).unwrap();
            }
        }
        refused(
            &f,
            &["repair", "--dry-run"],
            10,
            "would put back its checkpoint",
        );
        let out = f.ok(&["repair"]);
        assert!(out.contains("Put back the metadata checkpoint"), "{out}");
        f.mount();
        assert_eq!(
            std::fs::read(f.mnt().join("kept")).unwrap(),
            data,
            "{damage}"
        );
        f.unmount();
    }
}

/// A checkpoint older than a GC names records GC moved: `repair` finds
/// them in their new segment by fingerprint.
#[test]
fn repair_finds_records_gc_moved_after_the_checkpoint() {
    let f = Fixture::new(&[]);
    let data = common::random_bytes(31, 3 << 20);
    f.mount();
    std::fs::write(f.mnt().join("kept"), &data).unwrap();
    std::fs::write(f.mnt().join("dropped"), common::random_bytes(32, 6 << 20)).unwrap();
    f.unmount();
    f.mount();
    std::fs::remove_file(f.mnt().join("dropped")).unwrap();
    f.unmount();
    let older = std::fs::read(checkpoint(&f)).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&f.ok(&["gc", "--threshold", "0.9", "--json"])).unwrap();
    assert!(report["records_moved"].as_u64().unwrap() > 0, "{report}");
    std::fs::write(checkpoint(&f), &older).unwrap();
    std::fs::remove_file(index(&f)).unwrap();
    let out = f.ok(&["repair"]);
    assert!(
        out.contains("Every chunk the index references verified"),
        "{out}"
    );
    f.mount();
    assert_eq!(std::fs::read(f.mnt().join("kept")).unwrap(), data);
    f.unmount();
    // No row is left for a segment GC deleted, and GC runs again.
    let out = f.ok(&["scrub"]);
    assert!(out.contains("Scrubbed"), "{out}");
    f.ok(&["gc"]);
    f.ok(&["scrub"]);
}

/// Changes one hex character of the first wrapped key in keystore.json.
fn flip_keystore_hex(f: &Fixture) {
    let path = f.store().join("keystore").join("keystore.json");
    let mut text = std::fs::read(&path).unwrap();
    let at = String::from_utf8_lossy(&text)
        .find("\"wrapped\": \"")
        .unwrap()
        + 12
        + 10;
    text[at] = if text[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(&path, text).unwrap();
}

/// One flipped character in keystore.json: the right password still
/// opens the store (from keystore.json.bak), scrub reports the damaged
/// copy, and repair (or the next unlock) writes it again.
#[test]
fn a_damaged_keystore_copy_is_caught_worked_around_and_repaired() {
    let f = Fixture::new(&[]);
    let main = f.store().join("keystore").join("keystore.json");
    let backup = f.store().join("keystore").join("keystore.json.bak");
    flip_keystore_hex(&f);
    let o = f.run(&["scrub"]);
    assert_eq!(code(&o), 10, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout)
        .contains("keystore.json: keystore is corrupt: checksum mismatch"));
    assert!(f
        .ok(&["encryption", "show"])
        .contains("WARNING: keystore.json is damaged"));
    assert_eq!(code(&f.run(&["repair", "--dry-run"])), 10);
    assert!(f
        .ok(&["repair"])
        .contains("Wrote both keystore copies again"));
    assert_eq!(
        std::fs::read(&main).unwrap(),
        std::fs::read(&backup).unwrap()
    );
    f.ok(&["scrub"]);

    flip_keystore_hex(&f);
    f.mount();
    assert!(f.is_mounted(), "the right password opens the store");
    f.unmount();
    f.ok(&["scrub"]);
    assert_eq!(
        std::fs::read(&main).unwrap(),
        std::fs::read(&backup).unwrap()
    );
}

/// A wrong password at `unlock` is logged with the time and who tried,
/// and the next attempt waits: guessing is slow and leaves a trace.
#[test]
fn failed_unlocks_are_logged_with_a_time_and_slowed_down() {
    let f = Fixture::new(&[]);
    f.mount_locked();
    let wrong = f.dir.path().join("wrong");
    std::fs::write(&wrong, "not the password at all\n").unwrap();
    let t = std::time::Instant::now();
    for _ in 0..3 {
        let o = f.run(&["unlock", "--password-file", wrong.to_str().unwrap()]);
        assert_eq!(code(&o), 3, "{}", stderr(&o));
    }
    assert!(
        t.elapsed() >= std::time::Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
    f.ok(&["unlock", "--password-file", f.pw().to_str().unwrap()]);
    let log = std::fs::read_to_string(f.store().join("daemon.log")).unwrap();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("unlock refused"))
        .collect();
    assert_eq!(refused.len(), 3, "{log}");
    for line in refused {
        assert!(
            line.starts_with("20") && line.contains(" UTC datastore: unlock refused (uid 0 pid "),
            "{line}"
        );
    }
    assert!(
        !log.contains("not the password"),
        "a password reached the log"
    );
}

/// A mount whose daemon was killed is detached by the next `mount`; a
/// second mount on a live one is refused; mount points with a tab or a
/// backslash unmount; a relative `--store` unmounts from elsewhere.
#[test]
fn dead_stacked_odd_and_relative_mounts() {
    let f = Fixture::new(&[]);
    f.mount();
    std::fs::write(f.mnt().join("kept"), b"before the kill").unwrap();
    std::fs::File::open(f.mnt()).unwrap().sync_all().unwrap();
    std::fs::File::open(f.mnt().join("kept"))
        .unwrap()
        .sync_all()
        .unwrap();

    // Stacked: another store on the same live mount point.
    let g = Fixture::new(&[]);
    let o = g.run(&[
        "mount",
        f.mnt().to_str().unwrap(),
        "--password-file",
        g.pw().to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 9, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("already a datastore mount"),
        "{}",
        stderr(&o)
    );

    // Dead: the daemon killed, the kernel mount left behind.
    let pid = f.daemon_pid().unwrap();
    // SAFETY: kill(2) on the daemon's pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let t = std::time::Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && t.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(f.is_mounted(), "the dead mount is still in the mount table");
    let out = f.ok(&mount_args(&f)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(out.contains("Detached the dead datastore mount"), "{out}");
    assert_eq!(
        std::fs::read(f.mnt().join("kept")).unwrap(),
        b"before the kill"
    );
    f.unmount();

    // A tab and a backslash in the mount point's name.
    let odd = f.dir.path().join("tab\there back\\slash");
    std::fs::create_dir(&odd).unwrap();
    f.ok(&[
        "mount",
        odd.to_str().unwrap(),
        "--password-file",
        f.pw().to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(odd.join("kept")).unwrap(), b"before the kill");
    f.ok(&["unmount", odd.to_str().unwrap()]);

    // A relative --store, unmounted from another directory.
    let bin = env!("CARGO_BIN_EXE_datastore");
    let ok = std::process::Command::new(bin)
        .current_dir(f.dir.path())
        .args(["--store", "store", "mount", "mnt", "--password-file", "pw"])
        .env_remove("DATASTORE_STORE")
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let o = std::process::Command::new(bin)
        .current_dir("/")
        .arg("unmount")
        .arg(f.mnt())
        .env_remove("DATASTORE_STORE")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!f.is_mounted());
}

/// A record whose ciphertext was changed and its CRC recomputed passes the
/// keyless scrub; `scrub --verify-data` decrypts, checks the keyed
/// fingerprint and names the chunk. A plain CRC mismatch names it too.
#[test]
fn scrub_verify_data_catches_a_record_altered_with_a_valid_crc() {
    use datastore::store::record;
    let f = Fixture::new(&[]);
    store_with_a_file(&f);
    let seg = biggest_segment(&f);
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = 32; // the first record, after the segment header
    let h = record::parse_header(&bytes[at..]).unwrap();
    let body = at + record::HEADER_LEN..at + record::HEADER_LEN + h.cipher_len as usize;
    bytes[body.start + 100] ^= 0x40;
    let crc = crc32c::crc32c(&bytes[body.clone()]);
    bytes[body.end..body.end + 4].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&seg, &bytes).unwrap();

    f.ok(&["scrub"]);
    let pw = f.pw();
    let o = f.run(&[
        "scrub",
        "--verify-data",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 10, "{}", stderr(&o));
    let fp8 = hex::encode(&h.fingerprint[..8]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&fp8),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // Without fixing the CRC: the keyless scrub names the chunk too.
    bytes[body.start + 101] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let o = f.run(&["scrub"]);
    assert_eq!(code(&o), 10);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains(&format!("chunk {fp8}")), "{out}");
}

/// `scrub` while mounted runs in the daemon (it was refused: store in use),
/// with the key while unlocked; a flipped byte is found.
#[test]
fn scrub_runs_through_the_mounted_daemon() {
    let f = Fixture::new(&[]);
    store_with_a_file(&f);
    f.mount();
    std::fs::write(f.mnt().join("more"), common::random_bytes(41, 1 << 20)).unwrap();
    std::fs::File::open(f.mnt().join("more"))
        .unwrap()
        .sync_all()
        .unwrap();
    let r: serde_json::Value = serde_json::from_str(&f.ok(&["scrub", "--json"])).unwrap();
    assert_eq!(r["verified_with_key"], true, "{r}");
    assert!(r["records"].as_u64().unwrap() > 10, "{r}");
    flip_middle_of_biggest_segment(&f);
    let o = f.run(&["scrub"]);
    assert_eq!(code(&o), 10, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("BAD segment"));
    f.ok(&["lock"]);
    let o = f.run(&[
        "scrub",
        "--verify-data",
        "--password-file",
        f.pw().to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 5, "{}", stderr(&o));
}
