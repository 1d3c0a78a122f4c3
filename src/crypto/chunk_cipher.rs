//! AES-XTS-256 for chunk payloads, through the store's crypto provider.
//!
//! One chunk payload (after compression) is one XTS data unit. The tweak is
//! the first 16 bytes of the chunk's keyed fingerprint, so the ciphertext
//! does not depend on where the record is stored (GC moves records without
//! re-encrypting). Payloads shorter than 16 bytes (XTS's minimum) are padded
//! with zero bytes to 16; the record header keeps the true length. Both
//! providers produce the same bytes, so records read the same whichever
//! provider wrote them.

use keystore::{KeystoreError, LockedBox, Provider, XtsKey};

use super::Fingerprint;

/// Smallest payload XTS accepts; shorter ones are zero-padded to this.
pub const MIN_PAYLOAD: usize = 16;

pub struct ChunkCipher {
    xts: LockedBox<XtsKey>,
}

fn tweak_of(fp: &Fingerprint) -> [u8; 16] {
    let mut t = [0u8; 16];
    t.copy_from_slice(&fp[..16]);
    t
}

impl ChunkCipher {
    /// Builds the key (schedules or key bytes) directly in locked memory.
    pub fn new(provider: Provider, key: &[u8; 64]) -> Result<Self, KeystoreError> {
        let xts = LockedBox::try_new_with(|| provider.xts256(key))?;
        Ok(ChunkCipher { xts })
    }

    /// Pads `payload` to at least 16 bytes and encrypts it in place.
    pub fn encrypt(&self, payload: &mut Vec<u8>, fp: &Fingerprint) -> Result<(), KeystoreError> {
        if payload.len() < MIN_PAYLOAD {
            payload.resize(MIN_PAYLOAD, 0);
        }
        self.xts.encrypt_unit(payload, &tweak_of(fp))
    }

    /// Encrypts a payload already padded to at least 16 bytes.
    pub fn encrypt_in_place(
        &self,
        payload: &mut [u8],
        fp: &Fingerprint,
    ) -> Result<(), KeystoreError> {
        self.xts.encrypt_unit(payload, &tweak_of(fp))
    }

    /// Decrypts in place (the caller truncates the padding away).
    pub fn decrypt(&self, ciphertext: &mut [u8], fp: &Fingerprint) -> Result<(), KeystoreError> {
        self.xts.decrypt_unit(ciphertext, &tweak_of(fp))
    }
}
