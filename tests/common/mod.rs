//! Helpers shared by the engine integration tests: a store with fixed test
//! keys, deterministic pseudo-random data, and a store-wide byte search.
#![allow(dead_code)]

pub mod garage;
pub mod mounted;
pub mod s3;

use std::path::Path;
use std::sync::Arc;

use datastore::config::EngineConfig;
use datastore::crypto::{ChunkCrypto, FingerprintAlg};
use datastore::engine::Engine;

pub const TEST_XTS_KEY: [u8; 64] = {
    let mut k = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        k[i] = (i as u8).wrapping_mul(37).wrapping_add(11);
        i += 1;
    }
    k
};
pub const TEST_FP_KEY: [u8; 32] = [0x5a; 32];

pub fn crypto() -> Arc<ChunkCrypto> {
    Arc::new(
        ChunkCrypto::new(
            keystore::Provider::DEFAULT,
            &TEST_XTS_KEY,
            &TEST_FP_KEY,
            FingerprintAlg::Blake3Keyed,
        )
        .unwrap(),
    )
}

pub fn create_store(dir: &Path) {
    create_store_with(dir, &EngineConfig::default());
}

pub fn create_store_with(dir: &Path, config: &EngineConfig) {
    Engine::create(dir, "test-store", config).unwrap();
}

pub fn new_engine(dir: &Path) -> Engine {
    create_store(dir);
    Engine::open(dir, Some(crypto())).unwrap()
}

pub fn open_engine(dir: &Path) -> Engine {
    Engine::open(dir, Some(crypto())).unwrap()
}

/// Deterministic pseudo-random bytes (xorshift64*), fast enough for GiBs.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A tool the test scripts install: on PATH or in cargo's bin directory.
pub fn installed_tool(name: &str, how: &str) -> std::path::PathBuf {
    let cargo_bin = std::env::var("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"))
        .join("bin");
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(std::iter::once(cargo_bin))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is missing: scripts/test.sh installs it ({how})"))
}

/// `cp -a` of each of this repository's `parts` into `dest`.
pub fn copy_repo_parts(parts: &[&str], dest: &Path) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for part in parts {
        let o = std::process::Command::new("cp")
            .arg("-a")
            .arg(repo.join(part))
            .arg(dest)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "cp {part}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// A loopback TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Total size of the files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
}

/// Every (file, offset) under `dir` where `needle` occurs.
pub fn find_bytes(dir: &Path, needle: &[u8]) -> Vec<(String, usize)> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            hits.extend(find_bytes(&p, needle));
        } else if p.is_file() {
            // (not the control socket)
            let data = std::fs::read(&p).unwrap();
            for (i, w) in data.windows(needle.len()).enumerate() {
                if w == needle {
                    hits.push((p.display().to_string(), i));
                }
            }
        }
    }
    hits
}

/// Runs the `datastore` binary on `store`, with boot keys under `home` and
/// a fast KDF, no stdin. Panics with its stderr when it fails.
/// Sets extended attribute `name` of `p` (following symlinks); panics
/// with the errno on failure.
pub fn set_xattr(p: &Path, name: &std::ffi::CStr, value: &[u8]) {
    let path = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C strings and a buffer of the given length.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
}

/// Whether `p` has a non-empty extended attribute `name`.
pub fn has_xattr(p: &Path, name: &std::ffi::CStr) -> bool {
    let path = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string; a zero size only asks for the length.
    let rc = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    rc > 0
}

pub fn datastore_ok(home: &Path, store: &Path, args: &[&str]) -> String {
    let o = datastore(home, store, args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Runs the `datastore` binary (see `datastore_ok`) and returns its output.
pub fn datastore(home: &Path, store: &Path, args: &[&str]) -> std::process::Output {
    datastore_env(home, store, args, &[])
}

/// `datastore` with extra environment variables.
pub fn datastore_env(
    home: &Path,
    store: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_datastore"))
        .args(args)
        .envs(env.iter().copied())
        .env("DATASTORE_STORE", store)
        .env("DATASTORE_BOOT_KEY_DIR", home.join("boot"))
        .env("DATASTORE_KDF_TARGET_MS", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}
