//! Turning a store's keystore into loaded keys: unlock (password or boot
//! key), build the chunk crypto and the volume. The volume key itself is
//! dropped (zeroized) as soon as the derived key schedules exist.

use std::path::Path;
use std::sync::Arc;

use keystore::{KatSet, Keystore, VolumeKey};

use crate::cli::boot_key_dir;
use crate::config::StoreConfig;
use crate::crypto::ChunkCrypto;
use crate::engine::Engine;
use crate::volume::Volume;

#[derive(Debug, thiserror::Error)]
pub enum UnlockError {
    #[error(transparent)]
    Key(#[from] keystore::KeystoreError),
    #[error("{0}")]
    Volume(String),
    #[error("{0}")]
    Config(String),
}

/// Loads keys into the engine and opens the volume.
pub fn load(engine: &Arc<Engine>, vk: VolumeKey) -> Result<Arc<Volume>, UnlockError> {
    let alg = engine.config().fingerprint;
    let crypto = Arc::new(ChunkCrypto::new(
        vk.provider(),
        vk.xts_key(),
        vk.fingerprint_key(),
        alg,
    )?);
    attach_remote(engine, &vk)?;
    engine.set_crypto(Some(crypto));
    match Volume::open(engine.clone(), vk.metadata_key()) {
        Ok(v) => {
            let v = Arc::new(v);
            v.start_flusher();
            v.start_readahead();
            Ok(v)
        }
        Err(e) => {
            engine.set_crypto(None);
            Err(UnlockError::Volume(format!("cannot open the volume: {e}")))
        }
    }
}

/// Connects the bucket mirror of a store that has one and loads its key,
/// before the volume opens (its first durable commit already syncs).
fn attach_remote(engine: &Arc<Engine>, vk: &VolumeKey) -> Result<(), UnlockError> {
    let cfg = StoreConfig::load(engine.store_dir()).map_err(UnlockError::Config)?;
    let Some(remote_cfg) = cfg.remote else {
        return Ok(());
    };
    let remote = match engine.remote() {
        Some(r) => r,
        None => Arc::new(
            crate::remote::Remote::connect(&remote_cfg)
                .map_err(|e| UnlockError::Config(e.to_string()))?,
        ),
    };
    remote
        .set_key(vk.provider(), vk.metadata_key())
        .map_err(|e| UnlockError::Config(e.to_string()))?;
    engine.set_remote(Some(remote));
    Ok(())
}

/// Unlocks with a password (or recovery key).
pub fn unlock_with_password(
    store: &Path,
    engine: &Arc<Engine>,
    password: &[u8],
) -> Result<Arc<Volume>, UnlockError> {
    StoreConfig::load(store).map_err(UnlockError::Config)?;
    let mut ks = Keystore::open(store, &boot_key_dir())?;
    let vk = ks.unlock(password, &KatSet::embedded())?;
    load(engine, vk)
}

/// Unlocks without a password when the startup mode allows it.
pub fn unlock_at_boot(
    store: &Path,
    engine: &Arc<Engine>,
) -> Result<Option<Arc<Volume>>, UnlockError> {
    let ks = Keystore::open(store, &boot_key_dir())?;
    match ks.unlock_at_boot(&KatSet::embedded())? {
        Some(vk) => load(engine, vk).map(Some),
        None => Ok(None),
    }
}
