//! Turning a store's keystore into loaded keys: unlock (password or boot
//! key), build the key ring (current generation, and the retiring one while
//! a conversion runs), the metadata sealer and the volume. Volume keys are
//! dropped (zeroized) as soon as the derived key objects exist. An
//! unencrypted store (no keystore, cipher "none") loads without any key.

use std::path::Path;
use std::sync::Arc;

use keystore::{FipsMode, KatSet, Keystore, VolumeKey};

use crate::config::StoreConfig;
use crate::crypto::seal::MetaSealer;
use crate::crypto::{ChunkCrypto, FingerprintAlg, KeyRing};
use crate::engine::Engine;
use crate::paths::boot_key_dir;
use crate::remote::{MirrorKey, Remote};
use crate::volume::{VResult, VolError, Volume};

#[derive(Debug, thiserror::Error)]
pub enum UnlockError {
    #[error(transparent)]
    Key(#[from] keystore::KeystoreError),
    #[error("{0}")]
    Volume(String),
    /// The intent log does not replay (damage before its tail, another
    /// store's file): nothing of it was applied.
    #[error("{0}")]
    IntentLog(String),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    StoreConfig(#[from] crate::config::ConfigError),
}

impl From<UnlockError> for crate::exit::Failure {
    /// A keystore error keeps its exit code (wrong password, self-test,
    /// ...); anything else is a general error.
    fn from(e: UnlockError) -> Self {
        match e {
            UnlockError::Key(k) => k.into(),
            UnlockError::IntentLog(why) => Self::new(crate::exit::Exit::Damaged, why),
            other => Self::new(crate::exit::Exit::Error, other.to_string()),
        }
    }
}

/// The fingerprint algorithm of a key used in FIPS mode `mode`.
pub fn fingerprint_alg(mode: FipsMode) -> FingerprintAlg {
    match mode {
        FipsMode::Validated => FingerprintAlg::HmacSha256,
        FipsMode::Disabled => FingerprintAlg::Blake3Keyed,
    }
}

/// Whether the store has a keystore (an encrypted store, or one being
/// converted to encrypted form).
pub fn has_keystore(store: &Path) -> bool {
    let dir = Keystore::dir_of(store);
    dir.join(keystore::file::FILE_NAME).exists() || dir.join(keystore::file::BACKUP_NAME).exists()
}

/// Everything an unlocked store writes and reads with.
pub struct LoadedKeys {
    pub ring: Arc<KeyRing>,
    make_sealer: Box<dyn Fn(u64) -> VResult<MetaSealer> + Send + Sync>,
    /// Bucket mirror keys (current, retiring); None for an unencrypted store.
    pub mirror: Option<(MirrorKey, Option<MirrorKey>)>,
    /// datastore.toml as read (and reconciled with the keystore) once for
    /// this unlock: where the bucket mirror is, if any.
    config: StoreConfig,
}

impl LoadedKeys {
    /// A sealer for a newly reserved nonce block starting at `first`.
    pub fn sealer(&self, first: u64) -> VResult<MetaSealer> {
        (self.make_sealer)(first)
    }
}

/// The key objects of `ks`'s current key (and its retiring one).
fn derive(ks: &Keystore, vk: VolumeKey, config: StoreConfig) -> Result<LoadedKeys, UnlockError> {
    let generation = ks.generation();
    let current = Arc::new(
        ChunkCrypto::new(
            vk.provider(),
            vk.xts_key(),
            vk.fingerprint_key(),
            fingerprint_alg(ks.fips_mode()),
        )?
        .with_generation(generation),
    );
    let retiring_key = ks.retiring_key(&vk)?;
    let retiring = match (ks.retiring(), &retiring_key) {
        (None, _) => None,
        (Some(_), None) => Some(Arc::new(ChunkCrypto::plain()?)),
        (Some(r), Some(old)) => {
            let mode = r.key.as_ref().map_or(FipsMode::Disabled, |k| k.fips_mode);
            let g = r.key.as_ref().map_or(0, |k| k.generation);
            Some(Arc::new(
                ChunkCrypto::new(
                    old.provider(),
                    old.xts_key(),
                    old.fingerprint_key(),
                    fingerprint_alg(mode),
                )?
                .with_generation(g),
            ))
        }
    };
    let mirror_key = |k: &VolumeKey| {
        Remote::derive_key(k.provider(), k.metadata_key())
            .map_err(|e| UnlockError::Config(e.to_string()))
    };
    let mirror = Some((
        mirror_key(&vk)?,
        retiring_key.as_ref().map(mirror_key).transpose()?,
    ));
    let plain_before = ks.retiring().is_some_and(|r| r.key.is_none());
    let old_generation = ks
        .retiring()
        .and_then(|r| r.key.as_ref().map(|k| k.generation));
    let make_sealer = move |first: u64| -> VResult<MetaSealer> {
        let s = MetaSealer::keyed(vk.provider(), generation, vk.metadata_key(), first)
            .map_err(VolError::io)?;
        match (&retiring_key, old_generation) {
            (Some(old), Some(g)) => s
                .with_retiring_key(old.provider(), g, old.metadata_key())
                .map_err(VolError::io),
            _ if plain_before => Ok(s.with_retiring_plain()),
            _ => Ok(s),
        }
    };
    Ok(LoadedKeys {
        ring: Arc::new(KeyRing { current, retiring }),
        make_sealer: Box::new(make_sealer),
        mirror,
        config,
    })
}

/// The "keys" of an unencrypted store.
fn plain_keys(config: StoreConfig) -> Result<LoadedKeys, UnlockError> {
    Ok(LoadedKeys {
        ring: Arc::new(KeyRing::single(Arc::new(ChunkCrypto::plain()?))),
        make_sealer: Box::new(|first| Ok(MetaSealer::plain(first))),
        mirror: None,
        config,
    })
}

/// Loads keys into the engine (and the bucket mirror, connected first when
/// the store has one) and opens the volume.
pub fn load(engine: &Arc<Engine>, keys: LoadedKeys) -> Result<Arc<Volume>, UnlockError> {
    attach_remote(engine, &keys)?;
    engine.set_keys(Some(keys.ring.clone()));
    match Volume::open_with(engine.clone(), &|first| keys.sealer(first)) {
        Ok(v) => {
            let v = Arc::new(v);
            v.start_flusher();
            v.start_readahead();
            replay_intent_log(engine, &v, &keys.config)?;
            Ok(v)
        }
        Err(e) => {
            engine.set_keys(None);
            Err(UnlockError::Volume(format!("cannot open the volume: {e}")))
        }
    }
}

/// Replays what the intent log holds beyond the metadata (after a crash)
/// before anything is served; synchronous writes go through the log from
/// then on, except on a store with a bucket (its fsync waits for the
/// upload, which is what it promises).
fn replay_intent_log(
    engine: &Arc<Engine>,
    v: &Volume,
    config: &StoreConfig,
) -> Result<(), UnlockError> {
    let dir = config.intent_log_dir(engine.store_dir());
    let enable = engine.remote().is_none();
    match v.open_intent_log(&dir, enable) {
        Ok(report) if report.applied > 0 || report.torn_tail => {
            crate::log_line!(
                "datastore: intent log replayed: {} records{}",
                report.applied,
                if report.torn_tail {
                    ", a torn last record dropped"
                } else {
                    ""
                }
            );
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) => {
            engine.set_keys(None);
            Err(UnlockError::IntentLog(format!(
                "cannot replay the intent log: {e}"
            )))
        }
    }
}

/// Makes datastore.toml say what the keystore says (a crash between the
/// keystore write and the config write of a conversion's start leaves the
/// config one step behind; the keystore is the authority). Returns the
/// config as it now is.
fn reconcile_config(
    store: &Path,
    ks: &Keystore,
    mut cfg: StoreConfig,
) -> Result<StoreConfig, UnlockError> {
    if cfg.store_id != ks.store_id() {
        return Err(UnlockError::Config(format!(
            "the keystore belongs to store {}, datastore.toml to store {}: refused (a keystore or datastore.toml from another store was put here)",
            ks.store_id(),
            cfg.store_id
        )));
    }
    if ks.restore_main_copy()? {
        crate::log_line!(
            "datastore: keystore.json was damaged; it was written again from keystore.json.bak"
        );
    }
    let alg = fingerprint_alg(ks.fips_mode());
    if cfg.engine.fingerprint != alg || !cfg.engine.encrypted() {
        cfg.engine.fingerprint = alg;
        cfg.engine.cipher = "aes-xts-256".into();
        cfg.save(store)
            .map_err(|e| UnlockError::Config(format!("cannot write datastore.toml: {e}")))?;
    }
    Ok(cfg)
}

/// Connects the bucket mirror of a store that has one and loads its keys,
/// before the volume opens (its first durable commit already syncs).
fn attach_remote(engine: &Arc<Engine>, keys: &LoadedKeys) -> Result<(), UnlockError> {
    let Some(remote_cfg) = &keys.config.remote else {
        return Ok(());
    };
    let Some((current, retiring)) = keys.mirror.clone() else {
        return Err(UnlockError::Config(
            "a store mirrored to a bucket must be encrypted".into(),
        ));
    };
    let remote = match engine.remote() {
        Some(r) => r,
        None => {
            Arc::new(Remote::connect(remote_cfg).map_err(|e| UnlockError::Config(e.to_string()))?)
        }
    };
    remote.set_keys(current, retiring);
    engine.set_remote(Some(remote));
    Ok(())
}

/// Unlocks the keystore with a password (or recovery key) and derives the
/// key objects (no volume opened).
pub fn keys_with_password(store: &Path, password: &[u8]) -> Result<LoadedKeys, UnlockError> {
    let cfg = StoreConfig::load(store)?;
    let mut ks = Keystore::open(store, &boot_key_dir())?;
    let vk = ks.unlock(password, &KatSet::embedded())?;
    let cfg = reconcile_config(store, &ks, cfg)?;
    derive(&ks, vk, cfg)
}

/// The key objects a password (or recovery key) opens, writing nothing:
/// for commands that only read the store (`scrub --verify-data`).
pub fn keys_to_read(store: &Path, password: &[u8]) -> Result<LoadedKeys, UnlockError> {
    let cfg = StoreConfig::load(store)?;
    let ks = Keystore::open(store, &boot_key_dir())?;
    let vk = ks.open_key(password, &KatSet::embedded())?;
    derive(&ks, vk, cfg)
}

/// Unlocks with a password (or recovery key).
pub fn unlock_with_password(
    store: &Path,
    engine: &Arc<Engine>,
    password: &[u8],
) -> Result<Arc<Volume>, UnlockError> {
    let cfg = StoreConfig::load(store)?;
    if !has_keystore(store) && !cfg.engine.encrypted() {
        return load(engine, plain_keys(cfg)?);
    }
    let mut ks = Keystore::open(store, &boot_key_dir())?;
    let vk = ks.unlock(password, &KatSet::embedded())?;
    let cfg = reconcile_config(store, &ks, cfg)?;
    load(engine, derive(&ks, vk, cfg)?)
}

/// Unlocks without a password when the startup mode allows it (always for
/// an unencrypted store).
pub fn unlock_at_boot(
    store: &Path,
    engine: &Arc<Engine>,
) -> Result<Option<Arc<Volume>>, UnlockError> {
    let cfg = StoreConfig::load(store)?;
    if !has_keystore(store) && !cfg.engine.encrypted() {
        return load(engine, plain_keys(cfg)?).map(Some);
    }
    let ks = Keystore::open(store, &boot_key_dir())?;
    match ks.unlock_at_boot(&KatSet::embedded())? {
        Some(vk) => {
            let cfg = reconcile_config(store, &ks, cfg)?;
            load(engine, derive(&ks, vk, cfg)?).map(Some)
        }
        None => Ok(None),
    }
}
