//! Vector math, written once over [`Simd`](super::Simd) so every tier evaluates the same
//! polynomials: `exp`, `expm1`, `log1p`, `tanh`, sigmoid, the exact and tanh GELUs, and every
//! element-wise activation of Keras 3.15 ([`activate`]). Each function states its accuracy; the
//! activation table in `tests/data/activations/` (Keras' own float64 values) checks them on every
//! tier, and `Activation::error_bound` documents what the tests hold.

use super::Simd;
use crate::activation::Activation;

const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

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
        let hi_lim = S::splat(88.722_84);
        let lo_lim = S::splat(-87.33);
        let xc = S::min(S::max(x, lo_lim), hi_lim);
        let (n, p) = exp_reduced::<S>(xc);
        // 2^n = 2^(n - h) * 2^h with h = round(n / 2): both factors within the normal range.
        let h = S::round(S::mul(n, S::splat(0.5)));
        let res = S::mul(S::mul(p, S::pow2i(S::sub(n, h))), S::pow2i(h));
        let res = S::select(S::lt(x, lo_lim), S::splat(0.0), res);
        let res = S::select(S::lt(hi_lim, x), S::splat(f32::INFINITY), res);
        S::select(S::is_nan(x), x, res)
    }
}

/// The shared core of [`exp`] and [`exp_nonpositive`]: `x = n ln2 + r` (`n` rounded, `ln2` in two
/// parts) and `p ~ e^r` (degree-7 Taylor polynomial, |r| <= ln2 / 2), so `e^x = p 2^n`.
#[inline(always)]
unsafe fn exp_reduced<S: Simd>(x: S::V) -> (S::V, S::V) {
    // SAFETY: the caller runs inside S's target features (trait contract).
    unsafe {
        let n = S::round(S::mul(x, S::splat(std::f32::consts::LOG2_E)));
        let r = S::fma(n, S::splat(-LN2_HI), x);
        let r = S::fma(n, S::splat(-LN2_LO), r);
        // Estrin's scheme: three dependent levels, not Horner's seven (the GELU and the softmax
        // are bound by this chain's latency).
        let r2 = S::mul(r, r);
        let r4 = S::mul(r2, r2);
        let q0 = S::add(S::splat(1.0), r);
        let q1 = S::fma(r, S::splat(1.0 / 6.0), S::splat(0.5));
        let q2 = S::fma(r, S::splat(1.0 / 120.0), S::splat(1.0 / 24.0));
        let q3 = S::fma(r, S::splat(1.0 / 5040.0), S::splat(1.0 / 720.0));
        let s0 = S::fma(q1, r2, q0);
        let s1 = S::fma(q3, r2, q2);
        (n, S::fma(s1, r4, s0))
    }
}

/// [`exp`] for `x <= 0` or NaN (the softmax's shifted logits), bit for bit, more cheaply: there
/// `2^n` is one normal power of two (`n >= -126`), and nothing overflows. 0 below -87.33 (and for
/// `-inf`), NaN for NaN (it runs through the polynomial).
#[inline(always)]
pub(crate) unsafe fn exp_nonpositive<S: Simd>(x: S::V) -> S::V {
    // SAFETY: the caller runs inside S's target features (trait contract).
    unsafe {
        let lo_lim = S::splat(-87.33);
        let (n, p) = exp_reduced::<S>(x);
        // Below the limit (n may be far out of range there) the result is 0 anyway.
        let res = S::scale_pow2(p, S::max(n, S::splat(-126.0)));
        S::select(S::lt(x, lo_lim), S::splat(0.0), res)
    }
}

