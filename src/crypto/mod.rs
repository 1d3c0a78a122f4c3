//! Cryptography used by the chunk pipeline and the volume: keyed
//! fingerprints, the AES-XTS-256 chunk cipher and metadata sealing. Every
//! primitive comes from the store's crypto provider (`keystore::provider`:
//! the default one, or AWS-LC's FIPS module in validated mode); this module
//! only decides how the store uses them (tweaks, padding, sealed forms). Key
//! objects live in `keystore::LockedBox` (locked, no-dump, zeroized pages).

pub mod certificate;
mod chunk_cipher;
mod fingerprint;
pub mod seal;

pub use chunk_cipher::{ChunkCipher, MIN_PAYLOAD};
pub use fingerprint::{Fingerprint, FingerprintAlg, Fingerprinter};

use keystore::{KeystoreError, Provider};

/// Everything the engine needs to turn plaintext chunks into records and back.
pub struct ChunkCrypto {
    /// The provider every key here came from (the volume's sealer uses it too).
    pub provider: Provider,
    pub fingerprinter: Fingerprinter,
    pub cipher: ChunkCipher,
}

impl ChunkCrypto {
    /// Builds the fingerprint key and XTS key schedules in locked memory.
    pub fn new(
        provider: Provider,
        xts_key: &[u8; 64],
        fingerprint_key: &[u8; 32],
        alg: FingerprintAlg,
    ) -> Result<Self, KeystoreError> {
        Ok(ChunkCrypto {
            provider,
            fingerprinter: Fingerprinter::new(provider, alg, fingerprint_key)?,
            cipher: ChunkCipher::new(provider, xts_key)?,
        })
    }
}
