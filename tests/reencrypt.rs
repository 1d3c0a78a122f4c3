//! Online re-encryption (#6) on real mounts: an unencrypted store converted
//! to FIPS mode while a reader checksums every file, and a key rotation
//! whose daemon is killed with SIGKILL at five random moments (a copy
//! written mid-way dedups with the converted original).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::mounted::{diff, Fixture};
use common::{copy_repo_parts, find_bytes, random_bytes};
use rand::Rng;

/// Every regular file under `dir` with its content hash.
fn hashes(dir: &Path) -> BTreeMap<PathBuf, blake3::Hash> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            out.extend(hashes(&p));
        } else if m.is_file() {
            out.insert(p.clone(), blake3::hash(&std::fs::read(&p).unwrap()));
        }
    }
    out
}

/// Incompressible data with `marker` in it, so only encryption hides it.
fn with_marker(seed: u64, len: usize, marker: &str) -> Vec<u8> {
    let mut d = random_bytes(seed, len);
    d[len / 2..len / 2 + marker.len()].copy_from_slice(marker.as_bytes());
    d
}

#[test]
fn unencrypted_store_converts_to_fips_while_a_reader_checksums_every_file() {
    let f = Fixture::new(&["--no-encryption"]);
    let show = f.ok(&["encryption", "show"]);
    assert!(show.contains("OFF (this store is not encrypted)"), "{show}");
    f.mount();
    let marker = format!("PLAINMARK{:x}", std::process::id() as u64 * 7919);
    let tree = f.mnt().join(format!("tree-{marker}"));
    copy_repo_parts(&["src", "keystore/src", "tests"], &tree);
    for i in 0..24u64 {
        let name = f.mnt().join(format!("random-{i}-{marker}"));
        std::fs::write(name, with_marker(i, 3 << 20, &marker)).unwrap();
    }
    f.ok(&["status"]); // flushes nothing; the daemon commits within 0.5 s
    std::thread::sleep(Duration::from_millis(1200));
    let expected = hashes(&f.mnt());
    assert!(expected.len() > 100);
    // Proves the marker scan can fail: before the conversion it is there.
    assert!(
        !find_bytes(&f.store(), marker.as_bytes()).is_empty(),
        "an unencrypted store should show the marker"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let loops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let (stop, loops, errors, expected) = (
            stop.clone(),
            loops.clone(),
            errors.clone(),
            expected.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for (p, h) in &expected {
                    match std::fs::read(p) {
                        Ok(d) if blake3::hash(&d) == *h => {}
                        Ok(_) => errors
                            .lock()
                            .unwrap()
                            .push(format!("{}: wrong bytes", p.display())),
                        Err(e) => errors.lock().unwrap().push(format!("{}: {e}", p.display())),
                    }
                }
                loops.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    while loops.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let pw = f.pw();
    let pw = pw.to_str().unwrap();
    let set = ["encryption", "set", "--fips-mode", "validated"];
    let out = f.ok(&[
        &set[..],
        &["--password-file", pw, "--max-rate", "16M", "--no-wait"],
    ]
    .concat());
    assert!(out.contains("converting"), "{out}");
    // Mid-way, show does not claim compliance for what is still in the clear.
    let show: serde_json::Value =
        serde_json::from_str(&f.ok(&["encryption", "show", "--json"])).unwrap();
    let compliance = show["compliance"].as_str().unwrap();
    assert!(
        compliance.starts_with("NOT YET") && compliance.contains("in the clear"),
        "{compliance}"
    );
    // The same command again waits for the running conversion.
    let out = f.ok(&[&set[..], &["--password-file", pw]].concat());
    assert!(out.contains("Conversion done"), "{out}");
    // One more full loop after the conversion ended.
    let after = loops.load(Ordering::SeqCst);
    while loops.load(Ordering::SeqCst) < after + 2 {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    let errors = errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "the reader saw: {:?}",
        &errors[..errors.len().min(5)]
    );
    eprintln!("reader: {} full passes", loops.load(Ordering::SeqCst));

    let show: serde_json::Value =
        serde_json::from_str(&f.ok(&["encryption", "show", "--json"])).unwrap();
    assert_eq!(show["encrypted"], true);
    assert_eq!(show["fips_mode"], "validated");
    assert!(show["keystore"]["converting_from"].is_null(), "{show}");
    assert!(
        show["compliance"]
            .as_str()
            .unwrap()
            .starts_with("FIPS mode validated"),
        "{show}"
    );
    // Done means nothing in the clear is left, not even in the metadata
    // checkpoint (whose base was taken before the conversion).
    let hits = find_bytes(&f.store(), marker.as_bytes());
    assert!(
        hits.is_empty(),
        "plaintext in the store once done: {hits:?}"
    );
    f.unmount();
    let (records, metadata) = f.scan_generations();
    assert_eq!(
        records,
        vec![r#"{"Key":0}"#.to_string()],
        "records left behind"
    );
    assert_eq!(
        metadata,
        vec!["key generation 0".to_string()],
        "metadata left behind"
    );
    let hits = find_bytes(&f.store(), marker.as_bytes());
    assert!(hits.is_empty(), "plaintext in the store: {hits:?}");
    f.mount();
    assert_eq!(hashes(&f.mnt()), expected, "contents changed");
}

#[test]
fn rotate_key_survives_sigkill_at_five_random_moments() {
    let f = Fixture::new(&[]);
    f.mount();
    let src = tempfile::tempdir().unwrap();
    for i in 0..12u64 {
        std::fs::write(
            src.path().join(format!("r{i}")),
            random_bytes(100 + i, 8 << 20),
        )
        .unwrap();
    }
    copy_repo_parts(&["src"], &src.path().join("tree"));
    copy_repo_parts(&["src"], &f.mnt().join("tree"));
    for i in 0..12u64 {
        std::fs::copy(
            src.path().join(format!("r{i}")),
            f.mnt().join(format!("r{i}")),
        )
        .unwrap();
    }
    f.unmount(); // everything committed
    f.mount();
    let chunks_before = f.status()["chunks"].as_u64().unwrap();
    f.start_rotation("24M");
    // Written under the new key while the original still waits for its
    // conversion: the two must end up as the same chunks.
    let copy = f.mnt().join("r0-copy");
    std::fs::copy(src.path().join("r0"), &copy).unwrap();
    std::fs::File::open(&copy).unwrap().sync_all().unwrap();
    let mut rng = rand::thread_rng();
    let mut done_before = 0u64;
    for kill in 0..5 {
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..700)));
        let p = f.status()["conversion"].clone();
        assert_eq!(p["state"], "converting", "kill {kill}: {p}");
        f.kill_daemon();
        let recorded: serde_json::Value =
            serde_json::from_str(&f.ok(&["status", "--json"])).unwrap();
        let done = recorded["conversion"]["bytes_done"].as_u64().unwrap();
        assert!(
            done >= done_before,
            "progress went back: {done} < {done_before}"
        );
        done_before = done;
        eprintln!("kill {kill}: {done} bytes converted so far");
        f.mount(); // resumes the conversion
    }
    f.wait_for_conversion();
    diff(&src.path().join("tree"), &f.mnt().join("tree"));
    for i in 0..12u64 {
        let a = std::fs::read(src.path().join(format!("r{i}"))).unwrap();
        let b = std::fs::read(f.mnt().join(format!("r{i}"))).unwrap();
        assert!(a == b, "r{i} differs");
    }
    assert!(std::fs::read(&copy).unwrap() == random_bytes(100, 8 << 20));
    assert_eq!(
        f.status()["chunks"].as_u64().unwrap(),
        chunks_before,
        "the copy written during the conversion did not dedup with the converted original"
    );
    f.unmount();
    let (records, metadata) = f.scan_generations();
    assert_eq!(
        records,
        vec![r#"{"Key":1}"#.to_string()],
        "records under the old key"
    );
    assert_eq!(metadata, vec!["key generation 1".to_string()]);
    for name in ["keystore.json", "keystore.json.bak"] {
        let text = std::fs::read_to_string(f.store().join("keystore").join(name)).unwrap();
        assert!(!text.contains("retiring"), "{name} keeps the old key");
    }
}