/// `e^x - 1` with full relative accuracy near 0 (about 2 ulp), for `x <= 88`; `-1` below -30
/// (where `e^x` is below half an ulp of 1), NaN for NaN. The kernels use it for `x <= 18` only.
///
/// Method: `x = n ln2 + r` as in [`exp`]; `expm1(r) = r + r^2 (1/2 + r/6 + ... + r^6/8!)`
/// (truncation below 1e-9 relative), then `2^n expm1(r) + (2^n - 1)`, where `2^n - 1` is exact.
#[inline(always)]
pub(crate) unsafe fn expm1<S: Simd>(x: S::V) -> S::V {
    // SAFETY: the caller runs inside S's target features (trait contract).
    unsafe {
        let xc = S::min(S::max(x, S::splat(-30.0)), S::splat(88.0));
        let n = S::round(S::mul(xc, S::splat(std::f32::consts::LOG2_E)));
        let r = S::fma(n, S::splat(-LN2_HI), xc);
        let r = S::fma(n, S::splat(-LN2_LO), r);
        let mut q = S::splat(1.0 / 40320.0);
        q = S::fma(q, r, S::splat(1.0 / 5040.0));
        q = S::fma(q, r, S::splat(1.0 / 720.0));
        q = S::fma(q, r, S::splat(1.0 / 120.0));
        q = S::fma(q, r, S::splat(1.0 / 24.0));
        q = S::fma(q, r, S::splat(1.0 / 6.0));
        q = S::fma(q, r, S::splat(0.5));
        let p = S::fma(q, S::mul(r, r), r);
        let s = S::pow2i(n);
        let res = S::fma(s, p, S::sub(s, S::splat(1.0)));
        S::select(S::is_nan(x), x, res)
    }
}

/// `ln(1 + t)` for `t` in `[0, 1]` (or NaN), with full relative accuracy for tiny `t`: about
/// 2 ulp.
///
/// Method: `u = 1 + t` rounded; `ln u = e ln2 + ln m` with `m = u` or `u / 2` in
/// `[1/sqrt2, sqrt2]`; `ln m = 2 atanh(s)`, `s = (m - 1) / (m + 1)`, by its odd series to `s^11`
/// (`|s| <= 0.172`, truncation below 1e-9); plus `(t - (u - 1)) / u`, the rounding error of `u`.
#[inline(always)]
pub(crate) unsafe fn log1p01<S: Simd>(t: S::V) -> S::V {
    // SAFETY: the caller runs inside S's target features (trait contract).
    unsafe {
        let one = S::splat(1.0);
        let u = S::add(one, t);
        let big = S::lt(S::splat(std::f32::consts::SQRT_2), u);
        let m = S::select(big, S::mul(u, S::splat(0.5)), u);
        let e = S::select(big, one, S::splat(0.0));
        let f = S::sub(m, one);
        let s = S::div(f, S::add(S::splat(2.0), f));
        let z = S::mul(s, s);
        let mut w = S::splat(2.0 / 11.0);
        w = S::fma(w, z, S::splat(2.0 / 9.0));
        w = S::fma(w, z, S::splat(2.0 / 7.0));
        w = S::fma(w, z, S::splat(2.0 / 5.0));
        w = S::fma(w, z, S::splat(2.0 / 3.0));
        let lnm = S::fma(S::mul(s, z), w, S::add(s, s));
        let corr = S::div(S::sub(t, S::sub(u, one)), u);
        let lo = S::fma(e, S::splat(LN2_LO), S::add(lnm, corr));
        S::fma(e, S::splat(LN2_HI), lo)
    }
}

/// The logistic sigmoid `1 / (1 + e^-x)`, as `e / (1 + e)` with `e = e^x` for negative `x`, so
/// both tails keep their relative accuracy (about 3 ulp) until `e^-|x|` underflows (`|x| > 87.3`,
/// where the result is 0 or 1).
#[inline(always)]
pub(crate) unsafe fn sigmoid<S: Simd>(x: S::V) -> S::V {
    // SAFETY: the caller runs inside S's target features (trait contract).
    unsafe {
        let e = exp::<S>(S::sub(S::splat(0.0), S::abs(x)));
        let r = S::div(S::splat(1.0), S::add(S::splat(1.0), e));
        S::select(S::lt(x, S::splat(0.0)), S::mul(e, r), r)
    }
}

/// `tanh(x) = expm1(2|x|) / (expm1(2|x|) + 2)` with the sign of `x`; about 3 ulp, relative
/// accuracy kept near 0; exactly `+-1` beyond `|x| = 9`.
#[inline(always)]
pub(crate) unsafe fn tanh<S: Simd>(x: S::V) -> S::V {
    // SAFETY: the caller runs inside S's target features (trait contract).
    unsafe {
        let a = S::min(S::abs(x), S::splat(9.0));
        let e = expm1::<S>(S::add(a, a));
        let t = S::div(e, S::add(e, S::splat(2.0)));
        let t = S::select(S::lt(x, S::splat(0.0)), S::sub(S::splat(0.0), t), t);
        S::select(S::is_nan(x), x, t)
    }
}

