//! The portable tier: `wide::f32x8` (SSE2 pairs on x86-64, NEON on aarch64).

use super::Simd;
use wide::{f32x8, i32x8};

/// The portable tier's vocabulary.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Portable;

/// Evaluate a raw-pointer expression under the [`Simd`] contract.
macro_rules! raw {
    ($e:expr) => {{
        // SAFETY: `Simd` contract: callers pass pointers valid for the lanes accessed.
        unsafe { $e }
    }};
}

// Safety: no target features are needed; pointer validity is the callers' obligation.
unsafe impl Simd for Portable {
    type V = f32x8;
    type M = f32x8;
    const LANES: usize = 8;

    #[inline(always)]
    unsafe fn splat(x: f32) -> f32x8 {
        f32x8::splat(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> f32x8 {
        f32x8::new(raw!(std::ptr::read_unaligned(p as *const [f32; 8])))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: f32x8) {
        raw!(std::ptr::write_unaligned(p as *mut [f32; 8], v.to_array()))
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> f32x8 {
        let mut a = [0.0f32; 8];
        for (i, v) in a.iter_mut().enumerate().take(n.min(8)) {
            *v = raw!(*p.add(i));
        }
        f32x8::new(a)
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, n: usize, v: f32x8) {
        for (i, x) in v.to_array().iter().enumerate().take(n.min(8)) {
            raw!(*p.add(i) = *x);
        }
    }
    #[inline(always)]
    unsafe fn add(a: f32x8, b: f32x8) -> f32x8 {
        a + b
    }
    #[inline(always)]
    unsafe fn sub(a: f32x8, b: f32x8) -> f32x8 {
        a - b
    }
    #[inline(always)]
    unsafe fn mul(a: f32x8, b: f32x8) -> f32x8 {
        a * b
    }
    #[inline(always)]
    unsafe fn div(a: f32x8, b: f32x8) -> f32x8 {
        a / b
    }
    #[inline(always)]
    unsafe fn fma(a: f32x8, b: f32x8, c: f32x8) -> f32x8 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    unsafe fn max(a: f32x8, b: f32x8) -> f32x8 {
        a.fast_max(b)
    }
    #[inline(always)]
    unsafe fn min(a: f32x8, b: f32x8) -> f32x8 {
        a.fast_min(b)
    }
    #[inline(always)]
    unsafe fn round(a: f32x8) -> f32x8 {
        a.round_ties_even()
    }
    #[inline(always)]
    unsafe fn pow2i(n: f32x8) -> f32x8 {
        let bits: i32x8 = (n.round_int() + i32x8::splat(127)) << 23;
        f32x8::from_ne_bytes(bits.to_ne_bytes())
    }
    #[inline(always)]
    unsafe fn lt(a: f32x8, b: f32x8) -> f32x8 {
        a.simd_lt(b)
    }
    #[inline(always)]
    unsafe fn is_nan(a: f32x8) -> f32x8 {
        a.is_nan()
    }
    #[inline(always)]
    unsafe fn first(n: usize) -> f32x8 {
        f32x8::from([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]).simd_lt(f32x8::splat(n as f32))
    }
    #[inline(always)]
    unsafe fn all(m: f32x8) -> bool {
        m.all()
    }
    #[inline(always)]
    unsafe fn select(m: f32x8, a: f32x8, b: f32x8) -> f32x8 {
        m.bitselect(a, b)
    }
    #[inline(always)]
    unsafe fn reduce_sum(a: f32x8) -> f32 {
        let v = a.to_array();
        ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]))
    }
    #[inline(always)]
    unsafe fn reduce_max(a: f32x8) -> f32 {
        a.to_array()
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max)
    }
    #[inline(always)]
    unsafe fn abs(a: f32x8) -> f32x8 {
        a.abs()
    }
    #[inline(always)]
    unsafe fn sqrt(a: f32x8) -> f32x8 {
        a.sqrt()
    }
    #[inline(always)]
    unsafe fn le(a: f32x8, b: f32x8) -> f32x8 {
        a.simd_le(b)
    }
    #[inline(always)]
    unsafe fn eq(a: f32x8, b: f32x8) -> f32x8 {
        a.simd_eq(b)
    }
    #[inline(always)]
    unsafe fn load_i32_f32(p: *const i32, n: usize) -> f32x8 {
        let mut a = [0.0f32; 8];
        for (i, v) in a.iter_mut().enumerate().take(n.min(8)) {
            *v = raw!(*p.add(i)) as f32;
        }
        f32x8::new(a)
    }
    #[inline(always)]
    unsafe fn store_u8(p: *mut u8, v: f32x8, n: usize) {
        for (i, x) in v.round_int().to_array().iter().enumerate().take(n.min(8)) {
            raw!(*p.add(i) = *x as u8);
        }
    }
    #[inline(always)]
    unsafe fn round_bf16(v: f32x8) -> f32x8 {
        f32x8::new(
            v.to_array()
                .map(|x| f32::from_bits((super::bf16_bits(x) as u32) << 16)),
        )
    }
    #[inline(always)]
    unsafe fn store_bf16(p: *mut u16, v: f32x8, n: usize) {
        for (i, x) in v.to_array().iter().enumerate().take(n.min(8)) {
            raw!(*p.add(i) = super::bf16_bits(*x));
        }
    }
}
