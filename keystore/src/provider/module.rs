//! The validated provider's primitives on aws-lc-rs (feature `fips`, linked
//! against AWS-LC's FIPS module). Each service call goes through
//! `ffi::indicated`, so a call the module does not report approved is an
//! error. Key setup (HMAC/GCM contexts) is not a service on its own: the
//! indicator counts at the operation that uses the key.
//!
//! Key memory: HMAC keys are aws-lc-rs values held inline (in the caller's
//! `LockedBox`). An AES-GCM key is kept as its 32 bytes (`ModuleGcm`, also in
//! a `LockedBox`) and the module's context, which lives on the module's
//! heap, is built for each call and freed (cleansed by the module) at once,
//! so no AES key schedule stays in ordinary heap memory.

use std::num::NonZeroU32;

use aws_lc_rs::{aead, digest, hmac, kdf, rand};

use super::ffi::{self, indicated};
use super::services::Service;
use super::{ModuleIdentity, GCM_NONCE_LEN};
use crate::error::{KeystoreError, ModuleError};

/// Checks the module itself: FIPS mode on and its self-tests passing.
pub fn bring_up() -> Result<ModuleIdentity, ModuleError> {
    let name = ffi::module_name();
    let fips_mode = ffi::fips_mode() && !super::break_test("module");
    if !fips_mode {
        return Err(ModuleError::NotFipsMode { name });
    }
    let power_on_self_tests = ffi::module_self_test();
    if !power_on_self_tests {
        return Err(ModuleError::PowerOnSelfTests { name });
    }
    Ok(ModuleIdentity {
        name,
        fips_mode,
        power_on_self_tests,
    })
}

pub fn fill_random(out: &mut [u8]) -> Result<(), KeystoreError> {
    indicated(Service::Drbg, || {
        rand::fill(out).map_err(|_| KeystoreError::Random)
    })
}

pub fn sha256(data: &[u8]) -> Result<[u8; 32], KeystoreError> {
    indicated(Service::Sha256, || {
        Ok(digest::digest(&digest::SHA256, data)
            .as_ref()
            .try_into()
            .expect("32 bytes"))
    })
}

pub fn hmac_key(key: &[u8]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, key)
}

pub fn hmac_sign(key: &hmac::Key, parts: &[&[u8]]) -> Result<[u8; 32], KeystoreError> {
    indicated(Service::HmacSha256, || {
        let mut ctx = hmac::Context::with_key(key);
        for p in parts {
            ctx.update(p);
        }
        Ok(ctx.sign().as_ref().try_into().expect("32 bytes"))
    })
}

pub fn kbkdf_hmac_sha256(key: &[u8], info: &[u8]) -> Result<[u8; 32], KeystoreError> {
    let alg = kdf::get_kbkdf_ctr_hmac_algorithm(kdf::KbkdfCtrHmacAlgorithmId::Sha256)
        .ok_or(KeystoreError::Crypto("KBKDF-HMAC-SHA-256 unavailable"))?;
    indicated(Service::Kbkdf, || {
        let mut out = [0u8; 32];
        kdf::kbkdf_ctr_hmac(alg, key, info, &mut out)
            .map_err(|_| KeystoreError::Crypto("KBKDF failed"))?;
        Ok(out)
    })
}

pub fn pbkdf2_sha256(
    iterations: NonZeroU32,
    salt: &[u8],
    password: &[u8],
    out: &mut [u8],
) -> Result<(), KeystoreError> {
    ffi::pbkdf2_sha256(iterations.get(), salt, password, out)
}

/// An AES-256-GCM key for the module: only its bytes are kept.
pub struct ModuleGcm([u8; 32]);

impl Drop for ModuleGcm {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl ModuleGcm {
    /// The module's context for one call (freed and cleansed on drop).
    fn context(&self) -> Result<aead::RandomizedNonceKey, KeystoreError> {
        aead::RandomizedNonceKey::new(&aead::AES_256_GCM, &self.0)
            .map_err(|_| KeystoreError::Crypto("the FIPS module refused the AES-256-GCM key"))
    }
}

pub fn gcm_key(key: &[u8; 32]) -> Result<ModuleGcm, KeystoreError> {
    let k = ModuleGcm(*key);
    k.context()?;
    Ok(k)
}

pub fn gcm_seal(
    key: &ModuleGcm,
    aad: &[u8],
    in_out: &mut Vec<u8>,
) -> Result<[u8; GCM_NONCE_LEN], KeystoreError> {
    let key = key.context()?;
    indicated(Service::GcmSeal, || {
        let nonce = key
            .seal_in_place_append_tag(aead::Aad::from(aad), in_out)
            .map_err(|_| KeystoreError::Crypto("AES-256-GCM seal failed"))?;
        Ok(*nonce.as_ref())
    })
}

pub fn gcm_open(
    key: &ModuleGcm,
    nonce: [u8; GCM_NONCE_LEN],
    aad: &[u8],
    in_out: &mut [u8],
) -> Result<usize, KeystoreError> {
    let key = key.context()?;
    indicated(Service::GcmOpen, || {
        key.open_in_place(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(aad),
            in_out,
        )
        .map(|p| p.len())
        .map_err(|_| KeystoreError::Tampered)
    })
}
