//! Activations over memory: element-wise ones over a slice or a tile of rows (the product
//! epilogue), and the row-wise ones (`softmax`, `log_softmax`, `sparsemax`) as row kernels.
//!
//! Row kernels work in place and allocate nothing:
//! * softmax: `e^(x - max) / sum`; a row holding `+inf` or NaN gives NaN (as Keras does);
//! * log_softmax: `x - max - ln(sum e^(x - max))`;
//! * sparsemax (Martins & Astudillo 2016): `max(x - tau, 0)` where `tau` solves
//!   `sum max(x - tau, 0) = 1`, found by Michelot's iteration: start from every finite entry,
//!   `tau = (sum of the support - 1) / |support|`, drop the entries not above `tau`, repeat until
//!   the support stops shrinking (at most `n` passes, a few in practice). This is the definition;
//!   Keras 3.15's JAX sparsemax differs (see the README). A row holding NaN or `+inf`, or no finite
//!   entry, gives NaN.

use crate::activation::Activation;
use crate::simd::Simd;
use crate::simd::math::activate;

/// Expands `$each!($v => expression in $v)` once per arm of a `match` on `$act`: the common
/// activations of a feed-forward block (the exact and tanh GELUs, ReLU) get a loop of their own,
/// so the match runs once per call rather than once per vector (measured on Zen 3, the exact
/// GELU over 128 x 3,072 values: the per-vector jump table and a chain that could not overlap
/// the next vector's had it at ~55 cycles a vector); the others go through [`activate`].
macro_rules! per_activation {
    ($S:ty, $act:expr, $each:ident) => {
        match $act {
            Activation::Gelu => $each!(v => crate::simd::math::gelu_erf::<$S>(v)),
            Activation::GeluApproximate => $each!(v => crate::simd::math::gelu_tanh::<$S>(v)),
            Activation::Relu => $each!(v => crate::simd::math::relu::<$S>(v)),
            act => $each!(v => activate::<$S>(v, act)),
        }
    };
}

/// Apply an element-wise activation to `len` values at `x` in place.
///
/// # Safety
/// `x` valid for `len` values; S's features enabled.
#[inline(always)]
pub(crate) unsafe fn apply_slice<S: Simd>(x: *mut f32, len: usize, act: Activation) {
    let l = S::LANES;
    macro_rules! each {
        ($v:ident => $f:expr) => {{
            let mut j = 0;
            while j + l <= len {
                let $v = S::load(x.add(j));
                S::store(x.add(j), $f);
                j += l;
            }
            if j < len {
                let $v = S::load_partial(x.add(j), len - j);
                S::store_partial(x.add(j), len - j, $f);
            }
        }};
    }
    // SAFETY: j + LANES <= len for full vectors, the tail is a partial access.
    unsafe { per_activation!(S, act, each) }
}

/// `c[i, 0..cols] = act(c[i, ..]) + residual[i, ..]` for `rows` rows (element-wise `act`;
/// `residual` may be null).
///
/// # Safety
/// `c` valid for `rows` rows of `cols` at stride `ldc`; `residual` likewise at stride `ldr`, or
/// null; S's features enabled.
#[inline(always)]
pub(crate) unsafe fn apply_tile<S: Simd>(
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    act: Activation,
    residual: *const f32,
    ldr: usize,
) {
    let l = S::LANES;
    macro_rules! each {
        ($v:ident => $f:expr) => {
            for i in 0..rows {
                let cp = c.add(i * ldc);
                let rp = if residual.is_null() {
                    residual
                } else {
                    residual.add(i * ldr)
                };
                let mut j = 0;
                while j < cols {
                    let n = (cols - j).min(l);
                    let $v = if n == l {
                        S::load(cp.add(j))
                    } else {
                        S::load_partial(cp.add(j), n)
                    };
                    let mut y = $f;
                    if !rp.is_null() {
                        let r = if n == l {
                            S::load(rp.add(j))
                        } else {
                            S::load_partial(rp.add(j), n)
                        };
                        y = S::add(y, r);
                    }
                    if n == l {
                        S::store(cp.add(j), y);
                    } else {
                        S::store_partial(cp.add(j), n, y);
                    }
                    j += n;
                }
            }
        };
    }
    // SAFETY: every access is within row i's `cols` values (full vectors, then a partial tail).
    unsafe { per_activation!(S, act, each) }
}

/// A pass over one row: `f(vector, lanes)` for each full vector and the tail (tail lanes past
/// `n` are loaded as `fill`).
#[inline(always)]
unsafe fn for_each<S: Simd>(x: *const f32, n: usize, fill: f32, mut f: impl FnMut(S::V)) {
    let l = S::LANES;
    let mut j = 0;
    // SAFETY: full vectors below n, then a partial load (the caller's x is valid for n).
    unsafe {
        while j + l <= n {
            f(S::load(x.add(j)));
            j += l;
        }
        if j < n {
            let v = S::load_partial(x.add(j), n - j);
            // Lanes past the tail: `fill` (load_partial zeroes them).
            let lane = lanes_below::<S>(n - j);
            f(S::select(lane, v, S::splat(fill)));
        }
    }
}

/// A mask of the first `k < LANES` lanes.
#[inline(always)]
unsafe fn lanes_below<S: Simd>(k: usize) -> S::M {
    let mut idx = [0.0f32; 16];
    for (i, v) in idx.iter_mut().enumerate() {
        *v = i as f32;
    }
    // SAFETY: idx holds 16 >= LANES values.
    unsafe { S::lt(S::load(idx.as_ptr()), S::splat(k as f32)) }
}

