//! Known-answer self-tests (KATs) for every algorithm the keystore and the
//! chunk cipher use in FIPS mode: AES-XTS-256, AES-256-GCM, SHA-256,
//! HMAC-SHA-256 and PBKDF2-HMAC-SHA-256, from published vectors (see
//! fixtures/README.md). The vectors are compiled into the binary.
//!
//! Invariant: `run` fails if any vector fails or if a vector set is missing
//! or malformed; callers refuse to unlock when it fails.

use std::collections::BTreeMap;

use ring::{aead, digest, hmac, pbkdf2};

use crate::error::KeystoreError;
use crate::xts::Xts256;

/// A parsed vector file: section name -> (field -> bytes).
pub struct KatSet {
    sections: Vec<(String, BTreeMap<String, String>)>,
}

const XTS_VECTORS: &str = include_str!("../../fixtures/xts-aes-256.txt");
const OTHER_VECTORS: &str = include_str!("../../fixtures/fips-kat.txt");

#[derive(Debug, Clone, serde::Serialize)]
pub struct SelfTestReport {
    pub passed: bool,
    /// Unix seconds when the run finished.
    pub at: u64,
    /// One line per vector: "name: ok" or "name: FAILED (why)".
    pub results: Vec<String>,
}

impl KatSet {
    /// The vectors compiled into this build.
    pub fn embedded() -> Self {
        Self::parse(&format!("{XTS_VECTORS}\n{OTHER_VECTORS}"))
    }

    /// Parses the `[name]` / `key = hex` format of the fixture files.
    pub fn parse(text: &str) -> Self {
        let mut sections: Vec<(String, BTreeMap<String, String>)> = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                sections.push((name.to_string(), BTreeMap::new()));
            } else if let (Some((k, v)), Some(last)) = (line.split_once('='), sections.last_mut()) {
                last.1.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        KatSet { sections }
    }
}

fn field(m: &BTreeMap<String, String>, k: &str) -> Result<Vec<u8>, String> {
    let v = m.get(k).ok_or_else(|| format!("missing field {k}"))?;
    hex::decode(v).map_err(|_| format!("field {k} is not hex"))
}

fn check(ok: bool) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err("output differs from the published answer".into())
    }
}

fn run_one(name: &str, m: &BTreeMap<String, String>) -> Result<(), String> {
    if name.starts_with("cavp-xts") || name.starts_with("ieee1619") {
        let key: [u8; 64] = field(m, "key")?.try_into().map_err(|_| "key length")?;
        let tweak: [u8; 16] = field(m, "tweak")?.try_into().map_err(|_| "tweak length")?;
        let pt = field(m, "plaintext")?;
        let ct = field(m, "ciphertext")?;
        let xts = Xts256::new(&key).map_err(|e| e.to_string())?;
        let mut buf = pt.clone();
        xts.encrypt_unit(&mut buf, &tweak);
        check(buf == ct)?;
        xts.decrypt_unit(&mut buf, &tweak);
        check(buf == pt)
    } else if name.starts_with("sha256") {
        check(
            digest::digest(&digest::SHA256, &field(m, "message")?).as_ref() == field(m, "digest")?,
        )
    } else if name.starts_with("hmac-sha256") {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &field(m, "key")?);
        check(hmac::sign(&key, &field(m, "message")?).as_ref() == field(m, "mac")?)
    } else if name.starts_with("pbkdf2") {
        let iterations: u32 = m
            .get("iterations")
            .and_then(|v| v.parse().ok())
            .ok_or("iterations")?;
        let expect = field(m, "dk")?;
        let mut out = vec![0u8; expect.len()];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(iterations).ok_or("iterations")?,
            &field(m, "salt")?,
            &field(m, "password")?,
            &mut out,
        );
        check(out == expect)
    } else if name.starts_with("aes-256-gcm") {
        let key = aead::LessSafeKey::new(
            aead::UnboundKey::new(&aead::AES_256_GCM, &field(m, "key")?).map_err(|_| "key")?,
        );
        let nonce = aead::Nonce::try_assume_unique_for_key(&field(m, "iv")?).map_err(|_| "iv")?;
        let mut buf = field(m, "plaintext")?;
        let aad = field(m, "aad")?;
        key.seal_in_place_append_tag(nonce, aead::Aad::from(&aad), &mut buf)
            .map_err(|_| "seal")?;
        let mut expect = field(m, "ciphertext")?;
        expect.extend(field(m, "tag")?);
        check(buf == expect)?;
        let nonce = aead::Nonce::try_assume_unique_for_key(&field(m, "iv")?).map_err(|_| "iv")?;
        let opened = key
            .open_in_place(nonce, aead::Aad::from(&aad), &mut buf)
            .map_err(|_| "open failed on the published ciphertext")?;
        check(opened == field(m, "plaintext")?.as_slice())
    } else {
        Err("unknown vector kind".into())
    }
}

/// Runs every vector in `set`; all algorithm families must be covered.
pub fn run(set: &KatSet) -> SelfTestReport {
    let mut results = Vec::new();
    let mut passed = true;
    for (name, m) in &set.sections {
        match run_one(name, m) {
            Ok(()) => results.push(format!("{name}: ok")),
            Err(why) => {
                passed = false;
                results.push(format!("{name}: FAILED ({why})"));
            }
        }
    }
    for family in ["xts", "sha256", "hmac-sha256", "pbkdf2", "aes-256-gcm"] {
        if !set.sections.iter().any(|(n, _)| n.contains(family)) {
            passed = false;
            results.push(format!("{family}: FAILED (no vector)"));
        }
    }
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    SelfTestReport {
        passed,
        at,
        results,
    }
}

/// Runs the vectors and turns a failure into an error naming the vector.
pub fn require(set: &KatSet) -> Result<SelfTestReport, KeystoreError> {
    let r = run(set);
    if r.passed {
        Ok(r)
    } else {
        let failed: Vec<&String> = r.results.iter().filter(|l| l.contains("FAILED")).collect();
        Err(KeystoreError::SelfTest(format!("{failed:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_vectors_pass() {
        let r = run(&KatSet::embedded());
        assert!(r.passed, "{:?}", r.results);
        assert_eq!(r.results.len(), 11);
    }

    #[test]
    fn a_corrupted_vector_fails() {
        let text = format!("{XTS_VECTORS}\n{OTHER_VECTORS}").replacen(
            "ciphertext = cbaad0e2",
            "ciphertext = cbaad0e3",
            1,
        );
        let r = run(&KatSet::parse(&text));
        assert!(!r.passed);
        assert!(require(&KatSet::parse(&text)).is_err());
    }
}
