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

impl KeystoreError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        KeystoreError::Io {
            path: path.into(),
            source,
        }
    }
}
