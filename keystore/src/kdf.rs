//! Password -> key-encryption key (KEK).
//!
//! Argon2id (default) or PBKDF2-HMAC-SHA-256 (FIPS mode). Parameters are
//! calibrated when a slot is made so one derivation takes about the target
//! time on this machine (like cryptsetup's --iter-time), never below the
//! minimums. Every derivation counts in `derivations()`, so tests can prove
//! that each unlock attempt paid the full cost.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::KeystoreError;
use crate::provider::{Argon2Params, Provider};
use crate::secmem::LockedBox;

/// Floors: Argon2id 19 MiB / t=2 (OWASP), PBKDF2 600,000 iterations.
pub const ARGON2_MIN_M_KIB: u32 = 19 * 1024;
pub const ARGON2_MIN_T: u32 = 2;
pub const PBKDF2_MIN_ITERATIONS: u32 = 600_000;
const ARGON2_MAX_M_KIB: u32 = 256 * 1024;

thread_local! {
    static DERIVATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many KEKs this thread has derived.
pub fn derivations() -> u64 {
    DERIVATIONS.with(|d| d.get())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "alg", rename_all = "kebab-case")]
pub enum Kdf {
    Argon2id { m_kib: u32, t: u32, p: u32 },
    Pbkdf2Sha256 { iterations: u32 },
}

impl Kdf {
    pub fn is_approved(&self) -> bool {
        matches!(self, Kdf::Pbkdf2Sha256 { .. })
    }

    pub fn describe(&self) -> String {
        match self {
            Kdf::Argon2id { m_kib, t, p } => format!("argon2id (m={m_kib} KiB, t={t}, p={p})"),
            Kdf::Pbkdf2Sha256 { iterations } => {
                format!("pbkdf2-hmac-sha256 ({iterations} iterations)")
            }
        }
    }

    /// Rejects parameters below the floors (a tampered file must not be able
    /// to make a slot cheap to attack) or absurdly high (denial of service).
    pub fn validate(&self) -> Result<(), KeystoreError> {
        let ok = match *self {
            Kdf::Argon2id { m_kib, t, p } => {
                (ARGON2_MIN_M_KIB..=ARGON2_MAX_M_KIB * 4).contains(&m_kib)
                    && (ARGON2_MIN_T..=64).contains(&t)
                    && (1..=16).contains(&p)
            }
            Kdf::Pbkdf2Sha256 { iterations } => {
                (PBKDF2_MIN_ITERATIONS..=100_000_000).contains(&iterations)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(KeystoreError::Corrupt(format!(
                "KDF parameters out of range: {}",
                self.describe()
            )))
        }
    }

    /// Derives the 32-byte KEK into locked memory with `provider` (the
    /// validated provider refuses Argon2id).
    pub fn derive(
        &self,
        provider: Provider,
        secret: &[u8],
        salt: &[u8],
    ) -> Result<LockedBox<[u8; 32]>, KeystoreError> {
        self.validate()?;
        DERIVATIONS.with(|d| d.set(d.get() + 1));
        let mut out = LockedBox::new([0u8; 32])?;
        match *self {
            Kdf::Argon2id { m_kib, t, p } => {
                provider.argon2id(Argon2Params { m_kib, t, p }, secret, salt, &mut out[..])?
            }
            Kdf::Pbkdf2Sha256 { iterations } => {
                provider.pbkdf2_sha256(iterations, salt, secret, &mut out[..])?
            }
        }
        Ok(out)
    }

    /// Picks parameters so one derivation takes about `target` here.
    pub fn calibrate(
        provider: Provider,
        fips: bool,
        target: Duration,
    ) -> Result<Kdf, KeystoreError> {
        let salt = [0u8; 16];
        if fips {
            let probe = 100_000u32;
            let t0 = Instant::now();
            let mut out = [0u8; 32];
            // A 16-byte probe password: inside the module's approved range.
            provider.pbkdf2_sha256(probe, &salt, b"calibration-pass", &mut out)?;
            let per = t0.elapsed().as_secs_f64() / probe as f64;
            let n = (target.as_secs_f64() / per.max(1e-9)) as u64;
            let iterations = n.clamp(PBKDF2_MIN_ITERATIONS as u64, 50_000_000) as u32;
            return Ok(Kdf::Pbkdf2Sha256 { iterations });
        }
        // Argon2id: grow memory first (up to 256 MiB), then passes.
        let mut kdf = Kdf::Argon2id {
            m_kib: ARGON2_MIN_M_KIB,
            t: ARGON2_MIN_T,
            p: 1,
        };
        loop {
            let t0 = Instant::now();
            let Kdf::Argon2id { m_kib, t, p } = kdf else {
                unreachable!()
            };
            let mut out = [0u8; 32];
            provider.argon2id(
                Argon2Params { m_kib, t, p },
                b"calibration",
                &salt,
                &mut out,
            )?;
            let took = t0.elapsed();
            if took * 2 > target {
                return Ok(kdf);
            }
            kdf = if m_kib * 2 <= ARGON2_MAX_M_KIB {
                Kdf::Argon2id {
                    m_kib: m_kib * 2,
                    t,
                    p,
                }
            } else if t < 64 {
                Kdf::Argon2id { m_kib, t: t * 2, p }
            } else {
                return Ok(kdf);
            };
        }
    }
}
