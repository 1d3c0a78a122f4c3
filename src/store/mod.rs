//! Where chunk records live. Today: local append-only segment files
//! (`segment`) holding records in the format of `record`.

pub mod append;
pub mod intent_log;
pub mod record;
pub mod segment;
