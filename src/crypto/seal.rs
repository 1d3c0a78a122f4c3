//! Sealing of metadata values (inode records, directory entries, extents)
//! with AES-256-GCM under keys from the metadata key, and the keyed MAC of
//! file names. Both through the store's crypto provider.
//!
//! Two sealed forms (docs/FORMAT.md), told apart by their first 4 bytes:
//! - counter form (default provider): `nonce (12) || ct || tag`, nonce =
//!   4 zero bytes || 64-bit invocation counter (SP 800-38D 8.2.1), key = the
//!   metadata key.
//! - epoch form (validated provider, where the module approves GCM
//!   encryption only with IVs it generates itself): `epoch (4, big-endian,
//!   never 0) || nonce (12, module-generated) || ct || tag`, key =
//!   KBKDF-HMAC-SHA-256(metadata key, "datastore meta epoch v1" || epoch).
//!   Each open of the volume gets a new epoch, i.e. a fresh key, and a key
//!   seals at most 2^32 values (SP 800-38D 8.3's limit for random IVs).
//!
//! Both forms open under both providers, so a store's metadata reads the
//! same whichever provider wrote it. Invariants: a counter never repeats
//! under one key and an epoch key never exceeds its budget: each open first
//! durably reserves a block of 2^32 counter values (the epoch is the block's
//! number) and sealing fails closed when the block runs out. The AAD binds
//! each value to its table and key, so a sealed value moved to another row
//! does not open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use keystore::provider::{GCM_NONCE_LEN, GCM_TAG_LEN};
use keystore::{GcmKey, HmacKey, KeystoreError, LockedBox, Provider};

/// Counter values reserved per open (= seals allowed per epoch key).
pub const NONCE_BLOCK: u64 = 1 << 32;

const EPOCH_LABEL: &[u8] = b"datastore meta epoch v1";
/// Epoch keys kept for opening older values.
const EPOCH_CACHE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("metadata nonce block exhausted; remount the store")]
    NoncesExhausted,
    #[error("sealed metadata failed authentication (damaged or tampered)")]
    Tampered,
    #[error("sealed metadata is too short")]
    Short,
    #[error(transparent)]
    Crypto(KeystoreError),
}

impl From<KeystoreError> for SealError {
    fn from(e: KeystoreError) -> Self {
        match e {
            KeystoreError::Tampered => SealError::Tampered,
            e => SealError::Crypto(e),
        }
    }
}

pub struct MetaSealer {
    provider: Provider,
    /// The metadata key itself (counter form), and the base of epoch keys.
    base: LockedBox<[u8; 32]>,
    base_gcm: LockedBox<GcmKey>,
    mac: LockedBox<HmacKey>,
    /// This open's epoch and its key (validated provider only).
    epoch: Option<(u32, Arc<LockedBox<GcmKey>>)>,
    older: Mutex<HashMap<u32, Arc<LockedBox<GcmKey>>>>,
    next: AtomicU64,
    end: u64,
}

impl MetaSealer {
    /// `first` .. `first + NONCE_BLOCK` must be durably reserved by the
    /// caller; `first` is a multiple of NONCE_BLOCK.
    pub fn new(
        provider: Provider,
        metadata_key: &[u8; 32],
        first: u64,
    ) -> Result<Self, KeystoreError> {
        let base = LockedBox::new_with(|s| {
            s.write(*metadata_key);
        })?;
        let base_gcm = LockedBox::try_new_with(|| provider.aes256_gcm(metadata_key))?;
        let mac = LockedBox::try_new_with(|| {
            let sub = provider
                .hmac_sha256(metadata_key)?
                .sign(&[b"datastore name mac v1"])?;
            provider.hmac_sha256(&sub)
        })?;
        let mut sealer = MetaSealer {
            provider,
            base,
            base_gcm,
            mac,
            epoch: None,
            older: Mutex::new(HashMap::new()),
            next: AtomicU64::new(first),
            end: first.saturating_add(NONCE_BLOCK),
        };
        if provider.is_validated() {
            let epoch = u32::try_from(first / NONCE_BLOCK + 1)
                .map_err(|_| KeystoreError::Refused("metadata epochs exhausted".into()))?;
            sealer.epoch = Some((epoch, sealer.epoch_key(epoch)?));
        }
        Ok(sealer)
    }

    fn epoch_key(&self, epoch: u32) -> Result<Arc<LockedBox<GcmKey>>, KeystoreError> {
        let p = self.provider;
        Ok(Arc::new(LockedBox::try_new_with(|| {
            let k = p.kbkdf_hmac_sha256(
                &self.base[..],
                &[EPOCH_LABEL, &epoch.to_be_bytes()].concat(),
            )?;
            let key = p.aes256_gcm(&k);
            let mut k = k;
            zeroize::Zeroize::zeroize(&mut k);
            key
        })?))
    }

    fn older_key(&self, epoch: u32) -> Result<Arc<LockedBox<GcmKey>>, KeystoreError> {
        if let Some((e, k)) = &self.epoch {
            if *e == epoch {
                return Ok(k.clone());
            }
        }
        let mut cache = self.older.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = cache.get(&epoch) {
            return Ok(k.clone());
        }
        let k = self.epoch_key(epoch)?;
        if cache.len() >= EPOCH_CACHE {
            cache.clear();
        }
        cache.insert(epoch, k.clone());
        Ok(k)
    }

