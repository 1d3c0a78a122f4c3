//! Chunk compression: a chunk becomes one LZ4 block (no size prefix) when
//! that is shorter than the chunk.
//!
//! Level 0 is LZ4's fast mode (lz4_flex). Levels 1..=12 are the reference
//! library's high-compression modes (liblz4 through the `lz4` crate; 1 and 2
//! are its "mid" mode: ~0.4 GB/s per core on source code, ~10% smaller than
//! fast mode on source code and JSON). Every level writes the same LZ4
//! block format, which the read path decodes with lz4_flex alone, so the
//! level is a writer's choice: it is not recorded and can change at any time.
//!
//! Invariant: `compress_into` returns `Some(n)` only for an n-byte block
//! that is shorter than the chunk and decodes back to it.

/// Highest level accepted (liblz4's LZ4HC_CLEVEL_MAX).
pub const MAX_LEVEL: u8 = 12;
/// New and existing stores use this unless datastore.toml says otherwise.
pub const DEFAULT_LEVEL: u8 = 1;

/// Shorter chunks are stored as they are: LZ4 cannot shrink them (a block
/// ends with at least 5 literals and its last match starts 12 bytes before
/// the end), and liblz4 1.10's optimal parser (levels 10-12) reads before
/// its input when given none.
const MIN_COMPRESSIBLE: usize = 32;

/// Room `compress_into` may need for a chunk of `len` bytes.
pub fn max_output(len: usize) -> usize {
    lz4_flex::block::get_maximum_output_size(len)
}

/// Compresses `chunk` into `out` (at least `max_output(chunk.len())` bytes)
/// at `level`; `None` when the block would not be shorter than the chunk.
pub fn compress_into(level: u8, chunk: &[u8], out: &mut [u8]) -> Option<usize> {
    if chunk.len() < MIN_COMPRESSIBLE {
        return None;
    }
    let n = if level == 0 {
        lz4_flex::block::compress_into(chunk, out).ok()?
    } else {
        // Capacity one byte short of the chunk: liblz4 gives up (returns an
        // error) as soon as the block cannot be shorter.
        let room = chunk.len().saturating_sub(1).min(out.len());
        let mode = lz4::block::CompressionMode::HIGHCOMPRESSION(i32::from(level.min(MAX_LEVEL)));
        lz4::block::compress_to_buffer(chunk, Some(mode), false, &mut out[..room]).ok()?
    };
    (n > 0 && n < chunk.len()).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(len: usize) -> Vec<u8> {
        let words = [
            "\"name\": ",
            "\"shape\": ",
            "\"documentation\": ",
            "<p>Returns ",
            "the ",
            "bucket ",
            "{",
            "}, ",
            "\n",
        ];
        let mut x: u32 = 12345;
        let mut v = Vec::with_capacity(len + 32);
        while v.len() < len {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            v.extend_from_slice(words[(x >> 16) as usize % words.len()].as_bytes());
            v.extend_from_slice(format!("{}", (x >> 8) % 1000).as_bytes());
        }
        v.truncate(len);
        v
    }

    fn round_trip(level: u8, chunk: &[u8]) -> Option<usize> {
        let mut out = vec![0u8; max_output(chunk.len())];
        let n = compress_into(level, chunk, &mut out)?;
        let back = lz4_flex::block::decompress(&out[..n], chunk.len()).expect("valid LZ4 block");
        assert_eq!(back, chunk, "level {level}");
        Some(n)
    }

    #[test]
    fn every_level_writes_blocks_the_reader_decodes() {
        let chunk = text(64 * 1024);
        for level in 0..=MAX_LEVEL {
            let n = round_trip(level, &chunk).expect("text compresses");
            assert!(n < chunk.len() / 2, "level {level}: {n}");
        }
    }

    #[test]
    fn the_default_level_beats_fast_mode_on_text() {
        let chunk = text(64 * 1024);
        let fast = round_trip(0, &chunk).unwrap();
        let default = round_trip(DEFAULT_LEVEL, &chunk).unwrap();
        assert!(default < fast, "default {default} vs fast {fast}");
    }

    #[test]
    fn short_chunks_round_trip_at_every_level() {
        let repetitive = vec![b'a'; 300];
        let prose = text(300);
        for level in 0..=MAX_LEVEL {
            for len in 0..300 {
                round_trip(level, &repetitive[..len]);
                round_trip(level, &prose[..len]);
            }
            assert!(round_trip(level, &repetitive[..MIN_COMPRESSIBLE]).is_some());
        }
    }

    #[test]
    fn incompressible_and_tiny_chunks_are_left_alone() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let random: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        for level in [0, DEFAULT_LEVEL, MAX_LEVEL] {
            assert_eq!(round_trip(level, &random), None, "level {level}");
            assert_eq!(round_trip(level, b"a"), None, "level {level}");
            assert_eq!(round_trip(level, b""), None, "level {level}");
        }
    }
}
