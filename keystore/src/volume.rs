//! The volume key: 64-byte AES-XTS-256 data key, 32-byte fingerprint key,
//! 32-byte metadata key, generated from the provider's DRBG, held only in
//! locked memory, zeroized on drop. Borrowed views never outlive the key.
//! The key remembers the provider it was made or unwrapped with: every key
//! object derived from it must come from that same provider.

use crate::error::KeystoreError;
use crate::provider::Provider;
use crate::secmem::LockedBox;

pub const VOLUME_KEY_LEN: usize = 128;

pub struct VolumeKey {
    bytes: LockedBox<[u8; VOLUME_KEY_LEN]>,
    provider: Provider,
}

impl VolumeKey {
    /// A fresh random key (XTS halves guaranteed to differ).
    pub fn generate(provider: Provider) -> Result<Self, KeystoreError> {
        let mut bytes = LockedBox::new([0u8; VOLUME_KEY_LEN])?;
        loop {
            provider.fill_random(&mut bytes[..])?;
            if bytes[..32] != bytes[32..64] {
                break;
            }
        }
        Ok(VolumeKey { bytes, provider })
    }

    /// Takes ownership of key bytes already in locked memory.
    pub(crate) fn from_locked(bytes: LockedBox<[u8; VOLUME_KEY_LEN]>, provider: Provider) -> Self {
        VolumeKey { bytes, provider }
    }

    /// The provider every key object made from this key must use.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    pub(crate) fn as_bytes(&self) -> &[u8; VOLUME_KEY_LEN] {
        &self.bytes
    }

    pub fn xts_key(&self) -> &[u8; 64] {
        self.bytes[..64].try_into().expect("64 bytes")
    }
    pub fn fingerprint_key(&self) -> &[u8; 32] {
        self.bytes[64..96].try_into().expect("32 bytes")
    }
    pub fn metadata_key(&self) -> &[u8; 32] {
        self.bytes[96..128].try_into().expect("32 bytes")
    }

    /// Constant-time equality (tests use it to prove rewraps kept the key).
    pub fn same_as(&self, other: &VolumeKey) -> bool {
        self.bytes
            .iter()
            .zip(other.bytes.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VolumeKey(<redacted>)")
    }
}
