//! Keyed chunk fingerprints: BLAKE3 in keyed mode (default) or HMAC-SHA-256
//! (FIPS mode), both from the store's crypto provider (the validated one
//! refuses BLAKE3). 32 bytes either way. Keyed, so a fingerprint tells
//! nothing about a chunk's content to anyone without the fingerprint key; it
//! is also the MAC that makes XTS tamper-evident (recomputed on every read).
//! An unencrypted store (`init --no-encryption`) uses plain BLAKE3: there is
//! no key to keep, and its fingerprints are ordinary content hashes.

use keystore::{HmacKey, KeystoreError, LockedBox, Provider};
use serde::{Deserialize, Serialize};

pub use crate::chunk::Fingerprint;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FingerprintAlg {
    /// Unkeyed BLAKE3-256 (unencrypted stores only).
    Blake3,
    Blake3Keyed,
    HmacSha256,
}

impl FingerprintAlg {
    pub fn name(self) -> &'static str {
        match self {
            FingerprintAlg::Blake3 => "blake3",
            FingerprintAlg::Blake3Keyed => "blake3-keyed",
            FingerprintAlg::HmacSha256 => "hmac-sha256",
        }
    }
}

enum Key {
    Unkeyed,
    Blake3(LockedBox<keystore::provider::Blake3Key>),
    Hmac(LockedBox<HmacKey>),
}

pub struct Fingerprinter {
    key: Key,
}

impl Fingerprinter {
    pub fn new(
        provider: Provider,
        alg: FingerprintAlg,
        key: &[u8; 32],
    ) -> Result<Self, KeystoreError> {
        let key = match alg {
            FingerprintAlg::Blake3 => Key::Unkeyed,
            FingerprintAlg::Blake3Keyed => {
                Key::Blake3(LockedBox::try_new_with(|| provider.blake3_keyed(key))?)
            }
            FingerprintAlg::HmacSha256 => {
                Key::Hmac(LockedBox::try_new_with(|| provider.hmac_sha256(key))?)
            }
        };
        Ok(Fingerprinter { key })
    }

    pub fn alg(&self) -> FingerprintAlg {
        match self.key {
            Key::Unkeyed => FingerprintAlg::Blake3,
            Key::Blake3(_) => FingerprintAlg::Blake3Keyed,
            Key::Hmac(_) => FingerprintAlg::HmacSha256,
        }
    }

    pub fn fingerprint(&self, data: &[u8]) -> Result<Fingerprint, KeystoreError> {
        match &self.key {
            Key::Unkeyed => Ok(*blake3::hash(data).as_bytes()),
            Key::Blake3(k) => Ok(k.hash(data)),
            Key::Hmac(k) => k.sign(&[data]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2_shape() {
        // RFC 4231 test case 2 uses a 4-byte key; ring pads keys like HMAC
        // requires, so a 32-byte key of "Jefe" + zeros gives the same MAC.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let f = Fingerprinter::new(Provider::DEFAULT, FingerprintAlg::HmacSha256, &key).unwrap();
        assert_eq!(
            hex::encode(f.fingerprint(b"what do ya want for nothing?").unwrap()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn different_keys_give_different_fingerprints() {
        let new =
            |k| Fingerprinter::new(Provider::DEFAULT, FingerprintAlg::Blake3Keyed, k).unwrap();
        let (a, b) = (new(&[1; 32]), new(&[2; 32]));
        assert_ne!(a.fingerprint(b"x").unwrap(), b.fingerprint(b"x").unwrap());
        assert_eq!(a.fingerprint(b"x").unwrap(), a.fingerprint(b"x").unwrap());
    }
}