/// `(x - tanh x) / x^3` as a polynomial in `x^2` on `|x| <= 1.5`: a float64 least-squares fit on
/// Chebyshev nodes against a 40-digit evaluation (`x - tanh x` itself cancels there); `x^3 P(x^2)`
/// is within 2.7 ulp of `x - tanh x` in float32. (The digits are the fit's, as printed.)
#[allow(clippy::excessive_precision)]
const TANH_SHRINK: [f32; 10] = [
    0.333_333_31,
    -0.133_332_58,
    0.053_957_328,
    -0.021_805_966,
    0.008_669_876,
    -0.003_239_898_5,
    0.001_040_063_1,
    -0.000_252_769_36,
    3.932_055_2e-5,
    -2.848_346_4e-6,
];

/// `x - tanh(x)`: the polynomial below `|x| = 1.5`, the difference beyond (where it loses at most
/// one bit).
#[inline(always)]
pub(crate) unsafe fn tanh_shrink<S: Simd>(x: S::V) -> S::V {
    // SAFETY: the caller runs inside S's target features (trait contract).
    unsafe {
        let x2 = S::mul(x, x);
        let mut p = S::splat(TANH_SHRINK[9]);
        for &c in TANH_SHRINK[..9].iter().rev() {
            p = S::fma(p, x2, S::splat(c));
        }
        let small = S::mul(S::mul(x, x2), p);
        let large = S::sub(x, tanh::<S>(x));
        S::select(S::lt(S::abs(x), S::splat(1.5)), small, large)
    }
}

/// `softplus(x) = max(x, 0) + log1p(e^-|x|)`: relative accuracy in both tails.
#[inline(always)]
pub(crate) unsafe fn softplus<S: Simd>(x: S::V) -> S::V {
    // SAFETY: the caller runs inside S's target features (trait contract).
    unsafe {
        let l = log1p01::<S>(exp::<S>(S::sub(S::splat(0.0), S::abs(x))));
        // max(0, x) keeps a NaN x (the second operand wins).
        S::add(S::max(S::splat(0.0), x), l)
    }
}

/// Coefficients of `erfcx(t) * (1 + 2t)` as a polynomial in `w = (t - 2) / (t + 2)`, fitted in
/// float64 to the scaled complementary error function on `t` in `[0, 10]` (Chebyshev nodes,
/// least squares); highest degree first. Relative error of the fit below 2e-8.
const ERFCX_W: [f32; 13] = ERFCX_COEFFS;

include!("erfcx_coeffs.rs");

/// `max(0, x)`, keeping a NaN `x` (the second operand of `max` wins on NaN).
#[inline(always)]
pub(crate) unsafe fn relu<S: Simd>(x: S::V) -> S::V {
    // SAFETY: the caller runs inside S's target features (trait contract).
    unsafe { S::max(S::splat(0.0), x) }
}

/// The degree-12 polynomial with coefficients `c` (highest degree first) at `w`, by Estrin's
/// scheme: four dependent levels of multiply-adds, not Horner's twelve.
#[inline(always)]
unsafe fn estrin12<S: Simd>(w: S::V, c: &[f32; 13]) -> S::V {
    // SAFETY: the caller runs inside S's target features (trait contract).
    unsafe {
        // a_k = c[12 - k], the coefficient of w^k.
        let a = |k: usize| S::splat(c[12 - k]);
        let w2 = S::mul(w, w);
        let w4 = S::mul(w2, w2);
        let w8 = S::mul(w4, w4);
        let q = |k: usize| S::fma(w, a(k + 1), a(k));
        let r0 = S::fma(q(2), w2, q(0));
        let r1 = S::fma(q(6), w2, q(4));
        let r2 = S::fma(q(10), w2, q(8));
        let s0 = S::fma(r1, w4, r0);
        let s1 = S::fma(a(12), w4, r2);
        S::fma(s1, w8, s0)
    }
}

