//! What names a chunk in every layer: its fingerprint, the key generation
//! its record is under, and a reference to it (fingerprint and length).
//!
//! Owns these plain types only; it imports nothing of the crate, so the
//! layers that share them (store, crypto, meta, engine, volume) do not
//! import each other for them.

/// A chunk's keyed fingerprint (docs/FORMAT.md, "Chunking and
/// fingerprints"): 32 bytes whichever algorithm made it.
pub type Fingerprint = [u8; 32];

/// Which key a record's payload is under: none (an unencrypted store), or
/// the volume key of one generation (see docs/FORMAT.md, "Key generations").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum KeyGen {
    #[default]
    Plain,
    Key(u16),
}

impl std::fmt::Display for KeyGen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyGen::Plain => write!(f, "unencrypted"),
            KeyGen::Key(g) => write!(f, "key generation {g}"),
        }
    }
}

/// One chunk of a stored stream: the recipe of a stream is a list of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    pub fingerprint: Fingerprint,
    pub len: u32,
}
