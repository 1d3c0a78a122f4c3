//! The keystore's error type. Messages are one line, name what failed, and
//! never contain key bytes or passwords.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    #[error("wrong password or key")]
    WrongPassword,
    #[error("cannot protect key memory: {0}")]
    SecureMemory(String),
    #[error("refused key: {0}")]
    WeakKey(&'static str),
    #[error("no keystore at {0}")]
    NotFound(PathBuf),
    #[error("keystore is corrupt: {0}")]
    Corrupt(String),
    #[error("cryptographic self-test failed: {0}")]
    SelfTest(String),
    #[error("{0}")]
    Refused(String),
    #[error(
        "the FIPS module did not report the service approved: {0} (refused in validated mode)"
    )]
    NotApproved(String),
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),
    #[error("sealed data failed authentication (damaged or tampered)")]
    Tampered,
    #[error("the system random generator failed")]
    Random,
    #[error("keystore I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why the validated provider could not be brought up (kept for the
/// process, so it is `Clone`).
#[derive(Clone, Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("{name}: the module does not report FIPS mode (FIPS_mode() != 1)")]
    NotFipsMode { name: String },
    #[error("{name}: the module's self-tests failed")]
    PowerOnSelfTests { name: String },
    #[error("known-answer tests through {name} failed: {failed:?}")]
    KnownAnswers { name: String, failed: Vec<String> },
    #[error("this build has no FIPS module: rebuild with the default features (`cargo build --release`, needs cmake and golang-go) to use --fips-mode validated")]
    NotBuiltIn,
}

impl KeystoreError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        KeystoreError::Io {
            path: path.into(),
            source,
        }
    }
}