/// `x^2 - xx` exactly, for `xx = fl(x^2)` and `|x| <= 2^20`: one fused multiply-add where the
/// tier has it, else [`dekker_square_error`] (the same value: both are exact).
#[inline(always)]
unsafe fn square_error<S: Simd>(x: S::V, xx: S::V) -> S::V {
    // SAFETY: the caller runs inside S's target features (trait contract).
    unsafe {
        if S::FUSED {
            S::fma(x, x, S::sub(S::splat(0.0), xx))
        } else {
            dekker_square_error::<S>(x, xx)
        }
    }
}

/// `x^2 - xx` exactly by Dekker's split of `x` into halves of 12 bits (no fused operation).
#[inline(always)]
unsafe fn dekker_square_error<S: Simd>(x: S::V, xx: S::V) -> S::V {
    // SAFETY: the caller runs inside S's target features (trait contract).
    unsafe {
        let c = S::mul(x, S::splat(4097.0));
        let xh = S::sub(c, S::sub(c, x));
        let xl = S::sub(x, xh);
        S::add(
            S::add(S::sub(S::mul(xh, xh), xx), S::mul(S::add(xh, xh), xl)),
            S::mul(xl, xl),
        )
    }
}

include!("gelu_coeffs.rs");

/// The width of [`PHI_TABLE`]'s intervals (a multiple of 2^-5, so `u - i w` is exact).
const PHI_WIDTH: f32 = 7.0 / 32.0;
/// `u` is clamped here, below `31.5 w` (the table's end), where `1 - q(u)` is 1 in float32;
/// `x` below `-PHI_CLAMP` takes [`gelu_erfcx`].
const PHI_CLAMP: f32 = 6.8906;

/// Exact GELU, `x * Phi(x)` with `Phi(x) = erfc(-x / sqrt 2) / 2`, accurate in relative terms in
/// both tails (`1 + erf` would lose everything below x = -4): [`gelu_piecewise`] where the tier
/// has a 32-entry permute ([`Simd::PERMUTE32`]), else [`gelu_erfcx`]: the table within 3 ulp, the
/// formula within 7 (at x = -5.5), both inside `Activation::Gelu`'s stated 8.
#[inline(always)]
pub(crate) unsafe fn gelu_erf<S: Simd>(x: S::V) -> S::V {
    // SAFETY: the caller runs inside S's target features (trait contract).
    unsafe {
        if S::PERMUTE32 {
            gelu_piecewise::<S>(x)
        } else {
            gelu_erfcx::<S>(x)
        }
    }
}

/// Exact GELU from a table: `q(u) = P(X > u)` for `u = |x|` (X standard normal) is a polynomial
/// of degree 7 in `t = u - i w` on each of 32 intervals of width `w` centred at `i w`
/// ([`PHI_TABLE`], fitted for relative accuracy by `tools/fit_gelu_table.py`); `x q(|x|)` for
/// negative `x`, `x (1 - q(x))` otherwise. About 25 vector instructions where the exp and erfcx
/// formula takes 60. A lane below `-6.89` (where the table ends) or NaN takes
/// [`gelu_erfcx`]: each lane's result depends on that lane alone.
#[inline(always)]
pub(crate) unsafe fn gelu_piecewise<S: Simd>(x: S::V) -> S::V {
    // SAFETY: the caller runs inside S's target features (trait contract); the index lanes are
    // integers in [0, 31] (u <= PHI_CLAMP < 31.5 w, and NaN lanes are replaced below).
    unsafe {
        let u = S::min(S::abs(x), S::splat(PHI_CLAMP));
        let i = S::round(S::mul(u, S::splat(1.0 / PHI_WIDTH)));
        // Exact: u and i w are multiples of u's ulp and |t| <= w / 2.
        let t = S::sub(u, S::mul(i, S::splat(PHI_WIDTH)));
        let q = S::piecewise32(&PHI_TABLE, i, t);
        let phi = S::select(S::lt(x, S::splat(0.0)), q, S::sub(S::splat(1.0), q));
        let y = S::mul(x, phi);
        // -PHI_CLAMP <= x, false for NaN.
        let inside = S::le(S::splat(-PHI_CLAMP), x);
        if S::all(inside) {
            y
        } else {
            S::select(inside, y, gelu_erfcx::<S>(x))
        }
    }
}

