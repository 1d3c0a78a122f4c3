//! Keystore must-shows 1-4, 6 and 7: wrong passwords, rotation, slots,
//! shipping mode, FIPS switch and self-test refusal, and defensive parsing.

use std::path::Path;
use std::time::Duration;

use keystore::{
    kdf, FipsMode, KatSet, Keystore, KeystoreError, SlotKind, SlotOptions, StartupMode,
};

const FAST: SlotOptions = SlotOptions {
    kdf_target: Duration::from_millis(1),
};
const PW: &[u8] = b"correct horse battery staple";

fn setup(
    fips: FipsMode,
) -> (
    tempfile::TempDir,
    Keystore,
    keystore::VolumeKey,
    keystore::RecoveryKey,
) {
    let dir = tempfile::tempdir().unwrap();
    let (ks, vk, rk) = Keystore::create(
        dir.path(),
        "store-1",
        &dir.path().join("boot"),
        PW,
        fips,
        &FAST,
    )
    .unwrap();
    (dir, ks, vk, rk)
}

fn reopen(dir: &Path) -> Keystore {
    Keystore::open(dir, &dir.join("boot")).unwrap()
}

#[test]
fn wrong_password_is_its_own_error_and_pays_the_kdf_for_every_slot() {
    let (dir, _ks, vk, _rk) = setup(FipsMode::Disabled);
    let mut ks = reopen(dir.path());
    let before = kdf::derivations();
    assert!(matches!(
        ks.unlock(b"not the password", &KatSet::embedded()),
        Err(KeystoreError::WrongPassword)
    ));
    // One password slot; the recovery slot is only tried for recovery-shaped input.
    assert_eq!(
        kdf::derivations() - before,
        1,
        "a wrong password must run the KDF"
    );
    let before = kdf::derivations();
    let fake_recovery =
        "0000-0000-0000-0000-0000-0000-0000-0000-0000-0000-0000-0000-0000-0000-0000-0000";
    assert!(matches!(
        ks.unlock(fake_recovery.as_bytes(), &KatSet::embedded()),
        Err(KeystoreError::WrongPassword)
    ));
    assert_eq!(
        kdf::derivations() - before,
        2,
        "password and recovery slots both paid"
    );
    assert!(ks.unlock(PW, &KatSet::embedded()).unwrap().same_as(&vk));
}

#[test]
fn change_password_old_fails_new_opens_same_key() {
    let (dir, mut ks, vk, _rk) = setup(FipsMode::Disabled);
    ks.change_password(PW, b"a brand new passphrase", &KatSet::embedded(), &FAST)
        .unwrap();
    let mut ks = reopen(dir.path());
    assert!(matches!(
        ks.unlock(PW, &KatSet::embedded()),
        Err(KeystoreError::WrongPassword)
    ));
    assert!(ks
        .unlock(b"a brand new passphrase", &KatSet::embedded())
        .unwrap()
        .same_as(&vk));
}

#[test]
fn second_password_and_recovery_key_open_and_last_slot_stays() {
    let (dir, mut ks, vk, rk) = setup(FipsMode::Disabled);
    ks.add_password(&vk, b"second admin password", &FAST)
        .unwrap();
    let mut ks = reopen(dir.path());
    assert!(ks
        .unlock(b"second admin password", &KatSet::embedded())
        .unwrap()
        .same_as(&vk));
    assert!(ks
        .unlock(rk.as_str().as_bytes(), &KatSet::embedded())
        .unwrap()
        .same_as(&vk));
    // Recovery key typed in upper case without dashes still opens.
    let typed = rk.as_str().replace('-', "").to_uppercase();
    assert!(ks
        .unlock(typed.as_bytes(), &KatSet::embedded())
        .unwrap()
        .same_as(&vk));
    ks.remove_password(PW, &KatSet::embedded()).unwrap();
    // The last password stays; the recovery key is no password either.
    let mut ks = reopen(dir.path());
    assert!(matches!(
        ks.unlock(PW, &KatSet::embedded()),
        Err(KeystoreError::WrongPassword)
    ));
    assert!(matches!(
        ks.remove_password(b"second admin password", &KatSet::embedded()),
        Err(KeystoreError::Refused(_))
    ));
    assert!(matches!(
        ks.remove_password(rk.as_str().as_bytes(), &KatSet::embedded()),
        Err(KeystoreError::Refused(_))
    ));
    assert!(ks
        .unlock(b"second admin password", &KatSet::embedded())
        .unwrap()
        .same_as(&vk));
    assert!(ks
        .unlock(rk.as_str().as_bytes(), &KatSet::embedded())
        .unwrap()
        .same_as(&vk));
}

#[test]
fn removing_the_last_password_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ks, vk, rk) = Keystore::create(
        dir.path(),
        "s",
        &dir.path().join("boot"),
        PW,
        FipsMode::Disabled,
        &FAST,
    )
    .unwrap();
    drop((vk, rk));
    // Password + recovery: the password stays (the recovery key alone is
    // for emergencies, not the way in).
    assert!(matches!(
        ks.remove_password(PW, &KatSet::embedded()),
        Err(KeystoreError::Refused(_))
    ));
    assert_eq!(ks.info().slots.len(), 2);
    assert!(ks.info().slots.iter().any(|s| s.kind == SlotKind::Password));
}

