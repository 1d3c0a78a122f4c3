//! The volume's error: a POSIX errno plus, for I/O failures below, the
//! cause (logged by the FUSE edge, never shown to other users).

#[derive(Debug)]
pub struct VolError {
    pub errno: i32,
    pub cause: Option<String>,
}

impl VolError {
    pub fn new(errno: i32) -> Self {
        VolError { errno, cause: None }
    }
    pub fn io(cause: impl std::fmt::Display) -> Self {
        VolError {
            errno: libc::EIO,
            cause: Some(cause.to_string()),
        }
    }
}

impl std::fmt::Display for VolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.errno))?;
        if let Some(c) = &self.cause {
            write!(f, " ({c})")?;
        }
        Ok(())
    }
}

impl std::error::Error for VolError {}

impl From<crate::engine::EngineError> for VolError {
    fn from(e: crate::engine::EngineError) -> Self {
        match e {
            crate::engine::EngineError::Locked => VolError::new(libc::EACCES),
            crate::engine::EngineError::Io { ref source, .. }
                if source.raw_os_error() == Some(libc::ENOSPC) =>
            {
                VolError {
                    errno: libc::ENOSPC,
                    cause: Some(e.to_string()),
                }
            }
            other => VolError::io(other),
        }
    }
}

impl From<crate::meta::MetaError> for VolError {
    fn from(e: crate::meta::MetaError) -> Self {
        VolError::io(e)
    }
}

pub type VResult<T> = Result<T, VolError>;

pub fn err<T>(errno: i32) -> VResult<T> {
    Err(VolError::new(errno))
}
