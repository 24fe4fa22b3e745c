//! Residual add fused with LayerNorm.
//!
//! For each row, `t = a + r` (or `t = a`), `y = (t - mean) / sqrt(var + eps) * gamma + beta`
//! with the population variance from centred values. The statistics are computed on the
//! differences `d_j = (a_j - a_0) + (r_j - r_0)`, which are exact or nearly so even when the row
//! sits on a large offset (`3000 + 0.01 noise`): the offset never enters a rounded sum, so rows
//! whose spread is a few float32 ulps of their mean still normalise correctly.

use crate::simd::Simd;

#[inline(always)]
unsafe fn diff<S: Simd>(a: *const f32, r: *const f32, a0: S::V, r0: S::V, j: usize) -> S::V {
    // SAFETY: a and r (if non-null) are valid for LANES values at j (caller).
    unsafe {
        let d = S::sub(S::load(a.add(j)), a0);
        if r.is_null() {
            d
        } else {
            S::add(d, S::sub(S::load(r.add(j)), r0))
        }
    }
}

/// One row of length `n`.
///
/// # Safety
/// `a`, `gamma`, `beta`, `out` valid for `n` values, `r` and `sum_out` for `n` values or null;
/// `n >= 1`; S's features enabled.
#[inline(always)]
pub(crate) unsafe fn layer_norm_row<S: Simd>(
    a: *const f32,
    r: *const f32,
    n: usize,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    out: *mut f32,
    sum_out: *mut f32,
) {
    // SAFETY: every access is below n for the pointers above (caller's contract).
    unsafe {
        let l = S::LANES;
        let full = n - n % l;
        let a0s = *a;
        let r0s = if r.is_null() { 0.0 } else { *r };
        let (a0, r0) = (S::splat(a0s), S::splat(r0s));
        let scalar_d = |j: usize| -> f32 {
            let d = *a.add(j) - a0s;
            if r.is_null() {
                d
            } else {
                d + (*r.add(j) - r0s)
            }
        };
        // Pass 1: sum of differences (and the residual sum, if asked for).
        let mut acc = S::splat(0.0);
        let mut j = 0;
        while j < full {
            acc = S::add(acc, diff::<S>(a, r, a0, r0, j));
            if !sum_out.is_null() {
                let t = if r.is_null() {
                    S::load(a.add(j))
                } else {
                    S::add(S::load(a.add(j)), S::load(r.add(j)))
                };
                S::store(sum_out.add(j), t);
            }
            j += l;
        }
        let mut sum = S::reduce_sum(acc);
        for j in full..n {
            sum += scalar_d(j);
            if !sum_out.is_null() {
                *sum_out.add(j) = *a.add(j) + if r.is_null() { 0.0 } else { *r.add(j) };
            }
        }
        let mean = sum / n as f32;
        // Pass 2: variance from centred values.
        let mv = S::splat(mean);
        let mut acc = S::splat(0.0);
        let mut j = 0;
        while j < full {
            let c = S::sub(diff::<S>(a, r, a0, r0, j), mv);
            acc = S::fma(c, c, acc);
            j += l;
        }
        let mut ss = S::reduce_sum(acc);
        for j in full..n {
            let c = scalar_d(j) - mean;
            ss += c * c;
        }
        let inv = 1.0 / (ss / n as f32 + eps).sqrt();
        // Pass 3: normalise, scale, shift.
        let iv = S::splat(inv);
        let mut j = 0;
        while j < full {
            let c = S::sub(diff::<S>(a, r, a0, r0, j), mv);
            let g = S::mul(S::load(gamma.add(j)), iv);
            S::store(out.add(j), S::fma(c, g, S::load(beta.add(j))));
            j += l;
        }
        for j in full..n {
            let c = scalar_d(j) - mean;
            *out.add(j) = c * (*gamma.add(j) * inv) + *beta.add(j);
        }
    }
}