/// Exact GELU by `erfc(t) = e^(-t^2) erfcx(t)`; `erfcx` comes from [`ERFCX_W`]; `e^(-t^2)` is
/// computed as `e^(-hi) (1 - lo)` with `t^2 = x^2 / 2 = hi + lo` split exactly (Dekker).
#[inline(always)]
pub(crate) unsafe fn gelu_erfcx<S: Simd>(x: S::V) -> S::V {
    // SAFETY: the caller runs inside S's target features (trait contract).
    unsafe {
        // Beyond |x| = 20, Phi is 0 or 1 to far below f32 resolution; clamping keeps infinities
        // out of the tail arithmetic (gelu(inf) = inf, gelu(-inf) = -inf * 0 = NaN as in Keras).
        let xc = S::min(S::max(x, S::splat(-20.0)), S::splat(20.0));
        let t = S::mul(S::abs(xc), S::splat(std::f32::consts::FRAC_1_SQRT_2));
        // One division for both quotients: 1 / ((t + 2)(1 + 2t)).
        let (tp2, one2t) = (
            S::add(t, S::splat(2.0)),
            S::fma(t, S::splat(2.0), S::splat(1.0)),
        );
        let inv = S::recip(S::mul(tp2, one2t));
        let w = S::mul(S::mul(S::sub(t, S::splat(2.0)), one2t), inv);
        let p = estrin12::<S>(w, &ERFCX_W);
        let erfcx = S::mul(p, S::mul(tp2, inv));
        // t^2 = x^2 / 2 = hi + lo exactly (the 1/sqrt2 rounding of t must not enter the
        // exponent): the product's exact error from a fused multiply-add, else Dekker's split
        // (the same value: both are exact).
        let xx = S::mul(xc, xc);
        let err = square_error::<S>(xc, xx);
        let hi = S::mul(xx, S::splat(0.5));
        let lo = S::mul(err, S::splat(0.5));
        // -x^2/2 <= 0: the cheaper exp, bit for bit the same there.
        let e = S::mul(
            exp_nonpositive::<S>(S::sub(S::splat(0.0), hi)),
            S::sub(S::splat(1.0), lo),
        );
        // q = erfc(t) / 2 = P(X > |x|) for a standard normal X.
        let q = S::mul(S::mul(e, erfcx), S::splat(0.5));
        let phi = S::select(S::lt(x, S::splat(0.0)), q, S::sub(S::splat(1.0), q));
        S::mul(x, phi)
    }
}

/// `x sigmoid(2u)` with `u = sqrt(2/pi) (x + 0.044715 x^3)`: identical to Keras'
/// `0.5 x (1 + tanh(u))`, with full relative accuracy in both tails.
#[inline(always)]
pub(crate) unsafe fn gelu_tanh<S: Simd>(x: S::V) -> S::V {
    // SAFETY: the caller runs inside S's target features (trait contract).
    unsafe {
        let x2 = S::mul(x, x);
        let inner = S::fma(S::mul(x2, S::splat(0.044_715)), x, x);
        let two_u = S::mul(inner, S::splat(2.0 * 0.797_884_6));
        S::mul(x, sigmoid::<S>(two_u))
    }
}

const SELU_SCALE: f32 = 1.050_701;
const SELU_ALPHA: f32 = 1.673_263_2;

