//! Sealing of metadata values (inode records, directory entries, extents)
//! with AES-256-GCM under keys from the metadata key, and the keyed MAC of
//! file names. Both through the store's crypto provider.
//!
//! Every sealed value starts with a 4-byte big-endian tag (docs/FORMAT.md):
//! - `0xFFFF_FFFF`: plain form, `tag || value` (unencrypted stores only).
//! - otherwise the top byte is the key generation `g` (0..=254) and the low
//!   24 bits say which form:
//!   - 0, counter form (default provider): `nonce (12) || ct || tag`, nonce
//!     = `g, 0, 0, 0` || 64-bit invocation counter (SP 800-38D 8.2.1), key =
//!     generation g's metadata key;
//!   - e (1..2^24), epoch form (validated provider, where the module
//!     approves GCM encryption only with IVs it generates itself): `tag ||
//!     nonce (12, module-generated) || ct || tag`, key =
//!     KBKDF-HMAC-SHA-256(metadata key, "datastore meta epoch v1" || e as 4
//!     big-endian bytes). Each open of the volume gets a new epoch, i.e. a
//!     fresh key, and a key seals at most 2^32 values (SP 800-38D 8.3).
//!
//! Values written before key generations existed are generation 0.
//!
//! A sealer seals under its current generation and opens values of its
//! current and (during a conversion) its retiring generation, in any form,
//! under either provider. Invariants: a counter never repeats under one key
//! and an epoch key never exceeds its budget: each open first durably
//! reserves a block of 2^32 counter values (the epoch is the block's number)
//! and sealing fails closed when the block or the epochs run out. The AAD
//! binds each value to its table and key, so a sealed value moved to another
//! row does not open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use keystore::provider::{GCM_NONCE_LEN, GCM_TAG_LEN};
use keystore::{GcmKey, HmacKey, KeystoreError, LockedBox, Provider};

use super::KeyGen;

/// Counter values reserved per open (= seals allowed per epoch key).
pub const NONCE_BLOCK: u64 = 1 << 32;
/// Highest metadata key generation (255 is the plain form's tag byte).
pub const MAX_GENERATION: u16 = 254;

const PLAIN_TAG: u32 = 0xFFFF_FFFF;
const EPOCH_BITS: u32 = 24;
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
    #[error("sealed metadata is under {0}, whose key is not loaded")]
    UnknownGeneration(KeyGen),
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

/// The key generation a sealed value is under (None: too short to say).
pub fn sealed_generation(sealed: &[u8]) -> Option<KeyGen> {
    let tag = u32::from_be_bytes(sealed.get(..4)?.try_into().ok()?);
    Some(if tag == PLAIN_TAG {
        KeyGen::Plain
    } else {
        KeyGen::Key((tag >> EPOCH_BITS) as u16)
    })
}

/// One generation's metadata keys.
struct Keyed {
    provider: Provider,
    generation: u8,
    /// The metadata key itself (counter form), and the base of epoch keys.
    base: LockedBox<[u8; 32]>,
    base_gcm: LockedBox<GcmKey>,
    mac: LockedBox<HmacKey>,
    /// This open's epoch and its key (validated provider only).
    epoch: Option<(u32, Arc<LockedBox<GcmKey>>)>,
    older: Mutex<HashMap<u32, Arc<LockedBox<GcmKey>>>>,
}

enum SealKeys {
    Plain,
    Keyed(Box<Keyed>),
}

impl SealKeys {
    fn generation(&self) -> KeyGen {
        match self {
            SealKeys::Plain => KeyGen::Plain,
            SealKeys::Keyed(k) => KeyGen::Key(k.generation as u16),
        }
    }
}

impl Keyed {
    fn new(
        provider: Provider,
        generation: u16,
        metadata_key: &[u8; 32],
        first: u64,
    ) -> Result<Self, KeystoreError> {
        let generation = u8::try_from(generation)
            .ok()
            .filter(|g| *g as u16 <= MAX_GENERATION)
            .ok_or_else(|| KeystoreError::Refused("metadata key generations exhausted".into()))?;
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
        let mut k = Keyed {
            provider,
            generation,
            base,
            base_gcm,
            mac,
            epoch: None,
            older: Mutex::new(HashMap::new()),
        };
        if provider.is_validated() {
            let epoch = u32::try_from(first / NONCE_BLOCK + 1)
                .ok()
                .filter(|e| *e < 1 << EPOCH_BITS)
                .ok_or_else(|| KeystoreError::Refused("metadata epochs exhausted".into()))?;
            k.epoch = Some((epoch, k.epoch_key(epoch)?));
        }
        Ok(k)
    }

