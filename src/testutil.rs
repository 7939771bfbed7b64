//! Helpers shared by the crate's unit tests.

use crate::tensor::Real;

/// `n` values uniform in (−1, 1) from an xorshift generator seeded by `seed`: fresh, non-zero
/// test inputs that are the same on every run.
pub(crate) fn rand_vec<T: Real>(n: usize, seed: u64) -> Vec<T> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            T::from_f64(((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0)
        })
        .collect()
}
