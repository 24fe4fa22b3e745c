//! AVX2 + FMA: 8 lanes of `__m256`.

use super::Simd;
use std::arch::x86_64::*;

/// The AVX2+FMA tier's vocabulary.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2;

/// Evaluate an intrinsic expression under the [`Simd`] contract.
macro_rules! intr {
    ($e:expr) => {{
        // SAFETY: `Simd` contract: callers run inside a function compiled with avx2+fma on a CPU
        // that has them, and pass pointers valid for the lanes accessed.
        unsafe { $e }
    }};
}

#[inline(always)]
fn tail_mask(n: usize) -> __m256i {
    intr!(_mm256_cmpgt_epi32(
        _mm256_set1_epi32(n as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)
    ))
}

/// The bfloat16 bits of each lane ([`super::bf16_bits`] on 8 lanes: the rounding add, then NaN
/// lanes kept NaN), in the low 16 bits of each 32-bit lane.
///
/// # Safety
/// AVX2 enabled.
#[inline(always)]
unsafe fn bf16_lanes(v: __m256) -> __m256i {
    intr!({
        let b = _mm256_castps_si256(v);
        let hi = _mm256_srli_epi32::<16>(b);
        let odd = _mm256_and_si256(hi, _mm256_set1_epi32(1));
        let r = _mm256_add_epi32(b, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff)));
        let r = _mm256_srli_epi32::<16>(r);
        let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        _mm256_blendv_epi8(r, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan)
    })
}

// Safety: every method is an AVX2/FMA intrinsic; the trait's contract makes callers enable them.
unsafe impl Simd for Avx2 {
    type V = __m256;
    type M = __m256;
    const LANES: usize = 8;
    const FUSED: bool = true;

    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        intr!(_mm256_set1_ps(x))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        intr!(_mm256_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        intr!(_mm256_storeu_ps(p, v))
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> __m256 {
        // Masked-off lanes are neither read nor faulted on.
        intr!(_mm256_maskload_ps(p, tail_mask(n)))
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, n: usize, v: __m256) {
        intr!(_mm256_maskstore_ps(p, tail_mask(n), v))
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        intr!(_mm256_add_ps(a, b))
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        intr!(_mm256_sub_ps(a, b))
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        intr!(_mm256_mul_ps(a, b))
    }
    #[inline(always)]
    unsafe fn div(a: __m256, b: __m256) -> __m256 {
        intr!(_mm256_div_ps(a, b))
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        intr!(_mm256_fmadd_ps(a, b, c))
    }
    #[inline(always)]
    unsafe fn max(a: __m256, b: __m256) -> __m256 {
        intr!(_mm256_max_ps(a, b))
    }
    #[inline(always)]
    unsafe fn min(a: __m256, b: __m256) -> __m256 {
        intr!(_mm256_min_ps(a, b))
    }
    #[inline(always)]
    unsafe fn round(a: __m256) -> __m256 {
        intr!(_mm256_round_ps::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(a))
    }
    #[inline(always)]
    unsafe fn pow2i(n: __m256) -> __m256 {
        intr!(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127))
        )))
    }
    #[inline(always)]
    unsafe fn lt(a: __m256, b: __m256) -> __m256 {
        intr!(_mm256_cmp_ps::<_CMP_LT_OQ>(a, b))
    }
    #[inline(always)]
    unsafe fn is_nan(a: __m256) -> __m256 {
        intr!(_mm256_cmp_ps::<_CMP_UNORD_Q>(a, a))
    }
    #[inline(always)]
    unsafe fn all(m: __m256) -> bool {
        intr!(_mm256_movemask_ps(m)) == 0xff
    }
    #[inline(always)]
    unsafe fn select(m: __m256, a: __m256, b: __m256) -> __m256 {
        intr!(_mm256_blendv_ps(b, a, m))
    }
    #[inline(always)]
    unsafe fn reduce_sum(a: __m256) -> f32 {
        intr!({
            let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
            _mm_cvtss_f32(s)
        })
    }
    #[inline(always)]
    unsafe fn reduce_max(a: __m256) -> f32 {
        intr!({
            let s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_max_ss(s, _mm_shuffle_ps::<1>(s, s));
            _mm_cvtss_f32(s)
        })
    }
    #[inline(always)]
    unsafe fn first(n: usize) -> __m256 {
        intr!(_mm256_cmp_ps::<_CMP_LT_OQ>(
            _mm256_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0),
            _mm256_set1_ps(n as f32)
        ))
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        intr!(_mm_prefetch::<_MM_HINT_T0>(p as *const i8))
    }
    #[inline(always)]
    unsafe fn prefetch_l2(p: *const u8) {
        intr!(_mm_prefetch::<_MM_HINT_T1>(p as *const i8))
    }
    #[inline(always)]
    unsafe fn prefetch_write(p: *const u8) {
        intr!(_mm_prefetch::<_MM_HINT_ET0>(p as *const i8))
    }
    #[inline(always)]
    unsafe fn abs(a: __m256) -> __m256 {
        intr!(_mm256_andnot_ps(_mm256_set1_ps(-0.0), a))
    }
    #[inline(always)]
    unsafe fn sqrt(a: __m256) -> __m256 {
        intr!(_mm256_sqrt_ps(a))
    }
    #[inline(always)]
    unsafe fn le(a: __m256, b: __m256) -> __m256 {
        intr!(_mm256_cmp_ps::<_CMP_LE_OQ>(a, b))
    }
    #[inline(always)]
    unsafe fn eq(a: __m256, b: __m256) -> __m256 {
        intr!(_mm256_cmp_ps::<_CMP_EQ_OQ>(a, b))
    }
    #[inline(always)]
    unsafe fn load_i32_f32(p: *const i32, n: usize) -> __m256 {
        intr!(_mm256_cvtepi32_ps(_mm256_maskload_epi32(
            p,
            tail_mask(n.min(8))
        )))
    }
    #[inline(always)]
    unsafe fn store_u8(p: *mut u8, v: __m256, n: usize) {
        intr!({
            // Low bytes (x & 0xFF, so the unsigned packs never saturate), packed to 8 bytes.
            let i = _mm256_and_si256(_mm256_cvtps_epi32(v), _mm256_set1_epi32(0xFF));
            let w = _mm_packus_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256::<1>(i));
            let b = _mm_packus_epi16(w, w);
            if n >= 8 {
                _mm_storel_epi64(p as *mut __m128i, b);
            } else {
                let bytes: [u8; 16] = std::mem::transmute(b);
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, n);
            }
        })
    }
    #[inline(always)]
    unsafe fn round_bf16(v: __m256) -> __m256 {
        intr!(_mm256_castsi256_ps(_mm256_slli_epi32::<16>(bf16_lanes(v))))
    }
    #[inline(always)]
    unsafe fn store_bf16(p: *mut u16, v: __m256, n: usize) {
        intr!({
            let r = bf16_lanes(v);
            // Each lane is at most 0xffff: the unsigned pack is exact.
            let h = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256::<1>(r));
            if n >= 8 {
                _mm_storeu_si128(p as *mut __m128i, h);
            } else {
                let vals: [u16; 8] = std::mem::transmute(h);
                std::ptr::copy_nonoverlapping(vals.as_ptr(), p, n);
            }
        })
    }
}
