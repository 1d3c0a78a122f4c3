//! The crypto provider boundary. Every cryptographic primitive the keystore
//! and the chunk pipeline use comes from here; nothing outside this module
//! names an implementation crate or picks an algorithm's implementation.
//!
//! Two providers:
//! - default: RustCrypto `aes` (batched XTS, AES-NI), ring (AES-256-GCM,
//!   HMAC-SHA-256, SHA-256, PBKDF2, OS random), argon2, blake3.
//! - validated: AWS-LC's FIPS 140-3 module through aws-lc-rs (feature
//!   `fips`). Only approved services; every service call is bracketed by the
//!   module's service indicator and one it does not report approved is an
//!   error (never a fallback). Argon2id, keyed BLAKE3 and AES-GCM with a
//!   caller-chosen IV are refused.
//!
//! Invariants:
//! - A validated `Provider` exists only after `gate::validated` saw the
//!   module report FIPS mode, its power-on self-tests pass, and the project's
//!   known-answer tests pass through the module.
//! - Both providers give identical bytes for every algorithm they share
//!   (XTS, GCM open, HMAC, KBKDF, PBKDF2, SHA-256), so a store reads the same
//!   whichever provider wrote it (tests compare them on random inputs).
//! - Key objects are meant to live in `LockedBox`es (see `secmem`).

#[cfg(feature = "fips")]
mod ffi;
#[cfg(feature = "fips")]
mod module;
pub mod services;
mod soft;

use crate::error::KeystoreError;

pub use services::Service;

/// The store's FIPS mode (kept in keystore.json): which provider serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FipsMode {
    Disabled,
    Validated,
}

/// Which implementation serves the primitives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Provider {
    validated: bool,
}

/// What the module reports of itself at bring-up (before the project's
/// known-answer tests, which `gate` runs through it).
#[cfg(feature = "fips")]
pub(crate) struct ModuleIdentity {
    pub name: String,
    pub fips_mode: bool,
    pub power_on_self_tests: bool,
}

/// Checks the module itself (FIPS mode on, its self-tests passing).
#[cfg(feature = "fips")]
pub(crate) fn bring_up_module() -> Result<ModuleIdentity, crate::error::ModuleError> {
    module::bring_up()
}

/// Parameters of one Argon2id derivation (default provider only).
#[derive(Clone, Copy, Debug)]
pub struct Argon2Params {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl Provider {
    /// The default provider (always available).
    pub const DEFAULT: Provider = Provider { validated: false };

    /// The validated provider without its gate: only `gate` (after the
    /// module passed its checks) and the known-answer run inside that gate
    /// may hold one.
    pub(crate) const MODULE_UNCHECKED: Provider = Provider { validated: true };

    /// Whether this build carries the FIPS module at all.
    pub fn module_built_in() -> bool {
        cfg!(feature = "fips")
    }

    pub fn is_validated(self) -> bool {
        self.validated
    }

    /// One line naming the implementation (for `encryption show`).
    pub fn describe(self) -> String {
        if self.validated {
            #[cfg(feature = "fips")]
            let name = ffi::module_name();
            #[cfg(not(feature = "fips"))]
            let name = "AWS-LC FIPS module";
            format!("{name} (aws-lc-rs, FIPS 140-3 module) for every service")
        } else {
            "RustCrypto aes (AES-NI) for XTS, ring for GCM/HMAC/SHA-256/PBKDF2/random, argon2, blake3"
                .into()
        }
    }

    /// Fills `out` from the provider's DRBG (the module's CTR-DRBG, or the OS).
    pub fn fill_random(self, out: &mut [u8]) -> Result<(), KeystoreError> {
        #[cfg(feature = "fips")]
        if self.validated {
            return module::fill_random(out);
        }
        soft::fill_random(out)
    }

    pub fn sha256(self, data: &[u8]) -> Result<[u8; 32], KeystoreError> {
        #[cfg(feature = "fips")]
        if self.validated {
            return module::sha256(data);
        }
        Ok(soft::sha256(data))
    }