#[test]
fn unlocked_startup_opens_from_boot_key_and_locked_destroys_it() {
    let (dir, mut ks, vk, _rk) = setup(FipsMode::Disabled);
    ks.set_startup(StartupMode::Unlocked, Some(&vk)).unwrap();
    let key_file = dir.path().join("boot").join("store-1.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let ks2 = reopen(dir.path());
    assert!(ks2
        .unlock_at_boot(&KatSet::embedded())
        .unwrap()
        .unwrap()
        .same_as(&vk));
    ks.set_startup(StartupMode::Locked, None).unwrap();
    assert!(!key_file.exists());
    assert!(reopen(dir.path())
        .unlock_at_boot(&KatSet::embedded())
        .unwrap()
        .is_none());
}

#[test]
fn shipping_mode_leaves_nothing_that_opens_without_a_password() {
    let (dir, mut ks, vk, _rk) = setup(FipsMode::Disabled);
    ks.set_startup(StartupMode::Unlocked, Some(&vk)).unwrap();
    // Keep a copy of the boot key as an attacker who imaged the host would.
    let key_file = dir.path().join("boot").join("store-1.key");
    let stolen_boot_key = std::fs::read(&key_file).unwrap();
    ks.enter_shipping_mode().unwrap();
    assert!(!key_file.exists(), "boot key file destroyed");
    // Every file under the store and the boot-key location, and the old
    // boot key put back: nothing opens without a password.
    std::fs::write(&key_file, &stolen_boot_key).unwrap();
    let ks2 = reopen(dir.path());
    assert!(ks2.in_shipping_mode());
    assert!(ks2.unlock_at_boot(&KatSet::embedded()).unwrap().is_none());
    assert!(ks2.info().slots.iter().all(|s| s.kind != SlotKind::Boot));
    // Even forcing the startup mode back in the file does not help: no slot
    // is wrapped under any stored key.
    let text = std::fs::read_to_string(dir.path().join("keystore/keystore.json")).unwrap();
    let forced = text
        .replace("\"startup\": \"locked\"", "\"startup\": \"unlocked\"")
        .replace("\"shipping\": {", "\"shipping_was\": {");
    let _ = std::fs::write(dir.path().join("keystore/keystore.json"), forced);
    if let Ok(ks3) = Keystore::open(dir.path(), &dir.path().join("boot")) {
        assert!(ks3
            .unlock_at_boot(&KatSet::embedded())
            .unwrap_or(None)
            .is_none());
    }
    std::fs::write(dir.path().join("keystore/keystore.json"), text).unwrap();
    std::fs::remove_file(&key_file).unwrap();
    // First password unlock restores the previous startup mode.
    let mut ks3 = reopen(dir.path());
    assert!(ks3.unlock(PW, &KatSet::embedded()).unwrap().same_as(&vk));
    let ks4 = reopen(dir.path());
    assert!(!ks4.in_shipping_mode());
    assert_eq!(ks4.startup(), StartupMode::Unlocked);
    assert!(ks4
        .unlock_at_boot(&KatSet::embedded())
        .unwrap()
        .unwrap()
        .same_as(&vk));
}

#[test]
fn fips_switch_rewraps_with_pbkdf2_and_reissues_recovery() {
    let (dir, mut ks, vk, old_rk) = setup(FipsMode::Disabled);
    assert!(ks
        .info()
        .slots
        .iter()
        .all(|s| s.kdf.starts_with("argon2id")));
    let new_rk = ks
        .set_fips_mode(FipsMode::Validated, PW, &KatSet::embedded(), &FAST)
        .unwrap()
        .unwrap();
    let mut ks = reopen(dir.path());
    assert_eq!(ks.fips_mode(), FipsMode::Validated);
    assert!(ks
        .info()
        .slots
        .iter()
        .all(|s| s.kdf.starts_with("pbkdf2-hmac-sha256") && s.kdf.contains("iterations")));
    assert!(ks.unlock(PW, &KatSet::embedded()).unwrap().same_as(&vk));
    assert!(ks
        .unlock(new_rk.as_str().as_bytes(), &KatSet::embedded())
        .unwrap()
        .same_as(&vk));
    assert!(ks
        .unlock(old_rk.as_str().as_bytes(), &KatSet::embedded())
        .is_err());
}

#[test]
fn fips_mode_refuses_short_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let r = Keystore::create(
        dir.path(),
        "s",
        &dir.path().join("boot"),
        b"short pw",
        FipsMode::Validated,
        &FAST,
    );
    assert!(matches!(r, Err(KeystoreError::Refused(m)) if m.contains("14")));
}

