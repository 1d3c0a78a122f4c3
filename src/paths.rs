//! Well-known places (outside a store, and the intent log inside one),
//! shared by the commands and the daemon. Each place outside a store can
//! be moved by an environment variable (tests and packagers do).

use std::path::PathBuf;

/// Where boot keys (startup mode `unlocked`) live: outside the store, so a
/// stolen store drive does not carry them. `$DATASTORE_BOOT_KEY_DIR`, or
/// `/etc/datastore/boot-keys`.
pub fn boot_key_dir() -> PathBuf {
    std::env::var_os("DATASTORE_BOOT_KEY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/datastore/boot-keys"))
}

/// The intent log's directory of a store (docs/FORMAT.md, "Intent log").
pub fn intent_log_dir(store: &std::path::Path) -> PathBuf {
    store.join("intent")
}
