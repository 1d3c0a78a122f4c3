//! Exit codes (documented in README.md) and the mapping from every layer's
//! errors to a code and a one-line message.

use keystore::KeystoreError;

use crate::engine::EngineError;
use crate::meta::MetaError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Error = 1,
    Usage = 2,
    WrongPassword = 3,
    NotAStore = 4,
    Locked = 5,
    SelfTest = 6,
    Io = 7,
    Refused = 8,
    InUse = 9,
    Damaged = 10,
}

/// A failed command: the code and the line printed on stderr.
#[derive(Debug)]
pub struct Failure {
    pub code: Exit,
    pub message: String,
}

impl Exit {
    /// The code a process exited with (or a daemon replied), back as an
    /// `Exit`; anything unknown is `Error`.
    pub fn from_code(code: i32) -> Exit {
        use Exit::*;
        [
            Ok,
            Error,
            Usage,
            WrongPassword,
            NotAStore,
            Locked,
            SelfTest,
            Io,
            Refused,
            InUse,
            Damaged,
        ]
        .into_iter()
        .find(|e| *e as i32 == code)
        .unwrap_or(Error)
    }
}

impl Failure {
    pub fn new(code: Exit, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

fn keystore_code(e: &KeystoreError) -> Exit {
    match e {
        KeystoreError::WrongPassword => Exit::WrongPassword,
        KeystoreError::NotFound(_) => Exit::NotAStore,
        KeystoreError::SelfTest(_) | KeystoreError::NotApproved(_) => Exit::SelfTest,
        KeystoreError::Tampered => Exit::Damaged,
        KeystoreError::Crypto(_) => Exit::Error,
        KeystoreError::Io { .. } => Exit::Io,
        KeystoreError::Refused(_) | KeystoreError::WeakKey(_) => Exit::Refused,
        KeystoreError::Corrupt(_) => Exit::Damaged,
        KeystoreError::SecureMemory(_) | KeystoreError::Random => Exit::Error,
    }
}

impl From<KeystoreError> for Failure {
    fn from(e: KeystoreError) -> Self {
        Failure::new(keystore_code(&e), e.to_string())
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        let code = match &e {
            EngineError::Io { .. } => Exit::Io,
            EngineError::Locked => Exit::Locked,
            EngineError::InUse(_) => Exit::InUse,
            EngineError::Config(_)
            | EngineError::StoreConfig(_)
            | EngineError::InvalidConfig(_) => Exit::NotAStore,
            EngineError::Integrity { .. } | EngineError::NotFound(_) => Exit::Damaged,
            EngineError::Key(k) => keystore_code(k),
            EngineError::Meta(
                MetaError::Missing(_) | MetaError::Corrupt { .. } | MetaError::Older { .. },
            ) => Exit::Damaged,
            EngineError::Meta(m) if m.os_error().is_some() => Exit::Io,
            EngineError::Meta(_) | EngineError::Poisoned | EngineError::ReadOnly => Exit::Error,
            EngineError::Remote(_) => Exit::Io,
        };
        Failure::new(code, e.to_string())
    }
}