    fn tag(&self, epoch: u32) -> [u8; 4] {
        ((self.generation as u32) << EPOCH_BITS | epoch).to_be_bytes()
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

    fn seal(&self, n: u64, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        match &self.epoch {
            Some((epoch, key)) => {
                let mut body = Vec::with_capacity(plain.len() + GCM_TAG_LEN);
                body.extend_from_slice(plain);
                let nonce = key.seal_random_nonce(aad, &mut body)?;
                let mut out = Vec::with_capacity(4 + GCM_NONCE_LEN + body.len());
                out.extend_from_slice(&self.tag(*epoch));
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&body);
                Ok(out)
            }
            None => {
                let mut nonce = [0u8; GCM_NONCE_LEN];
                nonce[..4].copy_from_slice(&self.tag(0));
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

    fn open(&self, epoch: u32, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
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
}

pub struct MetaSealer {
    current: SealKeys,
    /// Dropped by `forget_retiring` when a conversion ends.
    retiring: std::sync::RwLock<Option<Arc<SealKeys>>>,
    next: AtomicU64,
    end: u64,
}

impl MetaSealer {
    /// Key generation 0 (a store that never changed its key). `first` ..
    /// `first + NONCE_BLOCK` must be durably reserved by the caller; `first`
    /// is a multiple of NONCE_BLOCK.
    pub fn new(
        provider: Provider,
        metadata_key: &[u8; 32],
        first: u64,
    ) -> Result<Self, KeystoreError> {
        Self::keyed(provider, 0, metadata_key, first)
    }

    /// Seals under key generation `generation` (see `new` for `first`).
    pub fn keyed(
        provider: Provider,
        generation: u16,
        metadata_key: &[u8; 32],
        first: u64,
    ) -> Result<Self, KeystoreError> {
        let keys = Keyed::new(provider, generation, metadata_key, first)?;
        Ok(Self::with_keys(SealKeys::Keyed(Box::new(keys)), first))
    }

    /// An unencrypted store's "sealer": values are stored in the plain form.
    pub fn plain(first: u64) -> Self {
        Self::with_keys(SealKeys::Plain, first)
    }

    fn with_keys(current: SealKeys, first: u64) -> Self {
        MetaSealer {
            current,
            retiring: Default::default(),
            next: AtomicU64::new(first),
            end: first.saturating_add(NONCE_BLOCK),
        }
    }

    /// Also opens values of a retiring key generation (during a conversion).
    pub fn with_retiring_key(
        mut self,
        provider: Provider,
        generation: u16,
        metadata_key: &[u8; 32],
    ) -> Result<Self, KeystoreError> {
        // The retiring keys only open: their epoch is never used to seal.
        let keys = Keyed::new(provider, generation, metadata_key, 0)?;
        self.retiring = std::sync::RwLock::new(Some(Arc::new(SealKeys::Keyed(Box::new(keys)))));
        Ok(self)
    }

    /// Also opens plain-form values (converting an unencrypted store).
    pub fn with_retiring_plain(mut self) -> Self {
        self.retiring = std::sync::RwLock::new(Some(Arc::new(SealKeys::Plain)));
        self
    }

    fn retiring(&self) -> Option<Arc<SealKeys>> {
        self.retiring
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Drops the retiring keys (the conversion converted everything).
    pub fn forget_retiring(&self) {
        *self.retiring.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The generation new values are sealed under.
    pub fn generation(&self) -> KeyGen {
        self.current.generation()
    }

    pub fn retiring_generation(&self) -> Option<KeyGen> {
        self.retiring().map(|k| k.generation())
    }

    /// Seals `plain` for the row named by `aad` (see the module comment for
    /// the forms).
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        if n >= self.end {
            return Err(SealError::NoncesExhausted);
        }
        match &self.current {
            SealKeys::Plain => {
                let mut out = Vec::with_capacity(4 + plain.len());
                out.extend_from_slice(&PLAIN_TAG.to_be_bytes());
                out.extend_from_slice(plain);
                Ok(out)
            }
            SealKeys::Keyed(k) => k.seal(n, aad, plain),
        }
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let Some(generation) = sealed_generation(sealed) else {
            return Err(SealError::Short);
        };
        let retiring = self.retiring();
        let keys = std::iter::once(&self.current)
            .chain(retiring.as_deref())
            .find(|k| k.generation() == generation)
            .ok_or(SealError::UnknownGeneration(generation))?;
        match keys {
            SealKeys::Plain => Ok(sealed[4..].to_vec()),
            SealKeys::Keyed(k) => {
                if sealed.len() < GCM_NONCE_LEN + GCM_TAG_LEN {
                    return Err(SealError::Short);
                }
                let tag = u32::from_be_bytes(sealed[..4].try_into().expect("4 bytes"));
                k.open(tag & ((1 << EPOCH_BITS) - 1), aad, sealed)
            }
        }
    }

    /// Keyed MAC of a directory entry name (the dirent table's key) under
    /// the current generation.
    pub fn name_mac(&self, parent: u64, name: &[u8]) -> Result<[u8; 32], KeystoreError> {
        name_mac_with(&self.current, parent, name)
    }

    /// The same name's key under the retiring generation, during a
    /// conversion (its row must go when the entry is rewritten).
    pub fn retiring_name_mac(
        &self,
        parent: u64,
        name: &[u8],
    ) -> Result<Option<[u8; 32]>, KeystoreError> {
        self.retiring()
            .map(|k| name_mac_with(&k, parent, name))
            .transpose()
    }

    /// The next counter value a new open must reserve from.
    pub fn high_water(&self) -> u64 {
        self.next.load(Ordering::SeqCst).min(self.end)
    }
}

fn name_mac_with(keys: &SealKeys, parent: u64, name: &[u8]) -> Result<[u8; 32], KeystoreError> {
    match keys {
        SealKeys::Keyed(k) => k.mac.sign(&[&parent.to_le_bytes(), name]),
        SealKeys::Plain => {
            let mut h = blake3::Hasher::new_derive_key("datastore plain name v1");
            h.update(&parent.to_le_bytes());
            h.update(name);
            Ok(*h.finalize().as_bytes())
        }
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

    #[test]
    fn generations_and_the_plain_form() {
        let old = MetaSealer::new(Provider::DEFAULT, &[1; 32], 0).unwrap();
        let g0 = old.seal(b"row", b"old key").unwrap();
        assert_eq!(sealed_generation(&g0), Some(KeyGen::Key(0)));
        let plain = MetaSealer::plain(0);
        let p = plain.seal(b"row", b"in the clear").unwrap();
        assert_eq!(sealed_generation(&p), Some(KeyGen::Plain));
        assert_eq!(plain.open(b"row", &p).unwrap(), b"in the clear");
        let new = MetaSealer::keyed(Provider::DEFAULT, 1, &[2; 32], NONCE_BLOCK)
            .unwrap()
            .with_retiring_key(Provider::DEFAULT, 0, &[1; 32])
            .unwrap();
        let g1 = new.seal(b"row", b"new key").unwrap();
        assert_eq!(sealed_generation(&g1), Some(KeyGen::Key(1)));
        assert_eq!(new.open(b"row", &g0).unwrap(), b"old key");
        assert_eq!(new.open(b"row", &g1).unwrap(), b"new key");
        assert!(matches!(
            new.open(b"row", &p),
            Err(SealError::UnknownGeneration(KeyGen::Plain))
        ));
        assert!(matches!(
            old.open(b"row", &g1),
            Err(SealError::UnknownGeneration(KeyGen::Key(1)))
        ));
        assert_ne!(
            new.name_mac(1, b"a").unwrap(),
            new.retiring_name_mac(1, b"a").unwrap().unwrap()
        );
        assert_eq!(
            new.retiring_name_mac(1, b"a").unwrap().unwrap(),
            old.name_mac(1, b"a").unwrap()
        );
        let from_plain = MetaSealer::keyed(Provider::DEFAULT, 0, &[2; 32], 0)
            .unwrap()
            .with_retiring_plain();
        assert_eq!(from_plain.open(b"row", &p).unwrap(), b"in the clear");
        assert!(MetaSealer::keyed(Provider::DEFAULT, 255, &[2; 32], 0).is_err());
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
