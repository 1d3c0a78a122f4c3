//! `datastore init`, and opening an existing store for other commands.

use std::path::Path;

use keystore::{FipsMode, KatSet, Keystore, Provider};

use crate::remote::{Remote, RemoteConfig};

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
    check_store_dir(store)?;
    match std::fs::metadata(store.join(CONFIG_FILE)) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(Failure::new(
                Exit::Refused,
                format!("{}: permission denied (run as root)", store.display()),
            ))
        }
        _ => {}
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
    StoreConfig::load(store).map_err(|e| Failure::new(Exit::NotAStore, e.to_string()))
}

/// A store directory another local user made or can write is refused: that
/// user could replace the control socket (and receive the password) or the
/// log (and have root append to any file).
pub fn check_store_dir(store: &Path) -> Result<(), Failure> {
    let meta = std::fs::metadata(store)
        .map_err(|e| Failure::new(Exit::Io, format!("{}: {e}", store.display())))?;
    crate::fsutil::check_private(store, &meta)
        .map_err(|e| Failure::new(Exit::Refused, e.to_string()))
}

pub fn open_keystore(store: &Path) -> Result<Keystore, Failure> {
    load_config(store)?;
    Ok(Keystore::open(store, &boot_key_dir())?)
}

/// `datastore init`; returns the new password (a first `mount` goes on to
/// unlock with it instead of asking again).
pub fn init(
    cli: &Cli,
    fips: FipsArg,
    remote: Option<RemoteConfig>,
) -> Result<zeroize::Zeroizing<String>, Failure> {
    let store = &cli.store;
    check_new_store_dir(store)?;
    let fips = fips_of(fips);
    // The crypto module must come up before anything is asked or written.
    let provider = keystore::gate::for_mode(fips, &KatSet::embedded())?;
    // And the bucket must answer and hold no store yet.
    let remote = match remote {
        Some(cfg) => Some(empty_bucket(cfg)?),
        None => None,
    };
    let password = SecretReader::new().read("New password", cli.password_file.as_deref(), true)?;
    let mut id = [0u8; 16];
    provider.fill_random(&mut id)?;
    let store_id = hex::encode(id);
    create_store_dir(store)?;
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
    if let Some(r) = &remote {
        // The wrapped key slots go first: the bucket is then recognisably
        // this store's, and a lost host can be re-attached from it.
        let ks = std::fs::read(Keystore::dir_of(store).join(keystore::file::FILE_NAME))
            .map_err(|e| Failure::new(Exit::Io, format!("read the keystore: {e}")))?;
        r.put("keystore", ks)
            .map_err(|e| Failure::new(Exit::Io, e.to_string()))?;
    }
    // datastore.toml is written last: its presence marks a complete store.
    Engine::create(store, &store_id, &engine)?;
    if let Some(r) = &remote {
        let mut cfg =
            StoreConfig::load(store).map_err(|e| Failure::new(Exit::Io, e.to_string()))?;
        cfg.remote = Some(r.config().clone());
        cfg.save(store)
            .map_err(|e| Failure::new(Exit::Io, format!("cannot write datastore.toml: {e}")))?;
    }
    crate::say!("Created store {} (id {store_id}).", store.display());
    if let Some(r) = &remote {
        crate::say!(
            "Mirrored to {} (write-through from the first mount).",
            r.config().url
        );
    }
    crate::say!("Recovery key (shown once; keep it offline, it opens the store like a password):");
    crate::say!("  {}", recovery.as_str());
    Ok(password)
}

