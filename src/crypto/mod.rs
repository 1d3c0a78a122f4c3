//! Cryptography used by the chunk pipeline: keyed fingerprints and the
//! AES-XTS-256 chunk cipher. Key material is held in `keystore::LockedBox`
//! (locked, no-dump, zeroized pages); this module never copies it elsewhere.

mod chunk_cipher;
mod fingerprint;
pub mod seal;

pub use chunk_cipher::{ChunkCipher, MIN_PAYLOAD};
pub use fingerprint::{Fingerprint, FingerprintAlg, Fingerprinter};

use keystore::KeystoreError;

/// Everything the engine needs to turn plaintext chunks into records and back.
pub struct ChunkCrypto {
    pub fingerprinter: Fingerprinter,
    pub cipher: ChunkCipher,
}

impl ChunkCrypto {
    /// Builds the fingerprint key and XTS key schedules in locked memory.
    pub fn new(
        xts_key: &[u8; 64],
        fingerprint_key: &[u8; 32],
        alg: FingerprintAlg,
    ) -> Result<Self, KeystoreError> {
        Ok(ChunkCrypto {
            fingerprinter: Fingerprinter::new(alg, fingerprint_key)?,
            cipher: ChunkCipher::new(xts_key)?,
        })
    }
}