    /// An HMAC-SHA-256 key.
    pub fn hmac_sha256(self, key: &[u8]) -> Result<HmacKey, KeystoreError> {
        #[cfg(feature = "fips")]
        if self.validated {
            return Ok(HmacKey(HmacImpl::Module(module::hmac_key(key))));
        }
        Ok(HmacKey(HmacImpl::Soft(soft::hmac_key(key))))
    }

    /// A keyed BLAKE3 key; not an approved algorithm, refused when validated.
    pub fn blake3_keyed(self, key: &[u8; 32]) -> Result<Blake3Key, KeystoreError> {
        if self.validated {
            return Err(not_approved("keyed BLAKE3"));
        }
        Ok(Blake3Key(*key))
    }

    /// PBKDF2-HMAC-SHA-256 into `out`.
    pub fn pbkdf2_sha256(
        self,
        iterations: u32,
        salt: &[u8],
        password: &[u8],
        out: &mut [u8],
    ) -> Result<(), KeystoreError> {
        let n = std::num::NonZeroU32::new(iterations)
            .ok_or_else(|| KeystoreError::Corrupt("PBKDF2 with 0 iterations".into()))?;
        #[cfg(feature = "fips")]
        if self.validated {
            return module::pbkdf2_sha256(n, salt, password, out);
        }
        soft::pbkdf2_sha256(n, salt, password, out);
        Ok(())
    }

    /// Argon2id into `out`; not approved, refused when validated.
    pub fn argon2id(
        self,
        params: Argon2Params,
        password: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> Result<(), KeystoreError> {
        if self.validated {
            return Err(not_approved("Argon2id"));
        }
        soft::argon2id(params, password, salt, out)
    }

    /// SP 800-108 KDF in counter mode with HMAC-SHA-256, one 32-byte block:
    /// HMAC(key, 00000001 || info).
    pub fn kbkdf_hmac_sha256(self, key: &[u8], info: &[u8]) -> Result<[u8; 32], KeystoreError> {
        #[cfg(feature = "fips")]
        if self.validated {
            return module::kbkdf_hmac_sha256(key, info);
        }
        Ok(soft::kbkdf_hmac_sha256(key, info))
    }

    /// An AES-256-GCM key.
    pub fn aes256_gcm(self, key: &[u8; 32]) -> Result<GcmKey, KeystoreError> {
        #[cfg(feature = "fips")]
        if self.validated {
            return Ok(GcmKey(GcmImpl::Module(module::gcm_key(key)?)));
        }
        Ok(GcmKey(GcmImpl::Soft(soft::gcm_key(key))))
    }

    /// An AES-XTS-256 key (K1 || K2; equal halves are refused).
    pub fn xts256(self, key: &[u8; 64]) -> Result<XtsKey, KeystoreError> {
        crate::xts::Xts256::check_key(key)?;
        #[cfg(feature = "fips")]
        if self.validated {
            return Ok(XtsKey(XtsImpl::Module(ffi::EvpXts::new(key))));
        }
        Ok(XtsKey(XtsImpl::Soft(crate::xts::Xts256::new(key)?)))
    }
}

/// Test builds only (debug assertions, as the `ci` test profile has):
/// `DATASTORE_FIPS_BREAK_TEST=module|kat` makes the module check or a
/// known-answer test fail, like AWS-LC's own BORINGSSL_FIPS_BREAK_TEST, so
/// tests can prove that a failure refuses unlock. Release builds ignore it;
/// it can only ever make unlock fail, never pass.
#[cfg(feature = "fips")]
pub(crate) fn break_test(what: &str) -> bool {
    cfg!(debug_assertions) && std::env::var("DATASTORE_FIPS_BREAK_TEST").is_ok_and(|v| v == what)
}

pub(crate) fn not_approved(what: &str) -> KeystoreError {
    KeystoreError::NotApproved(what.to_string())
}

/// HMAC-SHA-256 key of either provider.
pub struct HmacKey(HmacImpl);

// Lives in a LockedBox page: boxing a variant would move key material to
// the ordinary heap.
#[allow(clippy::large_enum_variant)]
enum HmacImpl {
    Soft(ring::hmac::Key),
    #[cfg(feature = "fips")]
    Module(aws_lc_rs::hmac::Key),
}

impl HmacKey {
    /// HMAC over the concatenation of `parts`.
    pub fn sign(&self, parts: &[&[u8]]) -> Result<[u8; 32], KeystoreError> {
        match &self.0 {
            HmacImpl::Soft(k) => Ok(soft::hmac_sign(k, parts)),
            #[cfg(feature = "fips")]
            HmacImpl::Module(k) => module::hmac_sign(k, parts),
        }
    }
}

/// Keyed BLAKE3 (default provider only).
pub struct Blake3Key([u8; 32]);

impl Blake3Key {
    pub fn hash(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.0, data).as_bytes()
    }
}

impl Drop for Blake3Key {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// AES-256-GCM key of either provider.
pub struct GcmKey(GcmImpl);

// Lives in a LockedBox page: boxing a variant would move key material to
// the ordinary heap.
#[allow(clippy::large_enum_variant)]
enum GcmImpl {
    Soft(ring::aead::LessSafeKey),
    #[cfg(feature = "fips")]
    Module(module::ModuleGcm),
}

pub const GCM_NONCE_LEN: usize = 12;
pub const GCM_TAG_LEN: usize = 16;

impl GcmKey {
    /// Seals `in_out` in place, appends the tag, returns the nonce. The
    /// nonce is random: the module generates it inside its boundary (the
    /// approved way), the default provider draws it from the OS.
    pub fn seal_random_nonce(
        &self,
        aad: &[u8],
        in_out: &mut Vec<u8>,
    ) -> Result<[u8; GCM_NONCE_LEN], KeystoreError> {
        match &self.0 {
            GcmImpl::Soft(k) => soft::gcm_seal_random(k, aad, in_out),
            #[cfg(feature = "fips")]
            GcmImpl::Module(k) => module::gcm_seal(k, aad, in_out),
        }
    }

