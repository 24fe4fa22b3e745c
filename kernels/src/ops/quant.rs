//! Keras' per-token int8 quantization of one row (Keras 3.15 `abs_max_quantize` over the
//! product's input axes), written once over [`Simd`]:
//!
//! `s = 127 / (max |x| + 1e-7)` in float32, `q = clip(round_half_even(x * s), -127, 127)`.
//!
//! The row is stored as bytes (`q + 128` for the VNNI tiers, `q` otherwise), padded with the
//! byte of `q = 0` to the panel's group size, and the row's `1 / s` is returned for the product's
//! epilogue. A row holding NaN or an infinity has no meaningful scale: its `1 / s` is NaN (so its
//! outputs are NaN) and its bytes are those of 0.

use crate::simd::Simd;

/// Quantize `n` floats at `x` into `kp >= n` bytes at `q`; returns `s` (NaN for a row with a
/// non-finite value).
///
/// # Safety
/// `x` valid for `n` values, `q` for `kp` bytes; S's features enabled.
#[inline(always)]
pub(crate) unsafe fn quantize_row<S: Simd>(
    x: *const f32,
    n: usize,
    q: *mut u8,
    kp: usize,
    offset: bool,
) -> f32 {
    let l = S::LANES;
    let zero_byte = if offset { 128u8 } else { 0 };
    // SAFETY: every access is below n (floats) or kp (bytes), as the contract requires.
    unsafe {
        let mut amax = S::splat(0.0);
        let mut poison = S::splat(0.0);
        let mut j = 0;
        while j < n {
            let k = (n - j).min(l);
            let v = if k == l {
                S::load(x.add(j))
            } else {
                S::load_partial(x.add(j), k)
            };
            amax = S::max(amax, S::abs(v));
            // x - x is NaN exactly for NaN and the infinities.
            poison = S::add(poison, S::sub(v, v));
            j += k;
        }
        let amax = S::reduce_max(amax);
        let finite = S::reduce_sum(poison) == 0.0 && amax.is_finite();
        if !finite {
            std::ptr::write_bytes(q, zero_byte, kp);
            return f32::NAN;
        }
        let s = 127.0f32 / (amax + 1e-7f32);
        let sv = S::splat(s);
        let (lo, hi) = (S::splat(-127.0), S::splat(127.0));
        let off = S::splat(if offset { 128.0 } else { 0.0 });
        let mut j = 0;
        while j < n {
            let k = (n - j).min(l);
            let v = if k == l {
                S::load(x.add(j))
            } else {
                S::load_partial(x.add(j), k)
            };
            let r = S::min(S::max(S::round(S::mul(v, sv)), lo), hi);
            S::store_u8(q.add(j), S::add(r, off), k);
            j += k;
        }
        if kp > n {
            std::ptr::write_bytes(q.add(n), zero_byte, kp - n);
        }
        s
    }
}
