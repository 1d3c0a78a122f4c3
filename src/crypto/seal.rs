//! Sealing of metadata values (inode records, directory entries, extents)
//! with AES-256-GCM under keys from the metadata key, and the keyed MAC of
//! file names. Both through the store's crypto provider.
//!
//! Every sealed value starts with a 4-byte big-endian tag (docs/FORMAT.md):
//! - `0xFFFF_FFFF`: plain form, `tag || value` (unencrypted stores only).
//! - otherwise the top byte is the key generation `g` (0..=254) and the low
//!   24 bits say which form:
//!   - `0xFF_FFFF`, salted form (what both providers write): `tag || salt
//!     (16) || nonce (12) || ct || tag`, key = KBKDF-HMAC-SHA-256(metadata
//!     key, "datastore meta salt v1" || salt). Every open of the volume
//!     draws a fresh random salt, so every open seals under a key of its
//!     own that no earlier open (and no copy of the store directory rolled
//!     back to an earlier state) ever used; a key seals at most 2^32 values.
//!     Nonce: a counter from the open's reserved block (default provider;
//!     unique under the open's key) or module-generated (validated
//!     provider, where the module approves GCM encryption only with IVs it
//!     generates itself);
//!   - 0, counter form (read only; written before format 4): `nonce (12) ||
//!     ct || tag`, nonce = `g, 0, 0, 0` || 64-bit invocation counter, key =
//!     generation g's metadata key;
//!   - e (1..0xFF_FFFF), epoch form (read only; written before format 4 by
//!     the validated provider): `tag || nonce (12) || ct || tag`, key =
//!     KBKDF-HMAC-SHA-256(metadata key, "datastore meta epoch v1" || e as 4
//!     big-endian bytes).
//!
//! The counter and epoch forms took their nonces or epochs from a counter
//! in the metadata database, which repeats when the store directory is
//! rolled back (a VM snapshot, a restored backup): that is why they are no
//! longer written.
//!
//! Values written before key generations existed are generation 0.
//!
//! A sealer seals under its current generation and opens values of its
//! current and (during a conversion) its retiring generation, in any form,
//! under either provider. Invariants: a (key, nonce) pair is never used
//! twice, whatever state the store directory is restored to: the key comes
//! from a salt drawn at open, the nonce from a counter that never repeats
//! within one open (or the module's generator), and sealing fails closed
//! when the open's budget runs out. The AAD binds each value to its table
//! and key, so a sealed value moved to another row does not open.

use crate::poison::{Recover, RecoverRw};
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
const SALT_LABEL: &[u8] = b"datastore meta salt v1";
/// The low 24 bits of a salted form's tag.
const SALTED: u32 = (1 << EPOCH_BITS) - 1;
pub const SALT_LEN: usize = 16;
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
    /// This open's salt and the key derived from it (None: keys that
    /// only open, a retiring generation's).
    salted: Option<([u8; SALT_LEN], Arc<LockedBox<GcmKey>>)>,
    /// Keys of older epochs and salts, derived when a value needs one.
    older: Mutex<HashMap<KeyId, Arc<LockedBox<GcmKey>>>>,
}

