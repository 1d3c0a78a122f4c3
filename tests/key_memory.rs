//! Keystore must-show 5: key bytes never reach a core dump. A child process
//! unlocks a store and builds the chunk cipher (XTS key schedules), then
//! waits; the test takes a core of it with gcore (gdb honours the
//! MADV_DONTDUMP flag the key pages carry, as the kernel does) and searches
//! it for the volume key, the XTS key halves (which are also the first round
//! keys of each AES-256 schedule), and the password. It also checks that the
//! child is not dumpable and holds locked memory.
//!
//! The same check runs in FIPS mode validated, where the keys are used
//! through AWS-LC's module (its per-call contexts live on the module's heap
//! and must be gone, cleansed, once a call returns), with the metadata
//! sealer in use too.
//!
//! Needs root and gdb's `gcore` (scripts/test.sh installs gdb).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use datastore::crypto::seal::{MetaSealer, NONCE_BLOCK};
use datastore::crypto::{ChunkCrypto, FingerprintAlg};
use keystore::{FipsMode, KatSet, Keystore, SlotOptions};

fn opts() -> SlotOptions {
    SlotOptions {
        kdf_target: Duration::from_millis(1),
    }
}

#[test]
fn key_memory_child() {
    let Ok(dir) = std::env::var("DATASTORE_KEYMEM_CHILD") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let mut ks = Keystore::open(&dir, &dir.join("boot")).unwrap();
    let password = zeroize::Zeroizing::new(std::fs::read_to_string(dir.join("pw")).unwrap());
    std::fs::remove_file(dir.join("pw")).unwrap();
    let vk = ks.unlock(password.as_bytes(), &KatSet::embedded()).unwrap();
    drop(password);
    let alg = if vk.provider().is_validated() {
        FingerprintAlg::HmacSha256
    } else {
        FingerprintAlg::Blake3Keyed
    };
    let crypto = ChunkCrypto::new(vk.provider(), vk.xts_key(), vk.fingerprint_key(), alg).unwrap();
    let sealer = MetaSealer::new(vk.provider(), vk.metadata_key(), NONCE_BLOCK).unwrap();
    // Use the keys once so they are live, as in a serving daemon.
    let mut buf = vec![7u8; 4096];
    crypto
        .cipher
        .as_ref()
        .unwrap()
        .encrypt(&mut buf, &[1u8; 32])
        .unwrap();
    crypto.fingerprinter.fingerprint(&buf).unwrap();
    let sealed = sealer.seal(b"row", b"metadata").unwrap();
    sealer.open(b"row", &sealed).unwrap();
    sealer.name_mac(1, b"name").unwrap();
    std::fs::write(dir.join("ready"), b"1").unwrap();
    std::thread::sleep(Duration::from_secs(120));
    drop((vk, crypto, sealer));
}

#[test]
fn core_dump_of_an_unlocked_process_holds_no_key_or_password() {
    core_dump_holds_no_key_or_password(FipsMode::Disabled);
}

#[cfg(feature = "fips")]
#[test]
fn core_dump_in_fips_mode_validated_holds_no_key_or_password() {
    core_dump_holds_no_key_or_password(FipsMode::Validated);
}

fn core_dump_holds_no_key_or_password(mode: FipsMode) {
    assert!(
        Command::new("gcore")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok(),
        "gcore (Debian package gdb) is required: scripts/test.sh installs it"
    );
    let dir = tempfile::tempdir().unwrap();
    // Made at run time: a literal would sit in the (shared) test binary.
    let password = format!(
        "memory-test {:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let (_ks, vk, _rk) = Keystore::create(
        dir.path(),
        "mem",
        &dir.path().join("boot"),
        password.as_bytes(),
        mode,
        &opts(),
    )
    .unwrap();
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        (
            "xts key half 1 (= first AES round keys of K1)",
            vk.xts_key()[..32].to_vec(),
        ),
        (
            "xts key half 2 (= first AES round keys of K2)",
            vk.xts_key()[32..].to_vec(),
        ),
        ("fingerprint key", vk.fingerprint_key().to_vec()),
        ("metadata key", vk.metadata_key().to_vec()),
        (
            "metadata epoch key of the child's open (epoch 2)",
            keystore::Provider::DEFAULT
                .kbkdf_hmac_sha256(vk.metadata_key(), b"datastore meta epoch v1\0\0\0\x02")
                .unwrap()
                .to_vec(),
        ),
        ("password", password.as_bytes().to_vec()),
    ];
    drop(vk);
    std::fs::write(dir.path().join("pw"), &password).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "key_memory_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DATASTORE_KEYMEM_CHILD", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !dir.path().join("ready").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "child never unlocked"
        );
        assert!(child.try_wait().unwrap().is_none(), "child died");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let vmlck = field("VmLck:");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    std::fs::write(dir.path().join("smaps"), &maps).unwrap();
    let core_prefix = dir.path().join("core");
    let out = Command::new("gcore")
        .arg("-o")
        .arg(&core_prefix)
        .arg(pid.to_string())
        .output()
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(vmlck > 0, "VmLck is {vmlck} kB in an unlocked process");
    let core_path = dir.path().join(format!("core.{pid}"));
    assert!(
        out.status.success() && core_path.exists(),
        "gcore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut core = Vec::new();
    std::fs::File::open(&core_path)
        .unwrap()
        .read_to_end(&mut core)
        .unwrap();
    assert!(core.len() > 1 << 20, "core is implausibly small");
    let leaks: Vec<String> = secrets
        .iter()
        .filter_map(|(what, bytes)| {
            let at = core.windows(bytes.len()).position(|w| w == &bytes[..])?;
            Some(format!("{what} at core offset {at:#x}"))
        })
        .collect();
    if !leaks.is_empty() {
        let kept = dir.keep();
        panic!(
            "the core dump holds secrets: {leaks:?} (core and smaps kept in {})",
            kept.display()
        );
    }
}
