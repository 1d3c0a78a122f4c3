//! datastore: a FUSE-mounted, encrypted, deduplicating datastore.
//! See ../shared/DESIGN.md for the layer map; each module's top comment says
//! what it owns.

pub mod cli;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod engine;
pub mod fs;
pub mod fsutil;
pub mod meta;
pub mod remote;
pub mod store;
pub mod volume;
