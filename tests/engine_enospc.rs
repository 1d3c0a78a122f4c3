//! Bad input: a full disk. The store lives on a 48 MiB tmpfs; streams are
//! written and committed until the disk fills. The failing call returns a
//! clear I/O error, the engine refuses further writes but still reads what
//! was committed, and after a reopen every stream committed before the
//! failure reads back and scrub is clean.
//! Needs root (mounts a tmpfs).

mod common;

use std::process::Command;

use common::*;
use datastore::engine::EngineError;

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_fails_cleanly_and_keeps_committed_data() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mounting a tmpfs failed: this test needs root");
    let _guard = Tmpfs(mnt.clone());
    let store = mnt.join("store");
    let mut committed = Vec::new();
    let failure = {
        let e = new_engine(&store);
        let mut failure = None;
        for i in 0..64u64 {
            let data = random_bytes(1000 + i, 4 << 20);
            let r = e.put_bytes(&data).and_then(|r| e.commit(true).map(|_| r));
            match r {
                Ok(r) => committed.push((data, r)),
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        let failure = failure.expect("48 MiB filled up");
        // After a failed write the engine refuses writes instead of
        // guessing, says why, and still serves what was committed (both
        // read paths; on tmpfs the streaming one falls back to the page
        // cache).
        assert!(matches!(e.put_bytes(b"more"), Err(EngineError::Poisoned)));
        assert_eq!(e.stopped(), Some(failure.to_string()));
        for (data, r) in &committed {
            assert!(&e.read_to_vec(r).unwrap() == data);
            let fps: Vec<_> = r.iter().map(|c| c.fingerprint).collect();
            let chunks = e.read_chunks_streaming(&fps).unwrap();
            let streamed: Vec<u8> = chunks.into_iter().flat_map(|c| c.unwrap()).collect();
            assert!(&streamed == data);
        }
        failure
    };
    let msg = failure.to_string();
    println!("full-disk error as users see it: {msg}");
    assert!(
        msg.contains("No space left") || msg.contains("metadata database"),
        "unexpected error: {msg}"
    );
    assert!(!committed.is_empty());
    let e = open_engine(&store);
    assert!(e.scrub().unwrap().is_clean());
    for (data, r) in &committed {
        assert_eq!(&e.read_to_vec(r).unwrap(), data);
    }
}
