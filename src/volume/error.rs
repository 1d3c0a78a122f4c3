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
            crate::engine::EngineError::Meta(m) => m.into(),
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
    /// A full disk under the metadata database is ENOSPC to the writer (as
    /// under the segments); anything else is EIO.
    fn from(e: crate::meta::MetaError) -> Self {
        match e.os_error() {
            Some(libc::ENOSPC) => VolError {
                errno: libc::ENOSPC,
                cause: Some(e.to_string()),
            },
            _ => VolError::io(e),
        }
    }
}

pub type VResult<T> = Result<T, VolError>;

pub fn err<T>(errno: i32) -> VResult<T> {
    Err(VolError::new(errno))
}

#[cfg(test)]
mod tests {
    use super::VolError;
    use crate::engine::EngineError;
    use crate::meta::MetaError;

    fn full_disk() -> MetaError {
        MetaError::Io {
            what: "commit",
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        }
    }

    #[test]
    fn a_full_disk_under_the_metadata_database_is_enospc_not_eio() {
        assert_eq!(VolError::from(full_disk()).errno, libc::ENOSPC);
        assert_eq!(
            VolError::from(EngineError::Meta(full_disk())).errno,
            libc::ENOSPC
        );
        let other = MetaError::Exists("x".into());
        assert_eq!(VolError::from(EngineError::Meta(other)).errno, libc::EIO);
    }
}
