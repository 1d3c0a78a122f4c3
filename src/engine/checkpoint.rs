//! Taking checkpoint frames of the metadata database (`meta::checkpoint`
//! owns the file) and refusing a database older than its checkpoint.
//!
//! Owns: when a frame is taken (a base at unmount, after gc and when asked;
//! a delta when the index changed since the last frame) and the commit
//! that precedes it.
//!
//! Invariants: a frame's image is read under the commit lock right after a
//! durable commit that wrote the frame's sequence number into the database,
//! so the image is one committed state and holds its own number; frames are
//! taken one at a time. An open refuses a database whose number is smaller
//! than the checkpoint's newest (it was put back from an earlier copy):
//! opening it read-write would cut or reclaim what was committed since.

use std::sync::atomic::Ordering;

use super::{lock, Engine, EngineError, Result};
use crate::meta::checkpoint;
use crate::meta::{CommitRows, Meta, MetaError};

impl Engine {
    /// Commits durably and writes a base frame: the checkpoint then holds
    /// exactly this state (at unmount, after gc and key conversions).
    pub fn write_checkpoint(&self) -> Result<()> {
        self.take_frame(true).map(|_| ())
    }

    /// Appends a delta frame when the index changed since the last frame
    /// (the daemon calls this every few seconds); returns whether it did.
    pub fn journal_checkpoint(&self) -> Result<bool> {
        let last = lock(&self.checkpoint).1;
        let unchanged = last == Some(self.index_generation.load(Ordering::SeqCst));
        // A stopped engine commits nothing (status says why).
        if unchanged || self.is_read_only() || self.check_poisoned().is_err() {
            return Ok(false);
        }
        self.take_frame(false)
    }

    fn take_frame(&self, base: bool) -> Result<bool> {
        let mut slot = lock(&self.checkpoint);
        let (writer, last_generation) = &mut *slot;
        let staged = {
            let _c = lock(&self.commit_lock);
            let seq = self.meta.checkpoint_seq()? + 1;
            let rows = CommitRows {
                checkpoint_seq: Some(seq),
                ..Default::default()
            };
            self.commit_locked(true, &[], rows, &mut || {})?;
            *last_generation = Some(self.index_generation.load(Ordering::SeqCst));
            writer.stage(self.meta.path(), seq, base)
        };
        staged
            .and_then(|s| writer.finish(s))
            .map_err(|e| EngineError::Io {
                what: "write the metadata checkpoint".into(),
                source: match e {
                    checkpoint::CheckpointError::Io(e) => e,
                    other => std::io::Error::other(other.to_string()),
                },
            })
    }
}

/// Refuses a database older than its checkpoint. A checkpoint that cannot
/// be read is no reason to refuse the database (it is the second copy):
/// that is logged, and the next base replaces it.
pub(super) fn refuse_older_database(meta: &Meta, store_id: &[u8; 16]) -> Result<()> {
    match older_than_checkpoint(meta, store_id) {
        Ok(Some(e)) => Err(e.into()),
        Ok(None) => Ok(()),
        Err(e) => {
            crate::log_line!(
                "datastore: the metadata checkpoint {} cannot be used ({e}); the next one replaces it",
                checkpoint::path(meta.path()).display()
            );
            Ok(())
        }
    }
}

/// `MetaError::Older` when the database holds an older checkpoint number
/// than the checkpoint's newest frame; Err when the checkpoint is
/// unreadable.
pub fn older_than_checkpoint(
    meta: &Meta,
    store_id: &[u8; 16],
) -> std::result::Result<Option<MetaError>, checkpoint::CheckpointError> {
    let db = meta
        .checkpoint_seq()
        .map_err(|e| checkpoint::CheckpointError::Io(std::io::Error::other(e.to_string())))?;
    Ok(match checkpoint::newest_seq(meta.path(), store_id)? {
        Some(newest) if newest > db => Some(MetaError::Older {
            path: meta.path().to_path_buf(),
            db,
            checkpoint: newest,
        }),
        _ => None,
    })
}
