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

use std::sync::Arc;

use keystore::{KeystoreError, Provider};

pub use crate::chunk::KeyGen;

/// Everything the engine needs to turn plaintext chunks into records and
/// back, for one key generation (or for an unencrypted store).
pub struct ChunkCrypto {
    /// The provider every key here came from (the volume's sealer uses it too).
    pub provider: Provider,
    pub generation: KeyGen,
    pub fingerprinter: Fingerprinter,
    /// None for an unencrypted store: payloads are stored as they are.
    pub cipher: Option<ChunkCipher>,
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
            generation: KeyGen::Key(0),
            fingerprinter: Fingerprinter::new(provider, alg, fingerprint_key)?,
            cipher: Some(ChunkCipher::new(provider, xts_key)?),
        })
    }

    /// The same keys, labelled as key generation `g` (records say which).
    pub fn with_generation(mut self, g: u16) -> Self {
        self.generation = KeyGen::Key(g);
        self
    }

    /// An unencrypted store's "crypto": plain BLAKE3 fingerprints, no cipher.
    pub fn plain() -> Result<Self, KeystoreError> {
        Ok(ChunkCrypto {
            provider: Provider::DEFAULT,
            generation: KeyGen::Plain,
            fingerprinter: Fingerprinter::new(Provider::DEFAULT, FingerprintAlg::Blake3, &[0; 32])?,
            cipher: None,
        })
    }
}

/// The chunk keys a running store holds: the current generation (every new
/// record) and, while a conversion runs, the retiring one (reads of records
/// not converted yet).
pub struct KeyRing {
    pub current: Arc<ChunkCrypto>,
    pub retiring: Option<Arc<ChunkCrypto>>,
}

impl KeyRing {
    pub fn single(current: Arc<ChunkCrypto>) -> Self {
        KeyRing {
            current,
            retiring: None,
        }
    }

    /// The keys records of `generation` were written with, if held.
    pub fn for_generation(&self, generation: KeyGen) -> Option<&ChunkCrypto> {
        std::iter::once(&self.current)
            .chain(self.retiring.as_ref())
            .find(|c| c.generation == generation)
            .map(|c| &**c)
    }
}
