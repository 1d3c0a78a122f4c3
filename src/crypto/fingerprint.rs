//! Keyed chunk fingerprints: BLAKE3 in keyed mode (default) or HMAC-SHA-256
//! (FIPS mode). 32 bytes either way. Keyed, so a fingerprint tells nothing
//! about a chunk's content to anyone without the fingerprint key; it is also
//! the MAC that makes XTS tamper-evident (recomputed on every read).

use keystore::{KeystoreError, LockedBox};
use serde::{Deserialize, Serialize};

pub type Fingerprint = [u8; 32];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FingerprintAlg {
    Blake3Keyed,
    HmacSha256,
}

impl FingerprintAlg {
    pub fn name(self) -> &'static str {
        match self {
            FingerprintAlg::Blake3Keyed => "blake3-keyed",
            FingerprintAlg::HmacSha256 => "hmac-sha256",
        }
    }
}

enum Key {
    Blake3(LockedBox<[u8; 32]>),
    Hmac(LockedBox<ring::hmac::Key>),
}

pub struct Fingerprinter {
    key: Key,
}

impl Fingerprinter {
    pub fn new(alg: FingerprintAlg, key: &[u8; 32]) -> Result<Self, KeystoreError> {
        let key = match alg {
            FingerprintAlg::Blake3Keyed => Key::Blake3(LockedBox::new_with(|slot| {
                slot.write(*key);
            })?),
            FingerprintAlg::HmacSha256 => Key::Hmac(LockedBox::new_with(|slot| {
                slot.write(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key));
            })?),
        };
        Ok(Fingerprinter { key })
    }

    pub fn alg(&self) -> FingerprintAlg {
        match self.key {
            Key::Blake3(_) => FingerprintAlg::Blake3Keyed,
            Key::Hmac(_) => FingerprintAlg::HmacSha256,
        }
    }

    pub fn fingerprint(&self, data: &[u8]) -> Fingerprint {
        match &self.key {
            Key::Blake3(k) => *blake3::keyed_hash(k, data).as_bytes(),
            Key::Hmac(k) => {
                let tag = ring::hmac::sign(k, data);
                let mut out = [0u8; 32];
                out.copy_from_slice(tag.as_ref());
                out
            }
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
        let f = Fingerprinter::new(FingerprintAlg::HmacSha256, &key).unwrap();
        assert_eq!(
            hex::encode(f.fingerprint(b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn different_keys_give_different_fingerprints() {
        let a = Fingerprinter::new(FingerprintAlg::Blake3Keyed, &[1; 32]).unwrap();
        let b = Fingerprinter::new(FingerprintAlg::Blake3Keyed, &[2; 32]).unwrap();
        assert_ne!(a.fingerprint(b"x"), b.fingerprint(b"x"));
        assert_eq!(a.fingerprint(b"x"), a.fingerprint(b"x"));
    }
}
