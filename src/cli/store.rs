//! `datastore init`, and opening an existing store for other commands.

use std::path::Path;

use keystore::{FipsMode, KatSet, Keystore, Provider};

use super::exit::{Exit, Failure};
use super::secrets::SecretReader;
use super::{boot_key_dir, kdf_options, Cli, FipsArg};
use crate::config::{EngineConfig, StoreConfig, CONFIG_FILE};
use crate::crypto::FingerprintAlg;
use crate::engine::Engine;

pub fn fips_of(a: FipsArg) -> FipsMode {
    match a {
        FipsArg::Validated => FipsMode::Validated,
        FipsArg::Disabled => FipsMode::Disabled,
    }
}

/// Loads datastore.toml, with a clear error when `store` is not a store.
pub fn load_config(store: &Path) -> Result<StoreConfig, Failure> {
    if !store.exists() {
        return Err(Failure::new(
            Exit::NotAStore,
            format!(
                "{} does not exist (create a store with `datastore init`)",
                store.display()
            ),
        ));
    }
    if !store.is_dir() {
        return Err(Failure::new(
            Exit::NotAStore,
            format!("{} is not a directory", store.display()),
        ));
    }
    if !store.join(CONFIG_FILE).exists() {
        return Err(Failure::new(
            Exit::NotAStore,
            format!(
                "{} is not a datastore store (no {CONFIG_FILE})",
                store.display()
            ),
        ));
    }
    StoreConfig::load(store).map_err(|m| Failure::new(Exit::NotAStore, m))
}

pub fn open_keystore(store: &Path) -> Result<Keystore, Failure> {
    load_config(store)?;
    Ok(Keystore::open(store, &boot_key_dir())?)
}

pub fn init(cli: &Cli, fips: FipsArg) -> Result<(), Failure> {
    let store = &cli.store;
    if store.exists() && !store.is_dir() {
        return Err(Failure::new(
            Exit::Usage,
            format!("{} exists and is not a directory", store.display()),
        ));
    }
    if store.join(CONFIG_FILE).exists() || Keystore::dir_of(store).exists() {
        return Err(Failure::new(
            Exit::Refused,
            format!("{} already holds a store", store.display()),
        ));
    }
    if store.exists()
        && std::fs::read_dir(store)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Failure::new(
            Exit::Refused,
            format!("{} is not empty", store.display()),
        ));
    }
    let fips = fips_of(fips);
    // The crypto module must come up before anything is asked or written.
    let provider = Provider::for_mode(fips, &KatSet::embedded())?;
    let password = SecretReader::new().read("New password", cli.password_file.as_deref(), true)?;
    let mut id = [0u8; 16];
    provider.fill_random(&mut id)?;
    let store_id = hex::encode(id);
    std::fs::create_dir_all(store)
        .map_err(|e| Failure::new(Exit::Io, format!("cannot create {}: {e}", store.display())))?;
    let (_ks, _vk, recovery) = Keystore::create(
        store,
        &store_id,
        &boot_key_dir(),
        password.as_bytes(),
        fips,
        &kdf_options(),
    )?;
    let engine = EngineConfig {
        fingerprint: if fips == FipsMode::Validated {
            FingerprintAlg::HmacSha256
        } else {
            FingerprintAlg::Blake3Keyed
        },
        ..EngineConfig::default()
    };
    // datastore.toml is written last: its presence marks a complete store.
    Engine::create(store, &store_id, &engine)?;
    println!("Created store {} (id {store_id}).", store.display());
    println!("Recovery key (shown once; keep it offline, it opens the store like a password):");
    println!("  {}", recovery.as_str());
    Ok(())
}
