//! Sealing of metadata values (inode records, directory entries, extents)
//! with AES-256-GCM under the metadata key, and the keyed MAC of file names.
//!
//! Nonces are deterministic (SP 800-38D 8.2.1): 32 zero bits || a 64-bit
//! invocation counter. The counter never repeats under one key: each open
//! first durably reserves a block of 2^32 counter values past everything
//! used before (see docs/FORMAT.md), and sealing fails closed when a block
//! runs out. The AAD binds each value to its table and key, so a sealed
//! value moved to another row does not open.

use std::sync::atomic::{AtomicU64, Ordering};

use keystore::{KeystoreError, LockedBox};
use ring::aead;

/// Counter values reserved per open.
pub const NONCE_BLOCK: u64 = 1 << 32;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("metadata nonce block exhausted; remount the store")]
    NoncesExhausted,
    #[error("sealed metadata failed authentication (damaged or tampered)")]
    Tampered,
    #[error("sealed metadata is too short")]
    Short,
}

pub struct MetaSealer {
    key: LockedBox<aead::LessSafeKey>,
    mac: LockedBox<ring::hmac::Key>,
    next: AtomicU64,
    end: u64,
}

impl MetaSealer {
    /// `first` .. `first + NONCE_BLOCK` must be durably reserved by the caller.
    pub fn new(metadata_key: &[u8; 32], first: u64) -> Result<Self, KeystoreError> {
        let key = LockedBox::new_with(|s| {
            s.write(aead::LessSafeKey::new(
                aead::UnboundKey::new(&aead::AES_256_GCM, metadata_key).expect("32-byte key"),
            ));
        })?;
        let mac = LockedBox::new_with(|s| {
            let sub = ring::hmac::sign(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, metadata_key),
                b"datastore name mac v1",
            );
            s.write(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, sub.as_ref()));
        })?;
        Ok(MetaSealer {
            key,
            mac,
            next: AtomicU64::new(first),
            end: first.saturating_add(NONCE_BLOCK),
        })
    }

    /// nonce (12) || ciphertext || tag (16).
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        if n >= self.end {
            return Err(SealError::NoncesExhausted);
        }
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&n.to_le_bytes());
        let mut out = Vec::with_capacity(12 + plain.len() + 16);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                &mut out[12..],
            )
            .map_err(|_| SealError::Tampered)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < 28 {
            return Err(SealError::Short);
        }
        let nonce: [u8; 12] = sealed[..12].try_into().expect("12 bytes");
        let mut buf = sealed[12..].to_vec();
        let plain = self
            .key
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| SealError::Tampered)?;
        let len = plain.len();
        buf.truncate(len);
        Ok(buf)
    }

    /// Keyed MAC of a directory entry name (the dirent table's key).
    pub fn name_mac(&self, parent: u64, name: &[u8]) -> [u8; 32] {
        let mut ctx = ring::hmac::Context::with_key(&self.mac);
        ctx.update(&parent.to_le_bytes());
        ctx.update(name);
        ctx.sign().as_ref().try_into().expect("32 bytes")
    }

    /// The next counter value a new open must reserve from.
    pub fn high_water(&self) -> u64 {
        self.next.load(Ordering::SeqCst).min(self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let s = MetaSealer::new(&[3; 32], 0).unwrap();
        let a = s.seal(b"inode|1", b"hello").unwrap();
        let b = s.seal(b"inode|1", b"hello").unwrap();
        assert_ne!(a, b, "fresh nonce each time");
        assert_eq!(s.open(b"inode|1", &a).unwrap(), b"hello");
        assert!(s.open(b"inode|2", &a).is_err(), "moved to another row");
        let mut t = a.clone();
        t[14] ^= 1;
        assert!(s.open(b"inode|1", &t).is_err());
        let tiny = MetaSealer::new(&[3; 32], u64::MAX - 1).unwrap();
        assert!(tiny.seal(b"", b"").is_ok());
        assert!(matches!(
            tiny.seal(b"", b""),
            Err(SealError::NoncesExhausted)
        ));
    }
}
