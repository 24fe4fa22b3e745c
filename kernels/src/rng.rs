//! Counter-based random numbers: the same value for the same (seed, stream, index) on any thread.
//!
//! Dropout and weight initialisation draw from [`uniform`], a SplitMix64-style hash of the
//! counter, so results do not depend on how work is split between threads.

/// A 64-bit mix of (seed, stream, index) (SplitMix64 finaliser applied twice).
#[inline]
pub fn hash64(seed: u64, stream: u64, index: u64) -> u64 {
    let mut z = seed
        .wrapping_add(stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
        .wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    for _ in 0..2 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    }
    z
}

/// A uniform draw in `[0, 1)` with 53 random bits.
///
/// ```
/// let u = transformer_encoder_kernels::rng::uniform(7, 0, 42);
/// assert!((0.0..1.0).contains(&u));
/// assert_eq!(u, transformer_encoder_kernels::rng::uniform(7, 0, 42));
/// ```
#[inline]
pub fn uniform(seed: u64, stream: u64, index: u64) -> f64 {
    (hash64(seed, stream, index) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Inverted dropout's decision for one element: `true` keeps it (then scaled by `1/(1-rate)`).
#[inline]
pub fn dropout_keep(seed: u64, site: u64, index: u64, rate: f32) -> bool {
    uniform(seed, 0x0D20_0000 + site, index) >= rate as f64
}

/// A standard normal draw (Box-Muller over two counter draws).
pub fn normal(seed: u64, stream: u64, index: u64) -> f64 {
    let u1 = uniform(seed, stream, 2 * index);
    let u2 = uniform(seed, stream, 2 * index + 1);
    let r = (-2.0 * (1.0 - u1).ln()).sqrt();
    r * (2.0 * std::f64::consts::PI * u2).cos()
}