/// What a derived key is derived from.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum KeyId {
    Epoch(u32),
    Salt([u8; SALT_LEN]),
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
    /// `seals`: this generation seals (it gets a fresh salt and key).
    fn new(
        provider: Provider,
        generation: u16,
        metadata_key: &[u8; 32],
        seals: bool,
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
            salted: None,
            older: Mutex::new(HashMap::new()),
        };
        if seals {
            let mut salt = [0u8; SALT_LEN];
            provider.fill_random(&mut salt)?;
            k.salted = Some((salt, k.derive(KeyId::Salt(salt))?));
        }
        Ok(k)
    }

    fn tag(&self, low: u32) -> [u8; 4] {
        ((self.generation as u32) << EPOCH_BITS | low).to_be_bytes()
    }

    fn derive(&self, id: KeyId) -> Result<Arc<LockedBox<GcmKey>>, KeystoreError> {
        let context = match &id {
            KeyId::Epoch(e) => [EPOCH_LABEL, &e.to_be_bytes()].concat(),
            KeyId::Salt(s) => [SALT_LABEL, &s[..]].concat(),
        };
        let p = self.provider;
        Ok(Arc::new(LockedBox::try_new_with(|| {
            let k = p.kbkdf_hmac_sha256(&self.base[..], &context)?;
            let key = p.aes256_gcm(&k);
            let mut k = k;
            zeroize::Zeroize::zeroize(&mut k);
            key
        })?))
    }

    fn derived_key(&self, id: KeyId) -> Result<Arc<LockedBox<GcmKey>>, KeystoreError> {
        if let Some((salt, k)) = &self.salted {
            if id == KeyId::Salt(*salt) {
                return Ok(k.clone());
            }
        }
        let mut cache = self.older.locked();
        if let Some(k) = cache.get(&id) {
            return Ok(k.clone());
        }
        let k = self.derive(id)?;
        if cache.len() >= EPOCH_CACHE {
            cache.clear();
        }
        cache.insert(id, k.clone());
        Ok(k)
    }

    /// Seals in the salted form; `n` is unique within this open.
    fn seal(&self, n: u64, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let (salt, key) = self
            .salted
            .as_ref()
            .ok_or(SealError::Crypto(KeystoreError::Refused(
                "a retiring key generation does not seal".into(),
            )))?;
        let mut body = Vec::with_capacity(plain.len() + GCM_TAG_LEN);
        body.extend_from_slice(plain);
        let nonce = if self.provider.is_validated() {
            key.seal_random_nonce(aad, &mut body)?
        } else {
            let mut nonce = [0u8; GCM_NONCE_LEN];
            nonce[..8].copy_from_slice(&n.to_le_bytes());
            key.seal_with_nonce(nonce, aad, &mut body)?;
            nonce
        };
        let mut out = Vec::with_capacity(4 + SALT_LEN + GCM_NONCE_LEN + body.len());
        out.extend_from_slice(&self.tag(SALTED));
        out.extend_from_slice(salt);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens a value of any form; `low` is its tag's low 24 bits.
    fn open(&self, low: u32, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let (key, rest) = match low {
            0 => (None, sealed),
            SALTED => {
                let salt: [u8; SALT_LEN] = sealed
                    .get(4..4 + SALT_LEN)
                    .ok_or(SealError::Short)?
                    .try_into()
                    .expect("16 bytes");
                let rest = &sealed[4 + SALT_LEN..];
                (Some(self.derived_key(KeyId::Salt(salt))?), rest)
            }
            epoch => (Some(self.derived_key(KeyId::Epoch(epoch))?), &sealed[4..]),
        };
        if rest.len() < GCM_NONCE_LEN + GCM_TAG_LEN {
            return Err(SealError::Short);
        }
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
    /// Key generation 0 (a store that never changed its key). The sealer
    /// counts from `first` and seals at most NONCE_BLOCK values; its
    /// nonces are unique under its own salted key whatever `first` is.
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
        let keys = Keyed::new(provider, generation, metadata_key, true)?;
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
        // The retiring keys only open.
        let keys = Keyed::new(provider, generation, metadata_key, false)?;
        self.retiring = std::sync::RwLock::new(Some(Arc::new(SealKeys::Keyed(Box::new(keys)))));
        Ok(self)
    }

    /// Also opens plain-form values (converting an unencrypted store).
    pub fn with_retiring_plain(mut self) -> Self {
        self.retiring = std::sync::RwLock::new(Some(Arc::new(SealKeys::Plain)));
        self
    }

    fn retiring(&self) -> Option<Arc<SealKeys>> {
        self.retiring.read_locked().clone()
    }

    /// Drops the retiring keys (the conversion converted everything).
    pub fn forget_retiring(&self) {
        *self.retiring.write_locked() = None;
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
                let tag = u32::from_be_bytes(sealed[..4].try_into().expect("4 bytes"));
                k.open(tag & SALTED, aad, sealed)
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

    /// A value in the counter form, as builds before format 4 wrote it.
    fn counter_form(s: &MetaSealer, n: u64, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let SealKeys::Keyed(k) = &s.current else {
            panic!("keyed")
        };
        let mut nonce = [0u8; GCM_NONCE_LEN];
        nonce[..4].copy_from_slice(&k.tag(0));
        nonce[4..].copy_from_slice(&n.to_le_bytes());
        let mut body = plain.to_vec();
        k.base_gcm.seal_with_nonce(nonce, aad, &mut body).unwrap();
        [&nonce[..], &body].concat()
    }

    /// A value in the epoch form, as the validated provider wrote it.
    fn epoch_form(s: &MetaSealer, epoch: u32, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let SealKeys::Keyed(k) = &s.current else {
            panic!("keyed")
        };
        let key = k.derive(KeyId::Epoch(epoch)).unwrap();
        let mut body = plain.to_vec();
        let nonce = key.seal_random_nonce(aad, &mut body).unwrap();
        [&k.tag(epoch)[..], &nonce, &body].concat()
    }

    /// (tag, salt, nonce) of a salted value: what names its key and nonce.
    fn key_and_nonce(v: &[u8]) -> Vec<u8> {
        v[..4 + SALT_LEN + GCM_NONCE_LEN].to_vec()
    }

    fn opens_older_forms(p: Provider) {
        let key = [9u8; 32];
        let s = MetaSealer::new(p, &key, 0).unwrap();
        let counter = counter_form(
            &MetaSealer::new(Provider::DEFAULT, &key, 0).unwrap(),
            7,
            b"row",
            b"counter",
        );
        assert_eq!(&counter[..4], &[0, 0, 0, 0]);
        assert_eq!(s.open(b"row", &counter).unwrap(), b"counter");
        let epoch = epoch_form(&s, 3, b"row", b"epoch 3");
        assert_eq!(&epoch[..4], &3u32.to_be_bytes());
        assert_eq!(s.open(b"row", &epoch).unwrap(), b"epoch 3");
        let mut bad = epoch.clone();
        bad[3] = 4;
        assert!(s.open(b"row", &bad).is_err(), "another epoch's key");
    }

    /// Two sealers that start from the same counter (a store directory
    /// rolled back to the state an earlier open saw) never seal under the
    /// same key and nonce.
    fn rolled_back_opens_never_share_a_key_and_nonce(p: Provider) {
        let key = [5u8; 32];
        let first = MetaSealer::new(p, &key, NONCE_BLOCK).unwrap();
        let again = MetaSealer::new(p, &key, NONCE_BLOCK).unwrap();
        let mut seen = std::collections::HashSet::new();
        for (i, s) in [&first, &again].iter().enumerate() {
            for n in 0..50u32 {
                let v = s
                    .seal(b"row", format!("history {i} value {n}").as_bytes())
                    .unwrap();
                assert_eq!(&v[..4], &SALTED.to_be_bytes(), "salted form, generation 0");
                assert!(
                    seen.insert(key_and_nonce(&v)),
                    "a key and nonce sealed twice"
                );
                assert_eq!(
                    first.open(b"row", &v).unwrap(),
                    again.open(b"row", &v).unwrap()
                );
            }
        }
    }

    #[test]
    fn older_forms_open_and_rolled_back_opens_use_new_keys() {
        opens_older_forms(Provider::DEFAULT);
        rolled_back_opens_never_share_a_key_and_nonce(Provider::DEFAULT);
    }

    #[cfg(feature = "fips")]
    #[test]
    fn validated_provider_seals_salted_values_that_open_everywhere() {
        let v = keystore::gate::validated(&keystore::KatSet::embedded()).unwrap();
        round_trip(v);
        opens_older_forms(v);
        rolled_back_opens_never_share_a_key_and_nonce(v);
        let key = [9u8; 32];
        let soft = MetaSealer::new(Provider::DEFAULT, &key, 0).unwrap();
        let module = MetaSealer::new(v, &key, 0).unwrap();
        let a = soft.seal(b"row", b"from the default provider").unwrap();
        let b = module.seal(b"row", b"from the module").unwrap();
        for reader in [&soft, &module] {
            assert_eq!(
                reader.open(b"row", &a).unwrap(),
                b"from the default provider"
            );
            assert_eq!(reader.open(b"row", &b).unwrap(), b"from the module");
        }
        assert_eq!(
            module.name_mac(1, b"a").unwrap(),
            soft.name_mac(1, b"a").unwrap()
        );
    }
}
