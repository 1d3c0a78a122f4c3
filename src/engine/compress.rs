//! Chunk compression: a chunk becomes one LZ4 block (no size prefix) when
//! that is shorter than the chunk.
//!
//! Level 0 is LZ4's fast mode (lz4_flex). Levels 1..=12 are the reference
//! library's high-compression modes (liblz4, built by the `lz4-sys` crate; 1 and 2
//! are its "mid" mode: ~0.4 GB/s per core on source code, ~10% smaller than
//! fast mode on source code and JSON). Every level writes the same LZ4
//! block format, which the read path decodes with lz4_flex alone, so the
//! level is a writer's choice: it is not recorded and can change at any time.
//!
//! The high-compression modes run in a per-thread liblz4 state that is
//! reset cheaply between chunks (`LZ4_compress_HC_extStateHC_fastReset`):
//! `LZ4_compress_HC` allocates and clears a fresh 256 KiB state for every
//! call, which cost more than compressing an incompressible 64 KiB chunk.
//!
//! Invariant: `compress_into` returns `Some(n)` only for an n-byte block
//! that is shorter than the chunk and decodes back to it.

use std::cell::RefCell;
use std::os::raw::{c_char, c_int, c_void};

// liblz4 is built and linked by lz4-sys; these three are in its
// "static linking only" API (lz4hc.h, LZ4_HC_STATIC_LINKING_ONLY), which
// lz4-sys does not declare.
extern "C" {
    fn LZ4_sizeofStateHC() -> c_int;
    fn LZ4_initStreamHC(state: *mut c_void, size: usize) -> *mut c_void;
    fn LZ4_compress_HC_extStateHC_fastReset(
        state: *mut c_void,
        src: *const c_char,
        dst: *mut c_char,
        src_size: c_int,
        dst_capacity: c_int,
        level: c_int,
    ) -> c_int;
}

/// Highest level accepted (liblz4's LZ4HC_CLEVEL_MAX).
pub const MAX_LEVEL: u8 = crate::config::MAX_COMPRESSION_LEVEL;
/// New and existing stores use this unless datastore.toml says otherwise.
pub const DEFAULT_LEVEL: u8 = crate::config::DEFAULT_COMPRESSION_LEVEL;

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
        HC_STATE.with(|state| state.borrow_mut().compress(level, chunk, out))?
    };
    (n > 0 && n < chunk.len()).then_some(n)
}

thread_local! {
    static HC_STATE: RefCell<HcState> = RefCell::new(HcState::new());
}

/// One thread's liblz4 high-compression state (`LZ4_streamHC_t`, 8-byte
/// aligned as liblz4 requires). It is never left "dirty": every call gets
/// an output buffer of at least `LZ4_compressBound` bytes, so compression
/// cannot fail half way, and the next call's fast reset stays valid
/// (liblz4 itself clears the tables every 1 GB of input).
struct HcState {
    words: Box<[u64]>,
}

impl HcState {
    fn new() -> Self {
        // SAFETY: a pure function of liblz4's build.
        let size = usize::try_from(unsafe { LZ4_sizeofStateHC() }).expect("liblz4 state size");
        let mut words = vec![0u64; size.div_ceil(8)].into_boxed_slice();
        // SAFETY: `words` is `size` bytes or more, writable and 8-byte
        // aligned; liblz4 initialises it in place.
        let init = unsafe { LZ4_initStreamHC(words.as_mut_ptr().cast(), size) };
        assert!(!init.is_null(), "liblz4 rejected its own state size");
        HcState { words }
    }

    /// The block's length, or None when liblz4 reports an error.
    fn compress(&mut self, level: u8, chunk: &[u8], out: &mut [u8]) -> Option<usize> {
        let src_len = c_int::try_from(chunk.len()).ok()?;
        // SAFETY: a pure function of its argument.
        let bound = usize::try_from(unsafe { lz4_sys::LZ4_compressBound(src_len) }).ok()?;
        if bound == 0 || out.len() < bound {
            return None; // liblz4 could stop half way and leave the state dirty
        }
        let capacity = c_int::try_from(out.len()).unwrap_or(c_int::MAX);
        // SAFETY: the state was initialised by `new` and is only used by
        // this thread; `chunk` and `out` are valid for the lengths given,
        // and `out` holds a worst-case block, so liblz4 never writes past it.
        let n = unsafe {
            LZ4_compress_HC_extStateHC_fastReset(
                self.words.as_mut_ptr().cast(),
                chunk.as_ptr().cast(),
                out.as_mut_ptr().cast(),
                src_len,
                capacity,
                c_int::from(level.min(MAX_LEVEL)),
            )
        };
        usize::try_from(n).ok()
    }
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

    fn random_bytes(len: usize) -> Vec<u8> {
        crate::test_data::XorShift::new(0x9E37_79B9_7F4A_7C15).bytes(len, 24)
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
    fn a_reused_thread_state_compresses_every_chunk_as_a_fresh_one_would() {
        // The per-thread state is reset, not cleared, between chunks: its
        // tables still hold positions in earlier (freed) inputs, including
        // an incompressible one that filled the whole output.
        let texts: Vec<Vec<u8>> = (1..=6).map(|k| text(k * 11_000)).collect();
        let random = random_bytes(70_000);
        let mut first = Vec::new();
        for round in 0..3 {
            for (i, chunk) in texts.iter().enumerate() {
                assert_eq!(round_trip(DEFAULT_LEVEL, &random), None);
                let n = round_trip(DEFAULT_LEVEL, chunk).expect("text compresses");
                if round == 0 {
                    first.push(n);
                } else {
                    assert_eq!(n, first[i], "chunk {i}, round {round}");
                }
            }
        }
        // The same sizes from a thread whose state was never used.
        let fresh: Vec<usize> = std::thread::spawn(move || {
            texts
                .iter()
                .map(|t| round_trip(DEFAULT_LEVEL, t).unwrap())
                .collect()
        })
        .join()
        .unwrap();
        assert_eq!(fresh, first);
    }

    #[test]
    fn an_output_buffer_below_the_worst_case_is_refused_not_overrun() {
        let chunk = text(4096);
        let mut out = vec![0u8; 4096];
        assert_eq!(compress_into(DEFAULT_LEVEL, &chunk, &mut out), None);
        // The thread's state is still usable afterwards.
        assert!(round_trip(DEFAULT_LEVEL, &chunk).is_some());
    }

    #[test]
    fn incompressible_and_tiny_chunks_are_left_alone() {
        let random = random_bytes(65536);
        for level in [0, DEFAULT_LEVEL, MAX_LEVEL] {
            assert_eq!(round_trip(level, &random), None, "level {level}");
            assert_eq!(round_trip(level, b"a"), None, "level {level}");
            assert_eq!(round_trip(level, b""), None, "level {level}");
        }
    }
}
