//! FIPS mode `validated` end to end, on real mounts: a store whose every
//! cryptographic call runs inside AWS-LC's FIPS module round-trips a source
//! tree across a remount with only approved services (the daemon's
//! service-indicator counts); short passwords are refused with the reason; a
//! module or known-answer-test failure refuses unlock with exit code 6; a
//! build without the module refuses validated mode and says how to get it.

mod common;

#[cfg(feature = "fips")]
use common::mounted::{diff, Fixture};
use std::process::Output;

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[cfg(feature = "fips")]
fn status(f: &Fixture) -> serde_json::Value {
    serde_json::from_str(&f.ok(&["status", "--json"])).unwrap()
}

/// Asserts every counted service was approved and returns the approved
/// count of `service` (0 when unused).
#[cfg(feature = "fips")]
fn approved(status: &serde_json::Value, service: &str) -> u64 {
    let services = status["crypto_services"]
        .as_array()
        .expect("crypto_services");
    for s in services {
        assert_eq!(s["not_approved"], 0, "non-approved service call: {s}");
    }
    services
        .iter()
        .find(|s| s["service"] == service)
        .map_or(0, |s| s["approved"].as_u64().unwrap())
}

#[cfg(feature = "fips")]
#[test]
fn a_validated_store_round_trips_a_source_tree_with_approved_services_only() {
    let f = Fixture::new(&["--fips-mode", "validated"]);
    f.mount();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tree = f.mnt().join("tree");
    std::fs::create_dir(&tree).unwrap();
    common::copy_repo_parts(
        &["src", "keystore", "docs", "fixtures", "tests", "Cargo.lock"],
        &tree,
    );
    assert!(std::process::Command::new("sync")
        .arg("-f")
        .arg(&tree)
        .status()
        .unwrap()
        .success());
    let st = status(&f);
    assert!(
        st["crypto_module"]["name"]
            .as_str()
            .unwrap()
            .starts_with("AWS-LC FIPS "),
        "{st}"
    );
    assert_eq!(st["crypto_module"]["fips_mode"], true);
    for service in [
        "AES-XTS-256 encrypt",
        "HMAC-SHA-256",
        "AES-256-GCM seal (module-generated IV)",
        "PBKDF2-HMAC-SHA-256",
        "KBKDF (SP 800-108 counter, HMAC-SHA-256)",
    ] {
        assert!(approved(&st, service) > 0, "{service} never ran: {st}");
    }
    f.unmount();
    f.mount();
    for part in ["src", "keystore", "docs", "fixtures", "tests", "Cargo.lock"] {
        if repo.join(part).is_dir() {
            diff(&repo.join(part), &tree.join(part));
        } else {
            assert_eq!(
                std::fs::read(repo.join(part)).unwrap(),
                std::fs::read(tree.join(part)).unwrap()
            );
        }
    }
    let st = status(&f);
    assert!(approved(&st, "AES-XTS-256 decrypt") > 0, "{st}");
    assert!(approved(&st, "AES-256-GCM open") > 0, "{st}");
    let show: serde_json::Value =
        serde_json::from_str(&f.ok(&["encryption", "show", "--json"])).unwrap();
    assert_eq!(show["fips_mode"], "validated");
    assert_eq!(show["self_test"]["passed"], true);
    assert!(
        show["certificate"]
            .as_str()
            .unwrap()
            .starts_with("none claimed"),
        "{show}"
    );
    assert_eq!(show["fingerprint"], "HMAC-SHA-256");
    assert!(show["services_source"].as_str().unwrap().contains("daemon"));
    f.unmount();
}