    /// Seals `plain` for the row named by `aad` (see the module comment for
    /// the two forms).
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        if n >= self.end {
            return Err(SealError::NoncesExhausted);
        }
        match &self.epoch {
            Some((epoch, key)) => {
                let mut body = Vec::with_capacity(plain.len() + GCM_TAG_LEN);
                body.extend_from_slice(plain);
                let nonce = key.seal_random_nonce(aad, &mut body)?;
                let mut out = Vec::with_capacity(4 + GCM_NONCE_LEN + body.len());
                out.extend_from_slice(&epoch.to_be_bytes());
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&body);
                Ok(out)
            }
            None => {
                let mut nonce = [0u8; GCM_NONCE_LEN];
                nonce[4..].copy_from_slice(&n.to_le_bytes());
                let mut out = Vec::with_capacity(GCM_NONCE_LEN + plain.len() + GCM_TAG_LEN);
                out.extend_from_slice(&nonce);
                out.extend_from_slice(plain);
                let mut body = out.split_off(GCM_NONCE_LEN);
                self.base_gcm.seal_with_nonce(nonce, aad, &mut body)?;
                out.extend_from_slice(&body);
                Ok(out)
            }
        }
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < GCM_NONCE_LEN + GCM_TAG_LEN {
            return Err(SealError::Short);
        }
        let epoch = u32::from_be_bytes(sealed[..4].try_into().expect("4 bytes"));
        let (key, rest) = if epoch == 0 {
            (None, sealed)
        } else {
            if sealed.len() < 4 + GCM_NONCE_LEN + GCM_TAG_LEN {
                return Err(SealError::Short);
            }
            (Some(self.older_key(epoch)?), &sealed[4..])
        };
        let nonce: [u8; GCM_NONCE_LEN] = rest[..GCM_NONCE_LEN].try_into().expect("12 bytes");
        let mut buf = rest[GCM_NONCE_LEN..].to_vec();
        let len = match &key {
            Some(k) => k.open(nonce, aad, &mut buf)?,
            None => self.base_gcm.open(nonce, aad, &mut buf)?,
        };
        buf.truncate(len);
        Ok(buf)
    }

    /// Keyed MAC of a directory entry name (the dirent table's key).
    pub fn name_mac(&self, parent: u64, name: &[u8]) -> Result<[u8; 32], KeystoreError> {
        self.mac.sign(&[&parent.to_le_bytes(), name])
    }

    /// The next counter value a new open must reserve from.
    pub fn high_water(&self) -> u64 {
        self.next.load(Ordering::SeqCst).min(self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(p: Provider) {
        let s = MetaSealer::new(p, &[3; 32], 0).unwrap();
        let a = s.seal(b"inode|1", b"hello").unwrap();
        let b = s.seal(b"inode|1", b"hello").unwrap();
        assert_ne!(a, b, "fresh nonce each time");
        assert_eq!(s.open(b"inode|1", &a).unwrap(), b"hello");
        assert!(s.open(b"inode|2", &a).is_err(), "moved to another row");
        let mut t = a.clone();
        t[20] ^= 1;
        assert!(s.open(b"inode|1", &t).is_err());
        assert!(matches!(
            s.open(b"inode|1", &a[..20]),
            Err(SealError::Short | SealError::Tampered)
        ));
    }

    #[test]
    fn seal_open_and_tamper() {
        round_trip(Provider::DEFAULT);
        let tiny = MetaSealer::new(Provider::DEFAULT, &[3; 32], u64::MAX - 1).unwrap();
        assert!(tiny.seal(b"", b"").is_ok());
        assert!(matches!(
            tiny.seal(b"", b""),
            Err(SealError::NoncesExhausted)
        ));
    }

    #[cfg(feature = "fips")]
    #[test]
    fn validated_values_use_epoch_keys_and_both_forms_open_everywhere() {
        let v = Provider::validated(&keystore::KatSet::embedded()).unwrap();
        round_trip(v);
        let key = [9u8; 32];
        let old = MetaSealer::new(Provider::DEFAULT, &key, 0).unwrap();
        let counter_form = old.seal(b"row", b"from the default provider").unwrap();
        assert_eq!(&counter_form[..4], &[0, 0, 0, 0]);
        let first = MetaSealer::new(v, &key, NONCE_BLOCK).unwrap();
        let second = MetaSealer::new(v, &key, 2 * NONCE_BLOCK).unwrap();
        let e2 = first.seal(b"row", b"epoch 2").unwrap();
        let e3 = second.seal(b"row", b"epoch 3").unwrap();
        assert_eq!(&e2[..4], &2u32.to_be_bytes());
        assert_eq!(&e3[..4], &3u32.to_be_bytes());
        for reader in [&old, &first, &second] {
            assert_eq!(
                reader.open(b"row", &counter_form).unwrap(),
                b"from the default provider"
            );
            assert_eq!(reader.open(b"row", &e2).unwrap(), b"epoch 2");
            assert_eq!(reader.open(b"row", &e3).unwrap(), b"epoch 3");
        }
        assert_eq!(
            first.name_mac(1, b"a").unwrap(),
            old.name_mac(1, b"a").unwrap()
        );
    }
}
