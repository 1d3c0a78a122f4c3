//! keystore: every secret of a datastore store lives here.
//!
//! Owns the key hierarchy (password -> KEK -> volume key -> data, fingerprint
//! and metadata keys), the on-disk keyslots, startup and shipping modes, the
//! known-answer self-tests, and the locked memory that key bytes and AES key
//! schedules live in. Nothing outside this crate sees an unwrapped key as a
//! plain byte array that outlives the call.

pub mod error;
pub mod secmem;
pub mod xts;

pub use error::KeystoreError;
pub use secmem::{harden_process, locked_bytes, LockedBox};
pub use xts::Xts256;
