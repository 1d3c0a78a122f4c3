//! The chunk record: the unit written to segments (and, later, remote packs).
//!
//! Layout (all integers little-endian; see docs/FORMAT.md):
//!
//! ```text
//!  0  magic        4   "DSR1"
//!  4  version      1   1
//!  5  flags        1   bit 0: payload is LZ4 block-compressed
//!                      bit 1: payload is not encrypted (unencrypted store)
//!  6  generation   2   key generation the payload is encrypted under
//!                      (0 for the first key; records written before key
//!                      generations existed carry 0 here)
//!  8  plain_len    4   chunk length (1 ..= MAX_PLAIN)
//! 12  stored_len   4   payload length before padding (<= plain_len)
//! 16  cipher_len   4   max(stored_len, 16)
//! 20  fingerprint 32   keyed fingerprint of the plaintext chunk
//! 52  header_crc   4   CRC32C of bytes 0..52
//! 56  ciphertext   cipher_len
//!  .  data_crc     4   CRC32C of the ciphertext
//! ```
//!
//! Invariant: `parse_header` accepts a header only if its CRC, magic, version,
//! flags and length relations all hold, so a reader never trusts a length
//! field it has not checked.

use crate::chunk::Fingerprint;
pub use crate::chunk::KeyGen;

pub const MAGIC: [u8; 4] = *b"DSR1";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 56;
pub const TRAILER_LEN: usize = 4;
/// Largest chunk the format admits (the chunker's max is far below).
pub const MAX_PLAIN: u32 = 16 << 20;
pub const FLAG_LZ4: u8 = 1;
pub const FLAG_PLAIN: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub flags: u8,
    /// Key generation (meaningless, and 0, when FLAG_PLAIN is set).
    pub generation: u16,
    pub plain_len: u32,
    pub stored_len: u32,
    pub cipher_len: u32,
    pub fingerprint: Fingerprint,
}

impl RecordHeader {
    /// Whole record length on disk.
    pub fn record_len(&self) -> u64 {
        (HEADER_LEN + self.cipher_len as usize + TRAILER_LEN) as u64
    }
    pub fn compressed(&self) -> bool {
        self.flags & FLAG_LZ4 != 0
    }
    pub fn key_gen(&self) -> KeyGen {
        if self.flags & FLAG_PLAIN != 0 {
            KeyGen::Plain
        } else {
            KeyGen::Key(self.generation)
        }
    }
}

/// Why a header was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    Short,
    BadCrc,
    BadMagic,
    BadVersion(u8),
    BadFields(&'static str),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Short => write!(f, "record header cut short"),
            HeaderError::BadCrc => write!(f, "record header CRC mismatch"),
            HeaderError::BadMagic => write!(f, "bad record magic"),
            HeaderError::BadVersion(v) => write!(f, "unknown record version {v}"),
            HeaderError::BadFields(w) => write!(f, "inconsistent record header: {w}"),
        }
    }
}

/// Fills in the header of `record` (HEADER_LEN bytes of space followed by
/// the ciphertext); the caller writes the trailer (CRC32C of the
/// ciphertext). Lets records be built in one buffer without copying.
pub fn seal_in_place(header: &RecordHeader, record: &mut [u8]) {
    let h = &mut record[..HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4] = VERSION;
    h[5] = header.flags;
    h[6..8].copy_from_slice(&header.generation.to_le_bytes());
    h[8..12].copy_from_slice(&header.plain_len.to_le_bytes());
    h[12..16].copy_from_slice(&header.stored_len.to_le_bytes());
    h[16..20].copy_from_slice(&header.cipher_len.to_le_bytes());
    h[20..52].copy_from_slice(&header.fingerprint);
    let crc = crc32c::crc32c(&h[..52]);
    h[52..56].copy_from_slice(&crc.to_le_bytes());
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses and validates the fixed header.
pub fn parse_header(b: &[u8]) -> Result<RecordHeader, HeaderError> {
    if b.len() < HEADER_LEN {
        return Err(HeaderError::Short);
    }
    if crc32c::crc32c(&b[..52]) != u32_at(b, 52) {
        return Err(HeaderError::BadCrc);
    }
    if b[0..4] != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    if b[4] != VERSION {
        return Err(HeaderError::BadVersion(b[4]));
    }
    let flags = b[5];
    if flags & !(FLAG_LZ4 | FLAG_PLAIN) != 0 {
        return Err(HeaderError::BadFields("unknown flags"));
    }
    let generation = u16::from_le_bytes([b[6], b[7]]);
    if flags & FLAG_PLAIN != 0 && generation != 0 {
        return Err(HeaderError::BadFields(
            "generation on an unencrypted record",
        ));
    }
    let plain_len = u32_at(b, 8);
    let stored_len = u32_at(b, 12);
    let cipher_len = u32_at(b, 16);
    if plain_len == 0 || plain_len > MAX_PLAIN {
        return Err(HeaderError::BadFields("plain length"));
    }
    let compressed = flags & FLAG_LZ4 != 0;
    if (compressed && stored_len >= plain_len) || (!compressed && stored_len != plain_len) {
        return Err(HeaderError::BadFields("stored length"));
    }
    if stored_len == 0 || cipher_len != stored_len.max(16) {
        return Err(HeaderError::BadFields("cipher length"));
    }
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(&b[20..52]);
    Ok(RecordHeader {
        flags,
        generation,
        plain_len,
        stored_len,
        cipher_len,
        fingerprint,
    })
}

/// Checks the ciphertext CRC of a whole record whose header parsed as `h`.
pub fn check_body(h: &RecordHeader, record: &[u8]) -> bool {
    let end = HEADER_LEN + h.cipher_len as usize;
    if record.len() != end + TRAILER_LEN {
        return false;
    }
    crc32c::crc32c(&record[HEADER_LEN..end]) == u32_at(record, end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parse_header_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse_header(&bytes);
        }
    }

    #[test]
    fn roundtrip_header() {
        let h = RecordHeader {
            flags: FLAG_LZ4,
            generation: 3,
            plain_len: 100,
            stored_len: 40,
            cipher_len: 40,
            fingerprint: [9; 32],
        };
        let mut out = vec![0u8; HEADER_LEN];
        out.extend_from_slice(&[1u8; 40]);
        seal_in_place(&h, &mut out);
        let crc = crc32c::crc32c(&out[HEADER_LEN..]);
        out.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(out.len() as u64, h.record_len());
        assert_eq!(parse_header(&out).unwrap(), h);
        assert_eq!(h.key_gen(), KeyGen::Key(3));
        assert!(check_body(&h, &out));
    }
}