/// `init --log-dir DIR`: the intent log in DIR (created, mode 0700),
/// recorded in datastore.toml.
pub fn set_log_dir(store: &Path, dir: Option<&Path>) -> Result<(), Failure> {
    let Some(dir) = dir else {
        return Ok(());
    };
    if !dir.is_absolute() {
        return Err(Failure::new(
            Exit::Usage,
            format!("--log-dir {}: give an absolute path", dir.display()),
        ));
    }
    let io =
        |e: std::io::Error| Failure::new(Exit::Io, format!("log directory {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(io)?;
    let mut cfg = StoreConfig::load(store).map_err(|e| Failure::new(Exit::Io, e.to_string()))?;
    cfg.log_dir = Some(dir.to_path_buf());
    cfg.save(store)
        .map_err(|e| Failure::new(Exit::Io, format!("cannot write datastore.toml: {e}")))?;
    crate::say!("Intent log in {}.", dir.display());
    Ok(())
}

/// `init --no-encryption`: a store without keystore or password whose
/// chunks and metadata are stored in the clear (dedup and LZ4 still on).
pub fn init_unencrypted(cli: &Cli) -> Result<(), Failure> {
    let store = &cli.store;
    check_new_store_dir(store)?;
    let mut id = [0u8; 16];
    Provider::DEFAULT.fill_random(&mut id)?;
    let store_id = hex::encode(id);
    create_store_dir(store)?;
    let engine = EngineConfig {
        fingerprint: FingerprintAlg::Blake3,
        cipher: "none".into(),
        ..EngineConfig::default()
    };
    Engine::create(store, &store_id, &engine)?;
    crate::say!(
        "Created store {} (id {store_id}), NOT encrypted: file data, names and metadata are stored in the clear.",
        store.display()
    );
    crate::say!("Encrypt it later, online: datastore encryption set --fips-mode validated");
    Ok(())
}

/// Connects to the bucket and makes sure no store lives under the prefix.
fn empty_bucket(cfg: RemoteConfig) -> Result<Remote, Failure> {
    let io = |e: crate::remote::RemoteError| Failure::new(Exit::Io, e.to_string());
    let r = Remote::connect(&cfg).map_err(|e| Failure::new(Exit::Usage, e.to_string()))?;
    if r.get("keystore").map_err(io)?.is_some() {
        return Err(Failure::new(
            Exit::Refused,
            format!("{} already holds a store (use `datastore attach`)", cfg.url),
        ));
    }
    Ok(r)
}

/// `datastore attach`: a store recreated from its bucket.
pub fn attach(cli: &Cli, remote: Option<RemoteConfig>) -> Result<(), Failure> {
    let store = &cli.store;
    let Some(cfg) = remote else {
        return Err(Failure::new(
            Exit::Usage,
            "attach needs --remote s3://BUCKET/PREFIX",
        ));
    };
    check_new_store_dir(store)?;
    let password = SecretReader::new().read("Password", cli.password_file.as_deref(), false)?;
    create_store_dir(store)?;
    if let Err(e) = crate::remote::sync::attach(&cfg, store, &boot_key_dir(), password.as_bytes()) {
        // Leave no half-restored store behind (nothing was there before).
        for sub in ["keystore", "meta", "segments", CONFIG_FILE] {
            let p = store.join(sub);
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
        return Err(match e {
            crate::remote::RemoteError::Key(k) => k.into(),
            crate::remote::RemoteError::Config(m) => Failure::new(Exit::NotAStore, m),
            e @ crate::remote::RemoteError::Url(_) => Failure::new(Exit::NotAStore, e.to_string()),
            other => Failure::new(Exit::Io, other.to_string()),
        });
    }
    crate::say!("Attached {} from {}.", store.display(), cfg.url);
    Ok(())
}

/// Creates the store directory (0700; an existing one is checked).
fn create_store_dir(store: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::DirBuilderExt;
    if store.exists() {
        return check_store_dir(store);
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(store)
        .map_err(|e| Failure::new(Exit::Io, format!("cannot create {}: {e}", store.display())))
}

/// A path `init` or `attach` may create a store in: absent or an empty
/// directory.
pub fn check_new_store_dir(store: &Path) -> Result<(), Failure> {
    if store.exists() && !store.is_dir() {
        return Err(Failure::new(
            Exit::Usage,
            format!("{} exists and is not a directory", store.display()),
        ));
    }
    if !store.join(CONFIG_FILE).exists() && Keystore::dir_of(store).exists() {
        return Err(Failure::new(
            Exit::NotAStore,
            format!(
                "{} holds a keystore but no {CONFIG_FILE}: the store lost its configuration (put {CONFIG_FILE} back; nothing was created)",
                store.display()
            ),
        ));
    }
    if store.join(CONFIG_FILE).exists() {
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
    Ok(())
}
