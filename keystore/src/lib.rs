//! keystore: every secret of a datastore store lives here.
//!
//! Owns the key hierarchy (password -> KEK -> volume key -> data, fingerprint
//! and metadata keys), the on-disk keyslots, startup and shipping modes, the
//! known-answer self-tests, and the locked memory that key bytes and AES key
//! schedules live in. Nothing outside this crate sees an unwrapped key as a
//! plain byte array that outlives the call.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod error;
pub mod file;
pub mod gate;
pub mod kdf;
#[allow(clippy::module_inception)]
pub mod keystore;
pub mod provider;
pub mod secmem;
pub mod selftest;
pub mod volume;
pub mod xts;

pub use error::{KeystoreError, ModuleError};
pub use file::{Retiring, RetiringKey, SlotKind, StartupMode};
pub use gate::ModuleStatus;
pub use keystore::{
    Keystore, KeystoreInfo, RecoveryKey, SlotOptions, FIPS_MIN_PASSWORD, MIN_PASSWORD,
};
pub use provider::{FipsMode, GcmKey, HmacKey, Provider, XtsKey};
pub use secmem::{harden_process, locked_bytes, process_is_hardened, LockedBox};
pub use selftest::{KatSet, SelfTestReport};
pub use volume::VolumeKey;
pub use xts::Xts256;