#[test]
fn corrupted_self_test_vector_refuses_unlock_in_fips_mode() {
    let (dir, _ks, vk, _rk) = setup(FipsMode::Validated);
    let mut ks = reopen(dir.path());
    let text = format!(
        "{}\n{}",
        include_str!("../../fixtures/xts-aes-256.txt"),
        include_str!("../../fixtures/fips-kat.txt")
    )
    .replacen("digest = ba7816bf", "digest = ba7816be", 1);
    assert!(matches!(
        ks.unlock(PW, &KatSet::parse(&text)),
        Err(KeystoreError::SelfTest(_))
    ));
    assert!(ks.unlock(PW, &KatSet::embedded()).unwrap().same_as(&vk));
}

#[test]
fn torn_main_file_falls_back_to_backup() {
    let (dir, _ks, vk, _rk) = setup(FipsMode::Disabled);
    let main = dir.path().join("keystore/keystore.json");
    let len = std::fs::metadata(&main).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&main)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let mut ks = reopen(dir.path());
    assert!(ks.info().loaded_from_backup);
    assert!(ks.unlock(PW, &KatSet::embedded()).unwrap().same_as(&vk));
}

#[test]
fn the_store_holds_no_key_bytes() {
    let (dir, mut ks, vk, _rk) = setup(FipsMode::Disabled);
    ks.set_startup(StartupMode::Unlocked, Some(&vk)).unwrap();
    let bytes = std::fs::read(dir.path().join("keystore/keystore.json")).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    for key in [
        &vk.xts_key()[..16],
        &vk.fingerprint_key()[..16],
        &vk.metadata_key()[..16],
    ] {
        assert!(!text.contains(&hex::encode(key)));
        assert!(!bytes.windows(16).any(|w| w == key));
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = keystore::file::KeystoreFile::parse(&bytes);
        }

        #[test]
        fn mutated_keystore_files_error_or_parse_never_panic(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (_ks, _vk, _rk) = Keystore::create(dir.path(), "s", &dir.path().join("b"), PW, FipsMode::Disabled, &FAST).unwrap();
            let mut bytes = std::fs::read(dir.path().join("keystore/keystore.json")).unwrap();
            for (i, b) in flips {
                let at = i.index(bytes.len());
                bytes[at] = b;
            }
            if let Some(c) = cut {
                let n = c.index(bytes.len());
                bytes.truncate(n);
            }
            if let Ok(f) = keystore::file::KeystoreFile::parse(&bytes) {
                // If it still parses, unlocking must either work or fail cleanly.
                std::fs::write(dir.path().join("keystore/keystore.json"), serde_json::to_vec(&f).unwrap()).unwrap();
                std::fs::remove_file(dir.path().join("keystore/keystore.json.bak")).unwrap();
                let mut ks = Keystore::open(dir.path(), &dir.path().join("b")).unwrap();
                let _ = ks.unlock(PW, &KatSet::embedded());
            }
        }
    }
}

#[test]
fn unlocked_process_holds_locked_memory_and_is_not_dumpable() {
    let (dir, _ks, _vk, _rk) = setup(FipsMode::Disabled);
    let mut ks = reopen(dir.path());
    let vk = ks.unlock(PW, &KatSet::embedded()).unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let vmlck: u64 = status
        .lines()
        .find(|l| l.starts_with("VmLck:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(vmlck > 0, "VmLck is {vmlck} kB with a key loaded");
    assert!(keystore::process_is_hardened());
    drop(vk);
}

#[test]
fn conversion_keeps_the_old_key_under_the_new_one_until_finished() {
    let (dir, mut ks, old, old_rk) = setup(FipsMode::Disabled);
    let kats = KatSet::embedded();
    assert!(ks
        .begin_conversion(b"wrong password!!", FipsMode::Disabled, &kats, &FAST)
        .is_err());
    let (new, new_rk) = ks
        .begin_conversion(PW, FipsMode::Disabled, &kats, &FAST)
        .unwrap();
    assert!(!new.same_as(&old), "a new volume key");
    assert!(matches!(
        ks.begin_conversion(PW, FipsMode::Disabled, &kats, &FAST),
        Err(KeystoreError::Refused(_))
    ));
    let mut ks = reopen(dir.path());
    assert_eq!(ks.generation(), 1);
    let current = ks.unlock(PW, &kats).unwrap();
    assert!(current.same_as(&new));
    assert!(ks.retiring_key(&current).unwrap().unwrap().same_as(&old));
    assert!(ks.unlock(old_rk.as_str().as_bytes(), &kats).is_err());
    assert!(ks
        .unlock(new_rk.as_str().as_bytes(), &kats)
        .unwrap()
        .same_as(&new));
    // The retiring key opens only with the key it is wrapped under.
    assert!(ks.retiring_key(&old).is_err());
    ks.finish_conversion().unwrap();
    for f in ["keystore.json", "keystore.json.bak"] {
        let text = std::fs::read_to_string(dir.path().join("keystore").join(f)).unwrap();
        assert!(!text.contains("retiring"), "{f} still names a retiring key");
    }
    let ks = reopen(dir.path());
    assert!(ks.retiring().is_none());
    assert!(ks.retiring_key(&new).unwrap().is_none());
}
