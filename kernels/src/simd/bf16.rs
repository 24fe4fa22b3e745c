//! The bfloat16 dot-product vocabulary: how one tier multiplies a pair of bf16 activations
//! (broadcast) by a vector of weight columns (a pair of bf16 rows each) into float32 lanes.
//!
//! * AVX512-BF16 (`vdpbf16ps`, AMD Zen 4, Intel Cooper Lake and Sapphire Rapids): both products
//!   of a pair summed into each float32 lane in one instruction (the products are exact in
//!   float32; the instruction treats bf16 subnormals as zero and flushes subnormal results).
//! * Elsewhere the pairs are widened to float32 (a bf16 is the top half of a float32) and
//!   multiplied with two FMAs, the even row first: half the weight bytes of float32, float32
//!   arithmetic.
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
    use super::BDot;
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

    /// AVX-512 without BF16: pairs widened to float32, two FMAs.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx512Widen;

    // Safety: AVX-512F intrinsics; the contract makes callers enable them.
    unsafe impl BDot for Avx512Widen {
        type F = Avx512;
        type A = (__m512, __m512);
        type B = (__m512, __m512);
        #[inline(always)]
        unsafe fn bcast(p: *const u16) -> (__m512, __m512) {
            // One broadcast load of the pair, split in the vector unit (no scalar round trip).
            intr!(widen512(_mm512_set1_epi32(std::ptr::read_unaligned(
                p as *const i32
            ))))
        }
        #[inline(always)]
        unsafe fn load_b(p: *const u16) -> (__m512, __m512) {
            intr!(widen512(_mm512_loadu_si512(p as *const _)))
        }
        #[inline(always)]
        unsafe fn dot(acc: __m512, a: (__m512, __m512), b: (__m512, __m512)) -> __m512 {
            intr!(_mm512_fmadd_ps(a.1, b.1, _mm512_fmadd_ps(a.0, b.0, acc)))
        }
    }

    /// AVX2: pairs widened to float32, two FMAs.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx2Widen;

    // Safety: AVX2 and FMA intrinsics; the contract makes callers enable them.
    unsafe impl BDot for Avx2Widen {
        type F = Avx2;
        type A = (__m256, __m256);
        type B = (__m256, __m256);
        #[inline(always)]
        unsafe fn bcast(p: *const u16) -> (__m256, __m256) {
            // One broadcast load of the pair, split in the vector unit (no scalar round trip).
            intr!(widen256(_mm256_set1_epi32(std::ptr::read_unaligned(
                p as *const i32
            ))))
        }
        #[inline(always)]
        unsafe fn load_b(p: *const u16) -> (__m256, __m256) {
            intr!(widen256(_mm256_loadu_si256(p as *const _)))
        }
        #[inline(always)]
        unsafe fn dot(acc: __m256, a: (__m256, __m256), b: (__m256, __m256)) -> __m256 {
            intr!(_mm256_fmadd_ps(a.1, b.1, _mm256_fmadd_ps(a.0, b.0, acc)))
        }
    }
}

/// The portable form: pairs widened to float32, 8 columns.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PortableWiden;

// Safety: plain Rust and `wide`; pointer validity is the callers' obligation.
unsafe impl BDot for PortableWiden {
    type F = super::portable::Portable;
    type A = (wide::f32x8, wide::f32x8);
    type B = (wide::f32x8, wide::f32x8);
    #[inline(always)]
    unsafe fn bcast(p: *const u16) -> (wide::f32x8, wide::f32x8) {
        // SAFETY: p valid for 2 values (trait contract).
        let (lo, hi) = widen_pair(unsafe { std::ptr::read_unaligned(p as *const u32) });
        (wide::f32x8::splat(lo), wide::f32x8::splat(hi))
    }
    #[inline(always)]
    unsafe fn load_b(p: *const u16) -> (wide::f32x8, wide::f32x8) {
        // SAFETY: p valid for 16 values (trait contract).
        let x: [u32; 8] = unsafe { std::ptr::read_unaligned(p as *const [u32; 8]) };
        let pairs = x.map(widen_pair);
        (
            wide::f32x8::new(pairs.map(|p| p.0)),
            wide::f32x8::new(pairs.map(|p| p.1)),
        )
    }
    #[inline(always)]
    unsafe fn dot(
        acc: wide::f32x8,
        a: (wide::f32x8, wide::f32x8),
        b: (wide::f32x8, wide::f32x8),
    ) -> wide::f32x8 {
        a.1.mul_add(b.1, a.0.mul_add(b.0, acc))
    }
}
