//! The `datastore` command as admins and scripts use it: init, encryption
//! show/set/password/startup/shipping-mode, scrub, gc, and exit codes.

use std::path::Path;
use std::process::{Command, Output, Stdio};

const PW: &str = "correct horse battery staple";

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn store(&self) -> std::path::PathBuf {
        self.dir.path().join("store")
    }
    /// Runs datastore with `stdin` as its input (no TTY).
    fn run(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_datastore"))
            .args(args)
            .env("DATASTORE_STORE", self.store())
            .env("DATASTORE_BOOT_KEY_DIR", self.dir.path().join("boot"))
            .env("DATASTORE_KDF_TARGET_MS", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The command may exit before reading (e.g. a bad path): ignore EPIPE.
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        child.wait_with_output().unwrap()
    }
    fn ok(&self, args: &[&str], stdin: &str) -> String {
        let o = self.run(args, stdin);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
    fn show(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["encryption", "show", "--json"], "")).unwrap()
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn init_prints_recovery_key_and_show_reports_the_truth() {
    let env = Env::new();
    let out = env.ok(&["init"], &format!("{PW}\n"));
    let recovery = out
        .lines()
        .find(|l| l.trim().len() == 79 && l.contains('-'))
        .expect("recovery key line");
    assert_eq!(recovery.trim().split('-').count(), 16);
    let s = env.show();
    assert_eq!(s["fips_mode"], "disabled");
    assert_eq!(s["keystore"]["startup"], "locked");
    assert_eq!(s["keystore"]["shipping_mode"], false);
    assert_eq!(s["self_test"]["passed"], true);
    assert!(s["fingerprint"].as_str().unwrap().contains("BLAKE3"));
    let kinds: Vec<&str> = s["keystore"]["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["password", "recovery"]);
    assert!(!s.to_string().contains(PW));
    // A second init on the same directory is refused.
    let o = env.run(&["init"], &format!("{PW}\n"));
    assert_eq!(code(&o), 8, "{}", stderr(&o));
}

#[test]
fn wrong_password_has_its_own_exit_code() {
    let env = Env::new();
    env.ok(&["init"], &format!("{PW}\n"));
    let o = env.run(&["encryption", "startup", "unlocked"], "wrong password\n");
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("wrong password"));
    assert_eq!(stderr(&o).lines().count(), 1, "one-line error");
}

#[test]
fn password_change_via_files_then_old_fails() {
    let env = Env::new();
    env.ok(&["init"], &format!("{PW}\n"));
    let old = env.dir.path().join("old");
    let new = env.dir.path().join("new");
    std::fs::write(&old, format!("{PW}\n")).unwrap();
    std::fs::write(&new, "a different passphrase\n").unwrap();
    env.ok(
        &[
            "encryption",
            "password",
            "change",
            "--password-file",
            old.to_str().unwrap(),
            "--new-password-file",
            new.to_str().unwrap(),
        ],
        "",
    );
    let o = env.run(
        &[
            "encryption",
            "startup",
            "unlocked",
            "--password-file",
            old.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code(&o), 3);
    env.ok(
        &[
            "encryption",
            "startup",
            "unlocked",
            "--password-file",
            new.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(env.show()["keystore"]["startup"], "unlocked");
}

#[test]
fn add_and_remove_passwords_from_stdin_lines() {
    let env = Env::new();
    env.ok(&["init"], &format!("{PW}\n"));
    env.ok(
        &["encryption", "password", "add"],
        &format!("{PW}\nsecond admin password\n"),
    );
    assert_eq!(env.show()["keystore"]["slots"].as_array().unwrap().len(), 3);
    env.ok(
        &["encryption", "password", "remove"],
        "second admin password\n",
    );
    // The last password stays (the recovery key is for emergencies).
    let o = env.run(&["encryption", "password", "remove"], &format!("{PW}\n"));
    assert_eq!(code(&o), 8, "{}", stderr(&o));
    assert!(stderr(&o).contains("last password"), "{}", stderr(&o));
    assert_eq!(env.show()["keystore"]["slots"].as_array().unwrap().len(), 2);
}

#[test]
fn new_passwords_are_checked_as_they_are_typed() {
    let env = Env::new();
    // Too short (outside FIPS mode too), with the minimum said.
    let o = env.run(&["init"], "short\n");
    assert_eq!(code(&o), 8, "{}", stderr(&o));
    assert!(stderr(&o).contains("at least 8"), "{}", stderr(&o));
    // A second line that differs from the first.
    let o = env.run(&["init"], &format!("{PW}\n{PW}x\n"));
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("differ"), "{}", stderr(&o));
    // Not UTF-8.
    let pw = env.dir.path().join("latin1");
    std::fs::write(&pw, b"caf\xe9 au lait\n").unwrap();
    let o = env.run(&["init", "--password-file", pw.to_str().unwrap()], "");
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("UTF-8"), "{}", stderr(&o));
    assert!(!env.store().join("datastore.toml").exists());
    // The same line twice is a confirmation.
    env.ok(&["init"], &format!("{PW}\n{PW}\n"));
}

#[test]
fn a_store_without_its_configuration_is_not_created_again() {
    let env = Env::new();
    env.ok(&["init"], &format!("{PW}\n"));
    std::fs::remove_file(env.store().join("datastore.toml")).unwrap();
    let mnt = env.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let o = env.run(&["mount", mnt.to_str().unwrap()], &format!("{PW}\n"));
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("lost its configuration"),
        "{}",
        stderr(&o)
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("creating it"));
    // A directory with other files in it is not taken over either.
    let other = env.dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("file"), "x").unwrap();
    let o = env.run(
        &[
            "--store",
            other.to_str().unwrap(),
            "mount",
            mnt.to_str().unwrap(),
        ],
        &format!("{PW}\n"),
    );
    assert_eq!(code(&o), 8, "{}", stderr(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("creating it"));
}

#[test]
fn startup_and_shipping_modes() {
    let env = Env::new();
    env.ok(&["init"], &format!("{PW}\n"));
    env.ok(&["encryption", "startup", "unlocked"], &format!("{PW}\n"));
    let s = env.show();
    let boot = s["keystore"]["boot_key_file"].as_str().unwrap().to_string();
    assert!(Path::new(&boot).exists());
    env.ok(&["encryption", "shipping-mode"], "");
    let s = env.show();
    assert_eq!(s["keystore"]["shipping_mode"], true);
    assert_eq!(s["keystore"]["startup"], "locked");
    assert!(!Path::new(&boot).exists(), "boot key destroyed");
    // A wrong password leaves shipping mode on; the first password unlock
    // ends it and brings the previous startup mode (unlocked) back.
    let o = env.run(&["encryption", "startup", "unlocked"], "not it\n");
    assert_eq!(code(&o), 3);
    assert_eq!(env.show()["keystore"]["shipping_mode"], true);
    env.ok(&["encryption", "startup", "unlocked"], &format!("{PW}\n"));
    let s = env.show();
    assert_eq!(s["keystore"]["shipping_mode"], false);
    assert_eq!(s["keystore"]["startup"], "unlocked");
    assert!(Path::new(&boot).exists(), "a new boot key was made");
}

#[cfg(feature = "fips")]
#[test]
fn fips_validated_switches_kdf_and_fingerprints_and_refuses_short_passwords() {
    let env = Env::new();
    env.ok(&["init"], &format!("{PW}\n"));
    let out = env.ok(
        &["encryption", "set", "--fips-mode", "validated"],
        &format!("{PW}\n"),
    );
    assert!(out.contains("New recovery key"));
    let s = env.show();
    assert_eq!(s["fips_mode"], "validated");
    assert!(s["fingerprint"].as_str().unwrap().contains("HMAC-SHA-256"));
    assert!(s["keystore"]["slots"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["kdf"].as_str().unwrap().starts_with("pbkdf2")));
    assert!(!s["compliance"]
        .as_str()
        .unwrap()
        .to_lowercase()
        .contains("certificate #"));
    let toml = std::fs::read_to_string(env.store().join("datastore.toml")).unwrap();
    assert!(toml.contains("hmac-sha256"));
    // Short passwords are refused in validated mode.
    let env2 = Env::new();
    let o = env2.run(&["init", "--fips-mode", "validated"], "short\n");
    assert_eq!(code(&o), 8, "{}", stderr(&o));
    assert!(stderr(&o).contains("14"));
}

#[test]
fn bad_store_paths_give_clear_errors() {
    let env = Env::new();
    let o = env.run(&["encryption", "show"], "");
    assert_eq!(code(&o), 4);
    assert!(stderr(&o).contains("does not exist"));
    std::fs::write(env.store(), "a file").unwrap();
    let o = env.run(&["encryption", "show"], "");
    assert_eq!(code(&o), 4);
    assert!(stderr(&o).contains("not a directory"));
    let o = env.run(&["init"], &format!("{PW}\n"));
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    std::fs::remove_file(env.store()).unwrap();
    std::fs::create_dir(env.store()).unwrap();
    std::fs::write(env.store().join("datastore.toml"), "format_version = [").unwrap();
    let o = env.run(&["scrub"], "");
    assert_eq!(code(&o), 4);
    assert!(stderr(&o).contains("malformed"), "{}", stderr(&o));
}

#[test]
fn scrub_and_gc_run_without_the_key() {
    let env = Env::new();
    env.ok(&["init"], &format!("{PW}\n"));
    assert!(env.ok(&["scrub"], "").contains("Scrubbed"));
    let r: serde_json::Value = serde_json::from_str(&env.ok(&["gc", "--json"], "")).unwrap();
    assert!(r["bytes_after"].is_number());
    // A fresh store's metadata is not worth compacting.
    assert!(r["metadata_bytes_before"].is_null(), "{r}");
    let o = env.run(&["gc", "--threshold", "2"], "");
    assert_eq!(code(&o), 2);
}
