//! Known-answer self-tests (KATs) for every algorithm the keystore and the
//! chunk cipher use in FIPS mode: AES-XTS-256, AES-256-GCM, SHA-256,
//! HMAC-SHA-256 and PBKDF2-HMAC-SHA-256, from published vectors (see
//! fixtures/README.md), run through a crypto provider (the validated one
//! runs them inside the FIPS module). The vectors are compiled in.
//!
//! Through the validated provider, a vector whose parameters the module does
//! not approve (PBKDF2 salts under 16 bytes or passwords under 14; GCM
//! encryption with a caller-chosen IV) is not sent as that service: PBKDF2
//! vectors out of range are skipped (an in-range one exists), and GCM
//! vectors are checked by opening the published ciphertext plus a
//! seal/open round trip with a module-generated IV.
//!
//! Invariant: `run` fails if any vector fails or if a vector set is missing
//! or malformed; callers refuse to unlock when it fails.

use std::collections::BTreeMap;

use crate::error::KeystoreError;
use crate::provider::Provider;

/// A parsed vector file: section name -> (field -> bytes).
pub struct KatSet {
    sections: Vec<(String, BTreeMap<String, String>)>,
}

const XTS_VECTORS: &str = include_str!("../../fixtures/xts-aes-256.txt");
const OTHER_VECTORS: &str = include_str!("../../fixtures/fips-kat.txt");

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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

    /// A copy with one answer changed (tests and the simulated KAT failure).
    pub fn corrupted(&self) -> Self {
        let mut sections = self.sections.clone();
        if let Some((_, m)) = sections.first_mut() {
            if let Some(v) = m.values_mut().find(|v| v.len() >= 2) {
                let flipped = if v.starts_with('0') { "1" } else { "0" };
                v.replace_range(..1, flipped);
            }
        }
        KatSet { sections }
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

/// Why one vector failed (its line in the report).
#[derive(Debug, thiserror::Error)]
enum VectorFailure {
    #[error("missing field {0}")]
    MissingField(String),
    #[error("field {0} is not hex")]
    NotHex(String),
    #[error("{0} length")]
    Length(&'static str),
    #[error("output differs from the published answer")]
    Differs,
    #[error("open failed on the published ciphertext")]
    OpenFailed,
    #[error("unknown vector kind")]
    UnknownKind,
    #[error(transparent)]
    Provider(#[from] KeystoreError),
}

fn field(m: &BTreeMap<String, String>, k: &str) -> Result<Vec<u8>, VectorFailure> {
    let v = m
        .get(k)
        .ok_or_else(|| VectorFailure::MissingField(k.to_string()))?;
    hex::decode(v).map_err(|_| VectorFailure::NotHex(k.to_string()))
}

fn check(ok: bool) -> Result<(), VectorFailure> {
    if ok {
        Ok(())
    } else {
        Err(VectorFailure::Differs)
    }
}

/// What one vector did.
enum Outcome {
    Passed,
    Skipped(&'static str),
}

fn run_one(
    name: &str,
    m: &BTreeMap<String, String>,
    p: Provider,
) -> Result<Outcome, VectorFailure> {
    if name.starts_with("cavp-xts") || name.starts_with("ieee1619") {
        let key: [u8; 64] = field(m, "key")?
            .try_into()
            .map_err(|_| VectorFailure::Length("key"))?;
        let tweak: [u8; 16] = field(m, "tweak")?
            .try_into()
            .map_err(|_| VectorFailure::Length("tweak"))?;
        let pt = field(m, "plaintext")?;
        let ct = field(m, "ciphertext")?;
        let xts = p.xts256(&key)?;
        let mut buf = pt.clone();
        xts.encrypt_unit(&mut buf, &tweak)?;
        check(buf == ct)?;
        xts.decrypt_unit(&mut buf, &tweak)?;
        check(buf == pt)?;
    } else if name.starts_with("sha256") {
        check(p.sha256(&field(m, "message")?)?[..] == field(m, "digest")?[..])?;
    } else if name.starts_with("hmac-sha256") {
        let key = p.hmac_sha256(&field(m, "key")?)?;
        let mac = key.sign(&[&field(m, "message")?])?;
        check(mac[..] == field(m, "mac")?[..])?;
    } else if name.starts_with("pbkdf2") {
        let iterations: u32 = m
            .get("iterations")
            .and_then(|v| v.parse().ok())
            .ok_or(VectorFailure::MissingField("iterations".into()))?;
        let (salt, password) = (field(m, "salt")?, field(m, "password")?);
        if p.is_validated() && (salt.len() < 16 || password.len() < 14) {
            return Ok(Outcome::Skipped(
                "salt or password shorter than the module approves",
            ));
        }
        let expect = field(m, "dk")?;
        let mut out = vec![0u8; expect.len()];
        p.pbkdf2_sha256(iterations, &salt, &password, &mut out)?;
        check(out == expect)?;
    } else if name.starts_with("aes-256-gcm") {
        let key: [u8; 32] = field(m, "key")?
            .try_into()
            .map_err(|_| VectorFailure::Length("key"))?;
        let key = p.aes256_gcm(&key)?;
        let iv: [u8; 12] = field(m, "iv")?
            .try_into()
            .map_err(|_| VectorFailure::Length("iv"))?;
        let aad = field(m, "aad")?;
        let plain = field(m, "plaintext")?;
        let mut sealed = field(m, "ciphertext")?;
        sealed.extend(field(m, "tag")?);
        if !p.is_validated() {
            let mut buf = plain.clone();
            key.seal_with_nonce(iv, &aad, &mut buf)?;
            check(buf == sealed)?;
        }
        let n = key
            .open(iv, &aad, &mut sealed)
            .map_err(|_| VectorFailure::OpenFailed)?;
        check(sealed[..n] == plain[..])?;
        let mut buf = plain.clone();
        let nonce = key.seal_random_nonce(&aad, &mut buf)?;
        let n = key.open(nonce, &aad, &mut buf)?;
        check(buf[..n] == plain[..])?;
    } else {
        return Err(VectorFailure::UnknownKind);
    }
    Ok(Outcome::Passed)
}

/// Runs every vector in `set`; all algorithm families must be covered.
pub fn run(set: &KatSet, provider: Provider) -> SelfTestReport {
    let mut results = Vec::new();
    let mut passed = true;
    for (name, m) in &set.sections {
        match run_one(name, m, provider) {
            Ok(Outcome::Passed) => results.push(format!("{name}: ok")),
            Ok(Outcome::Skipped(why)) => results.push(format!("{name}: skipped ({why})")),
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
pub fn require(set: &KatSet, provider: Provider) -> Result<SelfTestReport, KeystoreError> {
    let r = run(set, provider);
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
    fn embedded_vectors_pass_through_the_default_provider() {
        let r = run(&KatSet::embedded(), Provider::DEFAULT);
        assert!(r.passed, "{:?}", r.results);
        assert_eq!(r.results.len(), 12);
        assert!(r.results.iter().all(|l| l.ends_with(": ok")));
    }

    #[cfg(feature = "fips")]
    #[test]
    fn embedded_vectors_pass_through_the_fips_module() {
        let p = crate::gate::validated(&KatSet::embedded()).expect("module comes up");
        let r = run(&KatSet::embedded(), p);
        assert!(r.passed, "{:?}", r.results);
        let skipped: Vec<_> = r.results.iter().filter(|l| l.contains("skipped")).collect();
        assert_eq!(skipped.len(), 2, "{:?}", r.results);
        assert!(skipped
            .iter()
            .all(|l| l.starts_with("pbkdf2-hmac-sha256-rfc7914")));
    }

    #[test]
    fn a_corrupted_set_fails() {
        let r = run(&KatSet::embedded().corrupted(), Provider::DEFAULT);
        assert!(!r.passed);
        assert_eq!(r.results.iter().filter(|l| l.contains("FAILED")).count(), 1);
    }

    #[test]
    fn a_corrupted_vector_fails() {
        let text = format!("{XTS_VECTORS}\n{OTHER_VECTORS}").replacen(
            "ciphertext = cbaad0e2",
            "ciphertext = cbaad0e3",
            1,
        );
        let r = run(&KatSet::parse(&text), Provider::DEFAULT);
        assert!(!r.passed);
        assert!(require(&KatSet::parse(&text), Provider::DEFAULT).is_err());
    }
}