/// Transform one row in place: `x[j] = g(x[j])` vector by vector.
#[inline(always)]
unsafe fn map<S: Simd>(x: *mut f32, n: usize, g: impl Fn(S::V) -> S::V) {
    let l = S::LANES;
    let mut j = 0;
    // SAFETY: as in `for_each`.
    unsafe {
        while j + l <= n {
            S::store(x.add(j), g(S::load(x.add(j))));
            j += l;
        }
        if j < n {
            let v = S::load_partial(x.add(j), n - j);
            S::store_partial(x.add(j), n - j, g(v));
        }
    }
}

#[inline(always)]
unsafe fn row_max<S: Simd>(x: *const f32, n: usize) -> f32 {
    // SAFETY: forwarded (x valid for n).
    unsafe {
        let mut m = S::splat(f32::NEG_INFINITY);
        for_each::<S>(x, n, f32::NEG_INFINITY, |v| m = S::max(m, v));
        S::reduce_max(m)
    }
}

/// Is any entry NaN or `+inf`? (A sum of `x - x` is NaN exactly then, or for `-inf`; the max
/// tells the two apart.)
#[inline(always)]
unsafe fn poisoned<S: Simd>(x: *const f32, n: usize) -> bool {
    // SAFETY: forwarded (x valid for n).
    unsafe {
        let mut nan = S::splat(0.0);
        let mut pinf = S::splat(0.0);
        for_each::<S>(x, n, 0.0, |v| {
            nan = S::add(nan, S::select(S::is_nan(v), S::splat(1.0), S::splat(0.0)));
            pinf = S::add(
                pinf,
                S::select(
                    S::eq(v, S::splat(f32::INFINITY)),
                    S::splat(1.0),
                    S::splat(0.0),
                ),
            );
        });
        S::reduce_sum(nan) + S::reduce_sum(pinf) > 0.0
    }
}

/// One row of a row-wise activation in place, then `+ residual` (null: none).
///
/// # Safety
/// `x` valid for `n >= 1` values, `residual` for `n` values or null; S's features enabled.
#[inline(always)]
pub(crate) unsafe fn row<S: Simd>(x: *mut f32, n: usize, act: Activation, residual: *const f32) {
    // SAFETY: every pass reads and writes the row's n values only.
    unsafe {
        match act {
            Activation::Softmax | Activation::LogSoftmax => {
                let m = row_max::<S>(x, n);
                let mv = S::splat(m);
                let mut acc = S::splat(0.0);
                for_each::<S>(x, n, f32::NEG_INFINITY, |v| {
                    acc = S::add(acc, crate::simd::math::exp::<S>(S::sub(v, mv)));
                });
                let sum = S::reduce_sum(acc);
                if act == Activation::Softmax {
                    let inv = S::splat(1.0 / sum);
                    map::<S>(x, n, |v| {
                        S::mul(crate::simd::math::exp::<S>(S::sub(v, mv)), inv)
                    });
                } else {
                    // x - max - ln(sum): (x - max) first keeps the largest logits exact.
                    let ls = S::splat(sum.ln());
                    map::<S>(x, n, |v| S::sub(S::sub(v, mv), ls));
                }
            }
            Activation::Sparsemax => sparsemax::<S>(x, n),
            _ => map::<S>(x, n, |v| activate::<S>(v, act)),
        }
        if !residual.is_null() {
            let mut j = 0;
            let l = S::LANES;
            while j < n {
                let k = (n - j).min(l);
                if k == l {
                    S::store(
                        x.add(j),
                        S::add(S::load(x.add(j)), S::load(residual.add(j))),
                    );
                } else {
                    let v = S::add(
                        S::load_partial(x.add(j), k),
                        S::load_partial(residual.add(j), k),
                    );
                    S::store_partial(x.add(j), k, v);
                }
                j += k;
            }
        }
    }
}

/// Sparsemax of one row in place (see the module docs).
#[inline(always)]
unsafe fn sparsemax<S: Simd>(x: *mut f32, n: usize) {
    // SAFETY: every pass reads and writes the row's n values only.
    unsafe {
        if poisoned::<S>(x, n) {
            map::<S>(x, n, |_| S::splat(f32::NAN));
            return;
        }
        // Support: entries above tau (initially every finite entry: tau = -inf).
        let support = |tau: f32| -> (f32, f32) {
            let t = S::splat(tau);
            let (mut s, mut c) = (S::splat(0.0), S::splat(0.0));
            for_each::<S>(x, n, f32::NEG_INFINITY, |v| {
                let inside = S::lt(t, v);
                s = S::add(s, S::select(inside, v, S::splat(0.0)));
                c = S::add(c, S::select(inside, S::splat(1.0), S::splat(0.0)));
            });
            (S::reduce_sum(s), S::reduce_sum(c))
        };
        let (mut sum, mut count) = support(f32::NEG_INFINITY);
        if count == 0.0 {
            map::<S>(x, n, |_| S::splat(f32::NAN));
            return;
        }
        let mut tau = (sum - 1.0) / count;
        for _ in 0..n {
            let (s2, c2) = support(tau);
            if c2 == count || c2 == 0.0 {
                break;
            }
            (sum, count) = (s2, c2);
            tau = (sum - 1.0) / count;
        }
        let t = S::splat(tau);
        map::<S>(x, n, |v| S::max(S::splat(0.0), S::sub(v, t)));
    }
}