    /// Seals with a caller-chosen nonce (deterministic counters). The
    /// validated module does not approve GCM encryption with an external
    /// IV, so this is refused there.
    pub fn seal_with_nonce(
        &self,
        nonce: [u8; GCM_NONCE_LEN],
        aad: &[u8],
        in_out: &mut Vec<u8>,
    ) -> Result<(), KeystoreError> {
        match &self.0 {
            GcmImpl::Soft(k) => soft::gcm_seal_with(k, nonce, aad, in_out),
            #[cfg(feature = "fips")]
            GcmImpl::Module(_) => Err(not_approved(
                "AES-256-GCM encryption with a caller-chosen IV",
            )),
        }
    }

    /// Opens ciphertext || tag in place; returns the plaintext length.
    /// Err(WrongPassword) is never returned here: a failed tag is `Tampered`.
    pub fn open(
        &self,
        nonce: [u8; GCM_NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<usize, KeystoreError> {
        match &self.0 {
            GcmImpl::Soft(k) => soft::gcm_open(k, nonce, aad, in_out),
            #[cfg(feature = "fips")]
            GcmImpl::Module(k) => module::gcm_open(k, nonce, aad, in_out),
        }
    }
}

/// AES-XTS-256 key of either provider. One call = one data unit of
/// 16 bytes .. 16 MiB, with a 16-byte tweak.
pub struct XtsKey(XtsImpl);

// Lives in a LockedBox page: boxing a variant would move key material to
// the ordinary heap.
#[allow(clippy::large_enum_variant)]
enum XtsImpl {
    Soft(crate::xts::Xts256),
    #[cfg(feature = "fips")]
    Module(ffi::EvpXts),
}

impl XtsKey {
    pub fn encrypt_unit(&self, unit: &mut [u8], tweak: &[u8; 16]) -> Result<(), KeystoreError> {
        match &self.0 {
            XtsImpl::Soft(x) => {
                x.encrypt_unit(unit, tweak);
                Ok(())
            }
            #[cfg(feature = "fips")]
            XtsImpl::Module(x) => x.transform(unit, tweak, true),
        }
    }

    pub fn decrypt_unit(&self, unit: &mut [u8], tweak: &[u8; 16]) -> Result<(), KeystoreError> {
        match &self.0 {
            XtsImpl::Soft(x) => {
                x.decrypt_unit(unit, tweak);
                Ok(())
            }
            #[cfg(feature = "fips")]
            XtsImpl::Module(x) => x.transform(unit, tweak, false),
        }
    }
}

#[cfg(test)]
mod tests;