#[cfg(feature = "fips")]
#[test]
fn validated_mode_refuses_passwords_under_14_bytes_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pw = dir.path().join("pw");
    let init = || {
        let pw = pw.to_str().unwrap();
        let args = ["init", "--fips-mode", "validated", "--password-file", pw];
        common::datastore(dir.path(), &store, &args)
    };
    std::fs::write(&pw, "13 bytes here\n").unwrap();
    let o = init();
    assert_eq!(code(&o), 8, "{}", stderr(&o));
    assert!(stderr(&o).contains("at least 14 bytes"), "{}", stderr(&o));
    std::fs::write(&pw, "fourteen bytes\n").unwrap();
    let o = init();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[cfg(feature = "fips")]
#[test]
fn a_module_or_known_answer_failure_refuses_unlock() {
    let f = Fixture::new(&["--fips-mode", "validated"]);
    let (pw, mnt) = (f.pw(), f.mnt());
    let mount = [
        "mount",
        mnt.to_str().unwrap(),
        "--password-file",
        pw.to_str().unwrap(),
    ];
    for (what, says) in [
        ("module", "does not report FIPS mode"),
        ("kat", "known-answer tests"),
    ] {
        let o = f.run_env(&mount, &[("DATASTORE_FIPS_BREAK_TEST", what)]);
        assert_eq!(code(&o), 6, "{what}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{what}: {}", stderr(&o));
        assert!(!f.is_mounted());
        let o = f.run_env(
            &["encryption", "show", "--json"],
            &[("DATASTORE_FIPS_BREAK_TEST", what)],
        );
        let show: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(show["self_test"]["passed"], false, "{what}: {show}");
        assert!(show["compliance"].as_str().unwrap().contains("FAILED"));
    }
    // Without the simulated failure the same store mounts.
    f.mount();
    f.unmount();
}

#[cfg(not(feature = "fips"))]
#[test]
fn without_the_module_validated_mode_is_refused_with_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "a long enough password\n").unwrap();
    let pw = pw.to_str().unwrap();
    let o = common::datastore(
        dir.path(),
        &store,
        &["init", "--fips-mode", "validated", "--password-file", pw],
    );
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    assert!(stderr(&o).contains("no FIPS module"), "{}", stderr(&o));
    assert!(stderr(&o).contains("cmake"), "{}", stderr(&o));
    common::datastore_ok(dir.path(), &store, &["init", "--password-file", pw]);
    let o = common::datastore(
        dir.path(),
        &store,
        &[
            "encryption",
            "set",
            "--fips-mode",
            "validated",
            "--password-file",
            pw,
        ],
    );
    assert_eq!(code(&o), 6, "{}", stderr(&o));
}

/// Intent log records in validated mode: sealed and opened (at replay
/// after kill -9) by the module, every call approved.
#[cfg(feature = "fips")]
#[test]
fn validated_mode_seals_and_replays_the_intent_log_inside_the_module() {
    use std::os::unix::fs::FileExt;
    let f = Fixture::new(&["--fips-mode", "validated"]);
    f.mount();
    let path = f.mnt().join("db");
    std::fs::write(&path, vec![1u8; 1 << 20]).unwrap();
    std::fs::File::open(f.mnt()).unwrap().sync_all().unwrap();
    let before = status(&f);
    let seals_before = approved(&before, "AES-256-GCM seal (module-generated IV)");
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for i in 0..20u64 {
        file.write_all_at(&[i as u8 + 2; 8192], i * 40_000).unwrap();
        file.sync_data().unwrap();
    }
    let st = status(&f);
    let records = st["intent_log"]["records"].as_u64().unwrap()
        - before["intent_log"]["records"].as_u64().unwrap();
    assert_eq!(records, 20, "{st}");
    let seals = approved(&st, "AES-256-GCM seal (module-generated IV)") - seals_before;
    assert!(seals >= 20, "{seals} module seals for 20 records: {st}");
    f.kill_daemon();
    f.mount();
    let data = std::fs::read(&path).unwrap();
    for i in 0..20usize {
        assert_eq!(data[i * 40_000], i as u8 + 2, "fsynced write {i} lost");
    }
    let st = status(&f);
    assert!(approved(&st, "AES-256-GCM open") > 0, "{st}");
    f.unmount();
}
