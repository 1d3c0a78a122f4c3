//! Deterministic test data for unit tests: one xorshift64 generator
//! (Marsaglia 2003, shifts 13/7/17) instead of a copy per test module.
//! Not random enough for anything but tests.

/// An xorshift64 stream; `seed` must not be 0.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// `len` bytes, each the low byte of the next value shifted right by
    /// `shift` bits.
    pub fn bytes(&mut self, len: usize, shift: u32) -> Vec<u8> {
        (0..len).map(|_| (self.next_u64() >> shift) as u8).collect()
    }
}
