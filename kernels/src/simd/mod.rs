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
    /// `a < b` (false when either is NaN).
    unsafe fn lt(a: Self::V, b: Self::V) -> Self::M;
    /// `a != a`.
    unsafe fn is_nan(a: Self::V) -> Self::M;
    /// `m ? a : b` lane-wise.
    unsafe fn select(m: Self::M, a: Self::V, b: Self::V) -> Self::V;
    /// Sum of the lanes (a fixed order per tier).
    unsafe fn reduce_sum(a: Self::V) -> f32;
    /// Maximum of the lanes.
    unsafe fn reduce_max(a: Self::V) -> f32;
    /// `|a|`.
    unsafe fn abs(a: Self::V) -> Self::V;
}

/// `e^x`, flushing results below the smallest normal float to zero (so no subnormal ever enters
/// a later product), `+inf` above 88.72, NaN for NaN. Relative error about 2 ulp.
///
/// Method: `x = n ln2 + r` with `|r| <= ln2/2` (Cody-Waite split of ln2), `e^r` by its degree-7
/// Taylor polynomial (truncation error below 6e-9), scaled by `2^n` in two steps so that
/// `n = 128` does not overflow the exponent field.
#[inline(always)]
pub(crate) unsafe fn exp<S: Simd>(x: S::V) -> S::V {
    // SAFETY: the caller runs inside S's target features (trait contract).
    unsafe {
        const LN2_HI: f32 = 0.693_145_75;
        const LN2_LO: f32 = 1.428_606_8e-6;
        let hi_lim = S::splat(88.722_84);
        let lo_lim = S::splat(-87.33);
        let xc = S::min(S::max(x, lo_lim), hi_lim);
        let n = S::round(S::mul(xc, S::splat(std::f32::consts::LOG2_E)));
        let r = S::fma(n, S::splat(-LN2_HI), xc);
        let r = S::fma(n, S::splat(-LN2_LO), r);
        let mut p = S::splat(1.0 / 5040.0);
        p = S::fma(p, r, S::splat(1.0 / 720.0));
        p = S::fma(p, r, S::splat(1.0 / 120.0));
        p = S::fma(p, r, S::splat(1.0 / 24.0));
        p = S::fma(p, r, S::splat(1.0 / 6.0));
        p = S::fma(p, r, S::splat(0.5));
        p = S::fma(p, r, S::splat(1.0));
        p = S::fma(p, r, S::splat(1.0));
        // 2^n = 2^(n - h) * 2^h with h = round(n / 2): both factors within the normal range.
        let h = S::round(S::mul(n, S::splat(0.5)));
        let res = S::mul(S::mul(p, S::pow2i(S::sub(n, h))), S::pow2i(h));
        let res = S::select(S::lt(x, lo_lim), S::splat(0.0), res);
        let res = S::select(S::lt(hi_lim, x), S::splat(f32::INFINITY), res);
        S::select(S::is_nan(x), x, res)
    }
}

/// `x / (1 + e^-x)` (silu) and friends: `x * sigmoid(k x)` computed as `x / (1 + e^(-k x))`.
#[inline(always)]
pub(crate) unsafe fn x_sigmoid<S: Simd>(x: S::V, kx: S::V) -> S::V {
    // SAFETY: the caller runs inside S's target features (trait contract).
    unsafe {
        let e = exp::<S>(S::sub(S::splat(0.0), kx));
        S::div(x, S::add(S::splat(1.0), e))
    }
}

/// Tanh GELU, `0.5 x (1 + tanh(u))` with `u = sqrt(2/pi) (x + 0.044715 x^3)`, computed as the
/// identical `x / (1 + e^(-2u))`, which keeps full relative accuracy in both tails.
#[inline(always)]
pub(crate) unsafe fn gelu_tanh<S: Simd>(x: S::V) -> S::V {
    // SAFETY: the caller runs inside S's target features (trait contract).
    unsafe {
        let x2 = S::mul(x, x);
        let inner = S::fma(S::mul(x2, S::splat(0.044_715)), x, x);
        let two_u = S::mul(inner, S::splat(2.0 * 0.797_884_6));
        x_sigmoid::<S>(x, two_u)
    }
}

/// Coefficients of `erfcx(t) * (1 + 2t)` as a polynomial in `w = (t - 2) / (t + 2)`, fitted in
/// float64 to the scaled complementary error function on `t` in `[0, 10]` (Chebyshev nodes,
/// least squares); highest degree first. Relative error of the fit below 2e-8.
const ERFCX_W: [f32; 13] = ERFCX_COEFFS;

include!("erfcx_coeffs.rs");

/// Exact GELU, `x * Phi(x)` with `Phi(x) = erfc(-x / sqrt 2) / 2`, accurate in relative terms in
/// both tails (`1 + erf` would lose everything below x = -4).
///
/// `erfc(t) = e^(-t^2) erfcx(t)`; `erfcx` comes from [`ERFCX_W`]; `e^(-t^2)` is computed as
/// `e^(-hi) (1 - lo)` with `t^2 = x^2 / 2 = hi + lo` split exactly (Dekker).
#[inline(always)]
pub(crate) unsafe fn gelu_erf<S: Simd>(x: S::V) -> S::V {
    // SAFETY: the caller runs inside S's target features (trait contract).
    unsafe {
        // Beyond |x| = 20, Phi is 0 or 1 to far below f32 resolution; clamping keeps infinities
        // out of the tail arithmetic (gelu(inf) = inf, gelu(-inf) = -inf * 0 = NaN as in Keras).
        let xc = S::min(S::max(x, S::splat(-20.0)), S::splat(20.0));
        let t = S::mul(S::abs(xc), S::splat(std::f32::consts::FRAC_1_SQRT_2));
        let w = S::div(S::sub(t, S::splat(2.0)), S::add(t, S::splat(2.0)));
        let mut p = S::splat(ERFCX_W[0]);
        for &c in &ERFCX_W[1..] {
            p = S::fma(p, w, S::splat(c));
        }
        let erfcx = S::div(p, S::fma(t, S::splat(2.0), S::splat(1.0)));
        // t^2 = x^2 / 2 = hi + lo exactly (the 1/sqrt2 rounding of t must not enter the
        // exponent): Dekker's split, exact with or without a fused multiply-add.
        let xx = S::mul(xc, xc);
        let c = S::mul(xc, S::splat(4097.0));
        let xh = S::sub(c, S::sub(c, xc));
        let xl = S::sub(xc, xh);
        let err = S::add(
            S::add(S::sub(S::mul(xh, xh), xx), S::mul(S::add(xh, xh), xl)),
            S::mul(xl, xl),
        );
        let hi = S::mul(xx, S::splat(0.5));
        let lo = S::mul(err, S::splat(0.5));
        let e = S::mul(
            exp::<S>(S::sub(S::splat(0.0), hi)),
            S::sub(S::splat(1.0), lo),
        );
        // q = erfc(t) / 2 = P(X > |x|) for a standard normal X.
        let q = S::mul(S::mul(e, erfcx), S::splat(0.5));
        let phi = S::select(S::lt(x, S::splat(0.0)), q, S::sub(S::splat(1.0), q));
        S::mul(x, phi)
    }
}