/// One element-wise activation of one vector. Row-wise activations (softmax, log_softmax,
/// sparsemax) return `x` unchanged: they run as row kernels. Special values follow Keras 3.15
/// (checked against its table): NaN stays NaN except where Keras' `where` maps it to 0
/// (`hard_shrink`, `soft_shrink`); `-inf` gives NaN where Keras multiplies it by 0 (`gelu`,
/// `gelu_approximate`, `silu`, `hard_silu`, `mish`, `squareplus`).
#[inline(always)]
pub(crate) unsafe fn activate<S: Simd>(x: S::V, act: Activation) -> S::V {
    // SAFETY: the caller runs inside S's target features (trait contract).
    unsafe {
        let zero = S::splat(0.0);
        let one = S::splat(1.0);
        // clip(v, lo, hi) keeping a NaN v: the second operand of max/min wins on NaN.
        let clip = |v: S::V, lo: f32, hi: f32| S::min(S::splat(hi), S::max(S::splat(lo), v));
        match act {
            Activation::Linear
            | Activation::Softmax
            | Activation::LogSoftmax
            | Activation::Sparsemax => x,
            Activation::Relu => relu::<S>(x),
            Activation::Relu6 => clip(x, 0.0, 6.0),
            Activation::LeakyRelu => S::select(S::lt(x, zero), S::mul(x, S::splat(0.2)), x),
            Activation::Elu | Activation::Celu => S::select(S::lt(zero, x), x, expm1::<S>(x)),
            Activation::Selu => S::mul(
                S::splat(SELU_SCALE),
                S::select(
                    S::lt(zero, x),
                    x,
                    S::mul(S::splat(SELU_ALPHA), expm1::<S>(x)),
                ),
            ),
            Activation::Gelu => gelu_erf::<S>(x),
            Activation::GeluApproximate => gelu_tanh::<S>(x),
            Activation::Silu => S::mul(x, sigmoid::<S>(x)),
            Activation::Sigmoid => sigmoid::<S>(x),
            Activation::HardSigmoid => S::mul(
                clip(S::add(x, S::splat(3.0)), 0.0, 6.0),
                S::splat(1.0 / 6.0),
            ),
            Activation::HardSilu => S::mul(
                x,
                S::mul(
                    clip(S::add(x, S::splat(3.0)), 0.0, 6.0),
                    S::splat(1.0 / 6.0),
                ),
            ),
            Activation::LogSigmoid => {
                let l = log1p01::<S>(exp::<S>(S::sub(zero, S::abs(x))));
                S::sub(S::min(zero, x), l)
            }
            Activation::Softplus => softplus::<S>(x),
            Activation::Softsign => S::div(x, S::add(one, S::abs(x))),
            Activation::Mish => S::mul(x, tanh::<S>(softplus::<S>(x))),
            Activation::Tanh => tanh::<S>(x),
            Activation::TanhShrink => tanh_shrink::<S>(x),
            Activation::HardTanh => clip(x, -1.0, 1.0),
            Activation::HardShrink => S::select(S::lt(S::splat(0.5), S::abs(x)), x, zero),
            Activation::SoftShrink => S::select(
                S::lt(S::splat(0.5), x),
                S::sub(x, S::splat(0.5)),
                S::select(S::lt(x, S::splat(-0.5)), S::add(x, S::splat(0.5)), zero),
            ),
            Activation::SparsePlus => {
                let p1 = S::add(x, one);
                S::select(
                    S::le(x, S::splat(-1.0)),
                    zero,
                    S::select(S::le(one, x), x, S::mul(S::mul(p1, p1), S::splat(0.25))),
                )
            }
            Activation::SparseSigmoid => S::select(
                S::le(x, S::splat(-1.0)),
                zero,
                S::select(S::le(one, x), one, S::mul(S::add(x, one), S::splat(0.5))),
            ),
            Activation::Squareplus => {
                // (x + sqrt(x^2 + 4)) / 2, as 2 / (sqrt(x^2 + 4) - x) for negative x (no
                // cancellation); beyond |x| = 1e18 the root is |x| (x^2 would overflow).
                let a = S::abs(x);
                let h = S::select(
                    S::lt(S::splat(1e18), a),
                    a,
                    S::sqrt(S::fma(x, x, S::splat(4.0))),
                );
                let pos = S::fma(x, S::splat(0.5), S::mul(h, S::splat(0.5)));
                // 1 / (h/2 - x/2): the halves keep -x + h finite at x = -f32::MAX.
                let neg = S::div(one, S::fma(h, S::splat(0.5), S::mul(x, S::splat(-0.5))));
                let r = S::select(S::lt(x, zero), neg, pos);
                // Keras: -inf + inf = NaN.
                S::select(S::eq(x, S::splat(f32::NEG_INFINITY)), S::splat(f32::NAN), r)
            }
            Activation::Exponential => exp::<S>(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        PHI_CLAMP, PHI_TABLE, dekker_square_error, exp, exp_nonpositive, gelu_erfcx,
        gelu_piecewise, square_error,
    };
    use crate::activation::{Activation, ulp32};
    use crate::simd::{Simd, piecewise_lanes};

    /// Runs `$f::<Tier>()` on each x86 tier this CPU has (AVX2 with FMA, AVX-512), each in a
    /// shell with the tier's features.
    #[cfg(target_arch = "x86_64")]
    macro_rules! on_x86_tiers {
        ($f:ident) => {{
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2() {
                // SAFETY: features enabled on this function.
                unsafe { $f::<crate::simd::avx2::Avx2>() }
            }
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
            unsafe fn avx512() {
                // SAFETY: features enabled on this function.
                unsafe { $f::<crate::simd::avx512::Avx512>() }
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: detected just above.
                unsafe { avx2() }
            }
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512dq")
                && std::is_x86_feature_detected!("avx512vl")
            {
                // SAFETY: detected just above.
                unsafe { avx512() }
            }
        }};
    }

    /// Inputs at or below zero: a fine grid, the flush limit's neighbourhood, -0, tiny values,
    /// -inf and NaN.
    fn inputs() -> Vec<f32> {
        let mut v: Vec<f32> = (0..200_000).map(|i| -(i as f32) * 5e-4).collect();
        let lim = -87.33f32;
        let mut x = lim;
        for _ in 0..64 {
            v.push(x);
            x = f32::from_bits(x.to_bits() - 1);
        }
        let mut x = lim;
        for _ in 0..64 {
            v.push(x);
            x = f32::from_bits(x.to_bits() + 1);
        }
        v.extend([
            -0.0,
            0.0,
            -1e-30,
            -1e-45,
            -1e-7,
            f32::NEG_INFINITY,
            f32::NAN,
            -1e30,
        ]);
        v
    }

    #[inline(always)]
    unsafe fn same_as_exp<S: Simd>() {
        let mut a = [0.0f32; 16];
        let mut b = [0.0f32; 16];
        for chunk in inputs().chunks(S::LANES) {
            let n = chunk.len();
            // SAFETY: the caller enabled S's features; the buffers hold 16 >= LANES values.
            unsafe {
                let x = S::load_partial(chunk.as_ptr(), n);
                S::store(a.as_mut_ptr(), exp::<S>(x));
                S::store(b.as_mut_ptr(), exp_nonpositive::<S>(x));
            }
            for i in 0..n {
                assert!(
                    a[i].to_bits() == b[i].to_bits() || (a[i].is_nan() && b[i].is_nan()),
                    "x = {}: exp {} vs exp_nonpositive {}",
                    chunk[i],
                    a[i],
                    b[i]
                );
            }
        }
    }

    /// The fused square error (GELU's `x^2 / 2` split) equals Dekker's on `[-20, 20]` (GELU's
    /// clamp), bit for bit.
    #[inline(always)]
    unsafe fn same_square_error<S: Simd>() {
        assert!(S::FUSED);
        let xs: Vec<f32> = (0..400_001)
            .map(|i| -20.0 + i as f32 * 1e-4)
            .chain((0..10_000).map(|i| f32::from_bits(0x3f80_0000 + 977 * i)))
            .chain([0.0, -0.0, 1e-30, -1e-38, 20.0, -20.0, 19.999998])
            .collect();
        let (mut a, mut b) = ([0.0f32; 16], [0.0f32; 16]);
        for chunk in xs.chunks(S::LANES) {
            let n = chunk.len();
            // SAFETY: the caller enabled S's features; the buffers hold 16 >= LANES values.
            unsafe {
                let x = S::load_partial(chunk.as_ptr(), n);
                let xx = S::mul(x, x);
                S::store(a.as_mut_ptr(), square_error::<S>(x, xx));
                S::store(b.as_mut_ptr(), dekker_square_error::<S>(x, xx));
            }
            for i in 0..n {
                assert_eq!(a[i].to_bits(), b[i].to_bits(), "x = {}", chunk[i]);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn fused_square_error_is_dekkers_bit_for_bit() {
        on_x86_tiers!(same_square_error);
    }

    #[test]
    fn exp_nonpositive_is_exp_bit_for_bit_portable() {
        // SAFETY: the portable tier needs no CPU feature.
        unsafe { same_as_exp::<crate::simd::portable::Portable>() }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp_nonpositive_is_exp_bit_for_bit_x86() {
        on_x86_tiers!(same_as_exp);
    }

    /// GELU's inputs: a grid over the table (and past it on both sides), the clamp's and every
    /// interval boundary's neighbourhood, huge values and the specials.
    fn gelu_inputs(step: f32) -> Vec<f32> {
        let mut v: Vec<f32> = (0..)
            .map(|i| -8.0 + i as f32 * step)
            .take_while(|&x| x <= 9.0)
            .collect();
        for b in (0..33)
            .map(|i| (i as f32 + 0.5) * super::PHI_WIDTH)
            .chain([PHI_CLAMP])
        {
            for x in [b, -b] {
                v.extend((0..9u32).map(|d| f32::from_bits(x.to_bits() + d - 4)));
            }
        }
        v.extend([
            0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 3e38, -3e38, 20.0, -20.0,
        ]);
        v.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
        v
    }

    /// The table's GELU against the float64 definition: within 3 ulp (the fit's 2.97) where
    /// the table applies, lane for lane the erfcx formula's value below it and for NaN, and
    /// Keras' specials (`gelu(inf) = inf`, `gelu(-inf) = NaN`).
    #[inline(always)]
    unsafe fn piecewise_gelu_is_accurate<S: Simd>(step: f32) {
        let xs = gelu_inputs(step);
        let (mut y, mut z) = ([0.0f32; 16], [0.0f32; 16]);
        for chunk in xs.chunks(S::LANES) {
            let n = chunk.len();
            // SAFETY: the caller enabled S's features; the buffers hold 16 >= LANES values.
            unsafe {
                let x = S::load_partial(chunk.as_ptr(), n);
                S::store(y.as_mut_ptr(), gelu_piecewise::<S>(x));
                S::store(z.as_mut_ptr(), gelu_erfcx::<S>(x));
            }
            for i in 0..n {
                let x = chunk[i];
                if x.is_nan() || x < -PHI_CLAMP {
                    assert!(
                        y[i].to_bits() == z[i].to_bits() || (y[i].is_nan() && z[i].is_nan()),
                        "x = {x}: {} vs erfcx's {}",
                        y[i],
                        z[i]
                    );
                    continue;
                }
                let t = Activation::Gelu.eval_f64(x as f64);
                if x == f32::INFINITY {
                    assert_eq!(y[i], f32::INFINITY);
                    continue;
                }
                let e = (y[i] as f64 - t).abs() / ulp32(t);
                assert!(e <= 3.0, "x = {x}: gelu {} vs {t} ({e:.2} ulp)", y[i]);
            }
        }
    }

    #[test]
    fn piecewise_gelu_is_accurate_portable() {
        // The lane-by-lane table (the default of `piecewise32`), which Miri also runs.
        let step = if cfg!(miri) { 0.37 } else { 1e-4 };
        // SAFETY: the portable tier needs no CPU feature.
        unsafe { piecewise_gelu_is_accurate::<crate::simd::portable::Portable>(step) }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn piecewise_gelu_is_accurate_x86() {
        #[inline(always)]
        unsafe fn fine<S: Simd>() {
            // SAFETY: the caller enabled S's features.
            unsafe { piecewise_gelu_is_accurate::<S>(1e-4) }
        }
        on_x86_tiers!(fine);
    }

    /// A tier's `piecewise32` is the lane-by-lane default bit for bit, on every entry of the
    /// table and offsets across its interval.
    #[inline(always)]
    unsafe fn same_piecewise<S: Simd>() {
        if !S::PERMUTE32 {
            return;
        }
        let (mut a, mut b) = ([0.0f32; 16], [0.0f32; 16]);
        for k in 0..32 {
            for j in 0..64 {
                let t0 = -0.11 + j as f32 * 3.4e-3;
                let ts: Vec<f32> = (0..16).map(|l| t0 + l as f32 * 1e-5).collect();
                let is: Vec<f32> = (0..16).map(|l| ((k + l * 5) % 32) as f32).collect();
                // SAFETY: the caller enabled S's features; the buffers hold 16 >= LANES values.
                unsafe {
                    let (i, t) = (S::load(is.as_ptr()), S::load(ts.as_ptr()));
                    S::store(a.as_mut_ptr(), S::piecewise32(&PHI_TABLE, i, t));
                    S::store(b.as_mut_ptr(), piecewise_lanes::<S, 8>(&PHI_TABLE, i, t));
                }
                for l in 0..S::LANES {
                    assert_eq!(
                        a[l].to_bits(),
                        b[l].to_bits(),
                        "entry {}, t {}",
                        is[l],
                        ts[l]
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn piecewise32_is_the_default_bit_for_bit() {
        on_x86_tiers!(same_piecewise);
    }
}
