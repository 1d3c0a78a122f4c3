//! What the command line (offline) and the mount daemon (online) both do
//! to a store, below both of them: loading keys and unlocking
//! (`keys`), the key conversion job (`conversion`), the status and
//! encryption report (`status`), and the control socket's typed messages
//! (`protocol`), spoken by the CLI as client and the daemon as server.
//!
//! Invariant: nothing here imports `cli` or `daemon`; both import this.

pub mod conversion;
pub mod keys;
pub mod protocol;
pub mod status;
