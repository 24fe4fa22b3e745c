//! A narrow SIMD vocabulary, implemented once per instruction-set tier.
//!
//! Every kernel body in `ops/` is written once over [`Simd`] and instantiated by a thin
//! `#[target_feature]` shell per tier (`arch.rs`). The vector math (exp, the exact-GELU tail,
//! sigmoid) is written here once, in terms of the primitives, so every tier computes the same
//! polynomial.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
pub(crate) mod portable;

/// The primitives the kernels need.
///
/// # Safety
///
/// Implementors use vendor intrinsics. Every method may only be called from code compiled with
/// the implementor's target features (a `#[target_feature]` shell of that tier), on a CPU that
/// has them. Pointer arguments must be valid for the number of lanes read or written (`LANES`,
/// or `n` for the partial forms). Methods are `#[inline(always)]` so they compile inside the
/// shell with its features.
pub(crate) unsafe trait Simd: Copy + 'static {
    /// A vector of `LANES` f32.
    type V: Copy;
    /// A lane mask.
    type M: Copy;
    /// Lanes per vector.
    const LANES: usize;
    /// Whether [`Simd::fma`] rounds once (a fused multiply-add), so `fma(a, b, -fl(a b))` is the
    /// exact error of the product.
    const FUSED: bool = false;
    /// Whether [`Simd::piecewise32`] looks its coefficients up in a few instructions (a
    /// 32-entry permute): where it does, the exact GELU evaluates a table of polynomials
    /// rather than its exp and erfcx formula.
    const PERMUTE32: bool = false;

    /// `sum_k c[k][i] t^k` lane by lane, by Horner's rule in fused multiply-adds (rounding
    /// once each, on every tier), for lanes of `i` holding integers in `[0, 32)`. By default
    /// one lane at a time (a reference: the tiers that use it have a permute).
    #[inline(always)]
    unsafe fn piecewise32<const C: usize>(c: &[[f32; 32]; C], i: Self::V, t: Self::V) -> Self::V {
        // SAFETY: the caller runs inside the tier's features (trait contract).
        unsafe { piecewise_lanes::<Self, C>(c, i, t) }
    }

    /// All lanes `x`.
    unsafe fn splat(x: f32) -> Self::V;
    /// Load `LANES` values (unaligned).
    unsafe fn load(p: *const f32) -> Self::V;
    /// Store `LANES` values (unaligned).
    unsafe fn store(p: *mut f32, v: Self::V);
    /// Load `n < LANES` values, the other lanes zero; never touches memory past `p + n`.
    unsafe fn load_partial(p: *const f32, n: usize) -> Self::V;
    /// Store the first `n < LANES` lanes; never touches memory past `p + n`.
    unsafe fn store_partial(p: *mut f32, n: usize, v: Self::V);
    /// `a + b`.
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// `a - b`.
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    /// `a * b`.
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// `a / b`.
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c` (fused where the tier has FMA).
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Lane-wise maximum; `b` when either operand is NaN (the x86 rule, kept on every tier).
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise minimum (either operand when one is NaN).
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    /// Round to the nearest integer (ties to even).
    unsafe fn round(a: Self::V) -> Self::V;
    /// `2^n` for lanes holding integers in `[-126, 127]`.
    unsafe fn pow2i(n: Self::V) -> Self::V;
    /// `p * 2^n`, rounded once, for lanes of `n` holding integers in `[-126, 127]` (NaN in
    /// `p` stays NaN). By default `p * pow2i(n)`; one `vscalefps` on AVX-512 (the same value:
    /// both round the exact product once).
    #[inline(always)]
    unsafe fn scale_pow2(p: Self::V, n: Self::V) -> Self::V {
        // SAFETY: the caller runs inside the tier's features (trait contract).
        unsafe { Self::mul(p, Self::pow2i(n)) }
    }
    /// `a < b` (false when either is NaN).
    unsafe fn lt(a: Self::V, b: Self::V) -> Self::M;
    /// `a != a`.
    unsafe fn is_nan(a: Self::V) -> Self::M;
    /// Whether every lane of `m` is set.
    unsafe fn all(m: Self::M) -> bool;
    /// `m ? a : b` lane-wise.
    unsafe fn select(m: Self::M, a: Self::V, b: Self::V) -> Self::V;
    /// `1 / a` within an ulp for finite, nonzero `a` whose reciprocal is a normal number (the
    /// division by default; a reciprocal estimate refined by a Newton step where that is much
    /// cheaper than the divider, which may give NaN for 0 or an infinity: callers keep `a` in
    /// range).
    #[inline(always)]
    unsafe fn recip(a: Self::V) -> Self::V {
        // SAFETY: the caller runs inside the tier's features (trait contract).
        unsafe { Self::div(Self::splat(1.0), a) }
    }
    /// Lanes `0..n` set, the others clear (`n <= LANES`).
    unsafe fn first(n: usize) -> Self::M;
    /// A hint to bring the cache line holding `p` into L1 (none on tiers without one). Any
    /// address may be given: nothing is read.
    #[inline(always)]
    unsafe fn prefetch(_p: *const f32) {}
    /// A hint to bring the cache line holding `p` into L2 (none on tiers without one). Nothing
    /// is read: `p` need not be valid (callers still form it in bounds, as `add` requires).
    #[inline(always)]
    unsafe fn prefetch_l2(_p: *const u8) {}
    /// A hint to bring the cache line holding `p` into L1 for writing (none on tiers without
    /// one). Any address may be given: nothing is read or written.
    #[inline(always)]
    unsafe fn prefetch_write(_p: *const u8) {}
    /// Sum of the lanes (a fixed order per tier).
    unsafe fn reduce_sum(a: Self::V) -> f32;
    /// Maximum of the lanes.
    unsafe fn reduce_max(a: Self::V) -> f32;
    /// `|a|`.
    unsafe fn abs(a: Self::V) -> Self::V;
    /// Correctly rounded square root.
    unsafe fn sqrt(a: Self::V) -> Self::V;
    /// `a <= b` (false when either is NaN).
    unsafe fn le(a: Self::V, b: Self::V) -> Self::M;
    /// `a == b` (false when either is NaN).
    unsafe fn eq(a: Self::V, b: Self::V) -> Self::M;
    /// Load `n <= LANES` int32 values (the other lanes 0) converted to float.
    unsafe fn load_i32_f32(p: *const i32, n: usize) -> Self::V;
    /// Store the low byte of the first `n <= LANES` lanes, each holding an integer value in
    /// `[-128, 255]` (converted with rounding to nearest), as `n` bytes at `p`; never touches
    /// memory past `p + n`.
    unsafe fn store_u8(p: *mut u8, v: Self::V, n: usize);
    /// Store the first `n <= LANES` lanes as bfloat16 ([`bf16_bits`]: round to nearest even,
    /// NaN kept NaN) at `p`; never touches memory past `p + n`.
    unsafe fn store_bf16(p: *mut u16, v: Self::V, n: usize);
    /// Each lane rounded to bfloat16 ([`bf16_bits`]), kept as the float32 of the same value.
    unsafe fn round_bf16(v: Self::V) -> Self::V;
}

/// [`Simd::piecewise32`] one lane at a time (its default, and what a tier's own must equal bit
/// for bit).
///
/// # Safety
/// S's features enabled.
#[inline(always)]
pub(crate) unsafe fn piecewise_lanes<S: Simd, const C: usize>(
    c: &[[f32; 32]; C],
    i: S::V,
    t: S::V,
) -> S::V {
    const { assert!(C >= 1) };
    let (mut iv, mut tv, mut out) = ([0.0f32; 16], [0.0f32; 16], [0.0f32; 16]);
    // SAFETY: LANES <= 16 values are stored to and loaded from the arrays; features by the
    // caller.
    unsafe {
        S::store(iv.as_mut_ptr(), i);
        S::store(tv.as_mut_ptr(), t);
        for lane in 0..S::LANES {
            let (k, t) = ((iv[lane] as usize).min(31), tv[lane]);
            out[lane] = c[..C - 1]
                .iter()
                .rev()
                .fold(c[C - 1][k], |p, row| p.mul_add(t, row[k]));
        }
        S::load(out.as_ptr())
    }
}

/// The bfloat16 nearest to `x` (ties to even; a NaN stays a quiet NaN of the same sign, the
/// infinities stay infinite, and a value past the largest bfloat16 rounds to infinity): the top
/// 16 bits of `x + 0x7fff + (bit 16 of x)`, which every tier computes the same way.
///
/// ```text
/// 1.0 + 2^-8 (a tie) -> 1.0;  1.0 + 3 * 2^-8 (a tie) -> 1.0 + 2^-6 (even)
/// ```
#[inline(always)]
pub(crate) fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

pub(crate) mod bf16;
pub(crate) mod dot;
pub(crate) mod math;
