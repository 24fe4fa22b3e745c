//! The bfloat16 dot-product vocabulary: how one tier multiplies a pair of bf16 activations
//! (broadcast) by a vector of weight columns (a pair of bf16 rows each) into float32 lanes.
//!
//! * AVX512-BF16 (`vdpbf16ps`, AMD Zen 4, Intel Cooper Lake and Sapphire Rapids): both products
//!   of a pair summed into each float32 lane in one instruction (the products are exact in
//!   float32; the instruction treats bf16 subnormals as zero and flushes subnormal results).
//! * Elsewhere ([`WidenPairs`]) the pairs are widened to float32 (a bf16 is the top half of a
//!   float32) and the float32 product runs over them, its input rows kept as float32 rounded to
//!   bf16: half the weight bytes of float32, float32 arithmetic.
//!
//! Weight panels are `k/2` pairs of `NR` columns x 2 values: pair `p`, column `c` holds
//! `W[2p, c]` in its low and `W[2p + 1, c]` in its high 16 bits, so one vector load gives
//! `LANES` columns of 2 consecutive rows.

use super::Simd;

/// The bf16 primitives of one tier.
///
/// # Safety
///
/// As [`Simd`]: methods may only run inside the tier's target features, and pointers must be
/// valid for the values read (`2` for `bcast`, `2 * LANES` for `load_b`).
pub(crate) unsafe trait BDot: Copy + 'static {
    /// The float vocabulary of the same tier (accumulators and epilogue).
    type F: Simd;
    /// A prepared broadcast of a pair of activations.
    type A: Copy;
    /// A loaded vector of weight pairs (`LANES` columns x 2 rows).
    type B: Copy;
    /// Broadcast the pair at `p`.
    unsafe fn bcast(p: *const u16) -> Self::A;
    /// Load the `2 * LANES` weight values at `p`.
    unsafe fn load_b(p: *const u16) -> Self::B;
    /// `acc + a[0] * b[even] + a[1] * b[odd]` lane-wise.
    unsafe fn dot(acc: <Self::F as Simd>::V, a: Self::A, b: Self::B) -> <Self::F as Simd>::V;
}

/// Widening a vector of bf16 pairs to float32 (a bf16 is the top half of a float32): the
/// tiers without a bf16 dot product read their bf16 weight panels so.
///
/// # Safety
///
/// As [`Simd`]: methods may only run inside the tier's target features; `p` valid for
/// `2 * LANES` values.
pub(crate) unsafe trait WidenPairs: Simd {
    /// Value `g` (0: the low halves, 1: the high halves) of the `LANES` pairs at `p`.
    unsafe fn widen_pairs(p: *const u16, g: usize) -> Self::V;
}

/// The two float32 values of a bf16 pair stored as one `u32` (low half first).
#[inline(always)]
fn widen_pair(bits: u32) -> (f32, f32) {
    (
        f32::from_bits(bits << 16),
        f32::from_bits(bits & 0xffff_0000),
    )
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::*;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BDot, WidenPairs};
    use crate::simd::avx2::Avx2;
    use crate::simd::avx512::Avx512;
    use std::arch::x86_64::*;

    /// Evaluate an intrinsic expression under the [`BDot`] contract.
    macro_rules! intr {
        ($e:expr) => {{
            // SAFETY: `BDot` contract: callers run inside a function compiled with the tier's
            // features on a CPU that has them, with pointers valid for the values accessed.
            unsafe { $e }
        }};
    }

    /// AVX512-BF16: `vdpbf16ps` on zmm.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx512Bf16;

    // Safety: AVX-512F and AVX512-BF16 intrinsics; the contract makes callers enable them.
    unsafe impl BDot for Avx512Bf16 {
        type F = Avx512;
        type A = __m512bh;
        type B = __m512bh;
        #[inline(always)]
        unsafe fn bcast(p: *const u16) -> __m512bh {
            intr!(std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                std::ptr::read_unaligned(p as *const i32)
            )))
        }
        #[inline(always)]
        unsafe fn load_b(p: *const u16) -> __m512bh {
            intr!(std::mem::transmute::<__m512i, __m512bh>(
                _mm512_loadu_si512(p as *const _)
            ))
        }
        #[inline(always)]
        unsafe fn dot(acc: __m512, a: __m512bh, b: __m512bh) -> __m512 {
            intr!(_mm512_dpbf16_ps(acc, a, b))
        }
    }

    /// The even (low halves) and odd (high halves) bf16 values of 16 pairs, as float32.
    ///
    /// # Safety
    /// AVX-512F enabled.
    #[inline(always)]
    unsafe fn widen512(x: __m512i) -> (__m512, __m512) {
        intr!((
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(x)),
            _mm512_castsi512_ps(_mm512_and_si512(
                x,
                _mm512_set1_epi32(0xffff_0000u32 as i32)
            )),
        ))
    }

    /// [`widen512`] for 8 pairs.
    ///
    /// # Safety
    /// AVX2 enabled.
    #[inline(always)]
    unsafe fn widen256(x: __m256i) -> (__m256, __m256) {
        intr!((
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(x)),
            _mm256_castsi256_ps(_mm256_and_si256(
                x,
                _mm256_set1_epi32(0xffff_0000u32 as i32)
            )),
        ))
    }

    // Safety: AVX-512F intrinsics; the contract makes callers enable them.
    unsafe impl WidenPairs for Avx512 {
        #[inline(always)]
        unsafe fn widen_pairs(p: *const u16, g: usize) -> __m512 {
            let (lo, hi) = intr!(widen512(_mm512_loadu_si512(p as *const _)));
            if g == 0 { lo } else { hi }
        }
    }

    // Safety: AVX2 intrinsics; the contract makes callers enable them.
    unsafe impl WidenPairs for Avx2 {
        #[inline(always)]
        unsafe fn widen_pairs(p: *const u16, g: usize) -> __m256 {
            let (lo, hi) = intr!(widen256(_mm256_loadu_si256(p as *const _)));
            if g == 0 { lo } else { hi }
        }
    }
}

// Safety: plain Rust and `wide`; pointer validity is the callers' obligation.
unsafe impl WidenPairs for super::portable::Portable {
    #[inline(always)]
    unsafe fn widen_pairs(p: *const u16, g: usize) -> wide::f32x8 {
        // SAFETY: p valid for 16 values (trait contract).
        let x: [u32; 8] = unsafe { std::ptr::read_unaligned(p as *const [u32; 8]) };
        wide::f32x8::new(x.map(|b| {
            if g == 0 {
                widen_pair(b).0
            } else {
                widen_pair(b).1
            }
        }))
    }
}
