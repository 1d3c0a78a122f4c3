//! The default provider's primitives: ring (GCM, HMAC, SHA-256, PBKDF2, OS
//! random) and argon2. XTS is `crate::xts::Xts256` (RustCrypto `aes`), keyed
//! BLAKE3 is in `Blake3Key`. No state of its own.

use std::num::NonZeroU32;

use ring::aead;
use ring::rand::{SecureRandom, SystemRandom};

use super::{Argon2Params, GCM_NONCE_LEN};
use crate::error::KeystoreError;

pub fn fill_random(out: &mut [u8]) -> Result<(), KeystoreError> {
    SystemRandom::new()
        .fill(out)
        .map_err(|_| KeystoreError::Random)
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .try_into()
        .expect("32 bytes")
}

pub fn hmac_key(key: &[u8]) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key)
}

pub fn hmac_sign(key: &ring::hmac::Key, parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::hmac::Context::with_key(key);
    for p in parts {
        ctx.update(p);
    }
    ctx.sign().as_ref().try_into().expect("32 bytes")
}

pub fn kbkdf_hmac_sha256(key: &[u8], info: &[u8]) -> [u8; 32] {
    hmac_sign(&hmac_key(key), &[&1u32.to_be_bytes(), info])
}

pub fn pbkdf2_sha256(iterations: NonZeroU32, salt: &[u8], password: &[u8], out: &mut [u8]) {
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password,
        out,
    );
}

pub fn argon2id(
    p: Argon2Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), KeystoreError> {
    let params = argon2::Params::new(p.m_kib, p.t, p.p, Some(out.len()))
        .map_err(|e| KeystoreError::Corrupt(format!("argon2 parameters: {e}")))?;
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(password, salt, out)
        .map_err(|e| KeystoreError::Corrupt(format!("argon2: {e}")))
}

pub fn gcm_key(key: &[u8; 32]) -> aead::LessSafeKey {
    aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, key).expect("32-byte key"))
}

pub fn gcm_seal_with(
    key: &aead::LessSafeKey,
    nonce: [u8; GCM_NONCE_LEN],
    aad: &[u8],
    in_out: &mut Vec<u8>,
) -> Result<(), KeystoreError> {
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::from(aad),
        in_out,
    )
    .map_err(|_| KeystoreError::Crypto("AES-256-GCM seal failed"))
}

pub fn gcm_seal_random(
    key: &aead::LessSafeKey,
    aad: &[u8],
    in_out: &mut Vec<u8>,
) -> Result<[u8; GCM_NONCE_LEN], KeystoreError> {
    let mut nonce = [0u8; GCM_NONCE_LEN];
    fill_random(&mut nonce)?;
    gcm_seal_with(key, nonce, aad, in_out)?;
    Ok(nonce)
}

pub fn gcm_open(
    key: &aead::LessSafeKey,
    nonce: [u8; GCM_NONCE_LEN],
    aad: &[u8],
    in_out: &mut [u8],
) -> Result<usize, KeystoreError> {
    key.open_in_place(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::from(aad),
        in_out,
    )
    .map(|p| p.len())
    .map_err(|_| KeystoreError::Tampered)
}
