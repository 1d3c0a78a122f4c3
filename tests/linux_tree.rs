//! A large real source tree on a real mount: the Linux 6.1 tree (Debian's
//! linux-source-6.1, installed by scripts/test.sh) is extracted onto the
//! mount, compared with `diff -r` against an extraction on plain disk,
//! unmounted (which compacts the metadata database), remounted and compared
//! again. Logical vs physical bytes are
//! printed (run with --nocapture to see them).

mod common;

use std::path::Path;
use std::process::Command;

const TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";

fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn linux_tree_extracts_and_diffs_identical_across_remount() {
    assert!(
        Path::new(TARBALL).exists(),
        "{TARBALL} is missing: scripts/test.sh installs linux-source-6.1"
    );
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let (store, mnt, plain) = (
        dir.path().join("store"),
        dir.path().join("mnt"),
        dir.path().join("plain"),
    );
    std::fs::create_dir(&mnt).unwrap();
    std::fs::create_dir(&plain).unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "linux tree password\n").unwrap();
    let ds = |args: &[&str]| common::datastore_ok(dir.path(), &store, args);
    ds(&["init", "--password-file", pw.to_str().unwrap()]);
    let mount = || {
        ds(&[
            "mount",
            mnt.to_str().unwrap(),
            "--password-file",
            pw.to_str().unwrap(),
        ])
    };
    mount();
    run(Command::new("tar")
        .arg("xf")
        .arg(TARBALL)
        .arg("-C")
        .arg(&plain));
    let t = std::time::Instant::now();
    run(Command::new("tar")
        .arg("xf")
        .arg(TARBALL)
        .arg("-C")
        .arg(&mnt));
    println!("tar x onto the mount: {:.1} s", t.elapsed().as_secs_f64());
    run(Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(&plain)
        .arg(&mnt));
    ds(&["unmount", mnt.to_str().unwrap()]);
    // The unmount compacted the metadata database; the remount below reads
    // the compacted copy.
    let log = std::fs::read_to_string(store.join("daemon.log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("metadata compacted from"))
        .unwrap_or_else(|| panic!("no compaction at unmount in daemon.log:\n{log}"));
    let sizes: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(sizes[1] * 10 < sizes[0] * 8, "{line}");
    println!("{line}");
    mount();
    run(Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(&plain)
        .arg(&mnt));
    let status: serde_json::Value = serde_json::from_str(&ds(&["status", "--json"])).unwrap();
    println!(
        "logical {} bytes, physical {} bytes, dedup {:.2}x, compression {:.2}x",
        status["logical_bytes"],
        status["physical_bytes"],
        status["dedup_ratio"].as_f64().unwrap(),
        status["compression_ratio"].as_f64().unwrap()
    );
    assert!(status["logical_bytes"].as_u64().unwrap() > 1_000_000_000);
    ds(&["unmount", mnt.to_str().unwrap()]);
}
