//! Well-known places outside a store, shared by the commands and the
//! daemon. Each can be moved by an environment variable (tests and
//! packagers do).

use std::path::PathBuf;

/// Where boot keys (startup mode `unlocked`) live: outside the store, so a
/// stolen store drive does not carry them. `$DATASTORE_BOOT_KEY_DIR`, or
/// `/etc/datastore/boot-keys`.
pub fn boot_key_dir() -> PathBuf {
    std::env::var_os("DATASTORE_BOOT_KEY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/datastore/boot-keys"))
}
