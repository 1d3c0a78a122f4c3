//! pjdfstest (the Rust rewrite, 0.2.x) against a real datastore mount with
//! allow_other and default_permissions. scripts/test.sh installs it and
//! creates the `tests` user it switches to. Every test must pass; the ones
//! pjdfstest skips need a second filesystem (EXDEV, EROFS) or a link-count
//! limit setting (see docs/PJDFSTEST.md).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn pjdfstest_passes_on_a_mount() {
    assert!(
        Command::new("pjdfstest")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok(),
        "pjdfstest is not installed: scripts/test.sh installs it (cargo install pjdfstest)"
    );
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "pjdfstest password 123\n").unwrap();
    let ds = |args: &[&str]| {
        common::datastore_ok(dir.path(), &store, args);
    };
    ds(&["init", "--password-file", pw.to_str().unwrap()]);
    ds(&[
        "mount",
        mnt.to_str().unwrap(),
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    let work = mnt.join("pjd");
    std::fs::create_dir(&work).unwrap();
    Command::new("chmod")
        .arg("777")
        .arg(&work)
        .status()
        .unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pjdfstest/pjdfstest.toml");
    let out = Command::new("pjdfstest")
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(&work)
        .current_dir(&work)
        .output()
        .unwrap();
    ds(&["unmount", mnt.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .rev()
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or("no summary")
        .to_string();
    println!("pjdfstest {summary}");
    let failures: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("FAILED") || l.trim_end().ends_with("failed"))
        .collect();
    assert!(
        out.status.success() && summary.starts_with("Summary: 0 failed"),
        "{summary}\n{}",
        failures.join("\n")
    );
}
