//! AVX-512 F/BW/DQ/VL: 16 lanes of `__m512`, mask registers for tails.

use super::Simd;
use std::arch::x86_64::*;

/// The AVX-512 tier's vocabulary.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512;

/// Evaluate an intrinsic expression under the [`Simd`] contract.
macro_rules! intr {
    ($e:expr) => {{
        // SAFETY: `Simd` contract: callers run inside a function compiled with avx512f/bw/dq/vl
        // on a CPU that has them, and pass pointers valid for the lanes accessed.
        unsafe { $e }
    }};
}

/// `super::bf16_bits` on 16 lanes (the rounding add, then NaN lanes kept NaN): each lane's
/// bfloat16 in its low 16 bits, the high 16 bits zero.
///
/// # Safety
/// AVX-512F enabled (the `Simd` contract).
#[inline(always)]
pub(crate) unsafe fn bf16_lanes(v: __m512) -> __m512i {
    intr!({
        let b = _mm512_castps_si512(v);
        let hi = _mm512_srli_epi32::<16>(b);
        let odd = _mm512_and_si512(hi, _mm512_set1_epi32(1));
        let r = _mm512_add_epi32(b, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
        let r = _mm512_srli_epi32::<16>(r);
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)))
    })
}

#[inline(always)]
fn tail_mask(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

// Safety: every method is an AVX-512F intrinsic; the trait's contract makes callers enable it.
unsafe impl Simd for Avx512 {
    type V = __m512;
    type M = __mmask16;
    const LANES: usize = 16;
    const FUSED: bool = true;
    const PERMUTE32: bool = true;

    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        intr!(_mm512_set1_ps(x))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        intr!(_mm512_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        intr!(_mm512_storeu_ps(p, v))
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> __m512 {
        // Masked-off lanes are neither read nor faulted on.
        intr!(_mm512_maskz_loadu_ps(tail_mask(n), p))
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, n: usize, v: __m512) {
        intr!(_mm512_mask_storeu_ps(p, tail_mask(n), v))
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        intr!(_mm512_add_ps(a, b))
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        intr!(_mm512_sub_ps(a, b))
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        intr!(_mm512_mul_ps(a, b))
    }
    #[inline(always)]
    unsafe fn div(a: __m512, b: __m512) -> __m512 {
        intr!(_mm512_div_ps(a, b))
    }
    #[inline(always)]
    unsafe fn recip(a: __m512) -> __m512 {
        // vrcp14ps (relative error below 2^-14) and one Newton step, r (2 - a r): about 2^-28
        // before rounding; a 512-bit division occupies the divider for about 10 cycles.
        intr!({
            let r = _mm512_rcp14_ps(a);
            let e = _mm512_fnmadd_ps(a, r, _mm512_set1_ps(1.0));
            _mm512_fmadd_ps(r, e, r)
        })
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        intr!(_mm512_fmadd_ps(a, b, c))
    }
    #[inline(always)]
    unsafe fn max(a: __m512, b: __m512) -> __m512 {
        intr!(_mm512_max_ps(a, b))
    }
    #[inline(always)]
    unsafe fn min(a: __m512, b: __m512) -> __m512 {
        intr!(_mm512_min_ps(a, b))
    }
    #[inline(always)]
    unsafe fn round(a: __m512) -> __m512 {
        intr!(_mm512_roundscale_ps::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(a))
    }
    #[inline(always)]
    unsafe fn pow2i(n: __m512) -> __m512 {
        intr!(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(
            _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127))
        )))
    }
    #[inline(always)]
    unsafe fn scale_pow2(p: __m512, n: __m512) -> __m512 {
        intr!(_mm512_scalef_ps(p, n))
    }
    #[inline(always)]
    unsafe fn lt(a: __m512, b: __m512) -> __mmask16 {
        intr!(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b))
    }
    #[inline(always)]
    unsafe fn is_nan(a: __m512) -> __mmask16 {
        intr!(_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, a))
    }
    #[inline(always)]
    unsafe fn all(m: __mmask16) -> bool {
        m == 0xffff
    }
    #[inline(always)]
    unsafe fn piecewise32<const C: usize>(c: &[[f32; 32]; C], i: __m512, t: __m512) -> __m512 {
        const { assert!(C >= 1) };
        // vpermt2ps: each lane picks entry `i` of the 32 held by two registers (the index's
        // low five bits; `i` is in range by the contract).
        intr!({
            let k = _mm512_cvttps_epi32(i);
            // A macro, not a closure: a closure would not share the caller's features.
            macro_rules! pick {
                ($row:expr) => {
                    _mm512_permutex2var_ps(
                        _mm512_loadu_ps($row.as_ptr()),
                        k,
                        _mm512_loadu_ps($row.as_ptr().add(16)),
                    )
                };
            }
            let mut p = pick!(c[C - 1]);
            for row in c[..C - 1].iter().rev() {
                p = _mm512_fmadd_ps(p, t, pick!(row));
            }
            p
        })
    }
    #[inline(always)]
    unsafe fn select(m: __mmask16, a: __m512, b: __m512) -> __m512 {
        // mask_blend takes the second operand where the mask bit is set.
        intr!(_mm512_mask_blend_ps(m, b, a))
    }
    #[inline(always)]
    unsafe fn reduce_sum(a: __m512) -> f32 {
        intr!({
            let lo = _mm512_castps512_ps256(a);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)));
            let s = _mm256_add_ps(lo, hi);
            let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
            _mm_cvtss_f32(s)
        })
    }
    #[inline(always)]
    unsafe fn reduce_max(a: __m512) -> f32 {
        intr!({
            let lo = _mm512_castps512_ps256(a);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)));
            let s = _mm256_max_ps(lo, hi);
            let s = _mm_max_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
            let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_max_ss(s, _mm_shuffle_ps::<1>(s, s));
            _mm_cvtss_f32(s)
        })
    }
    #[inline(always)]
    unsafe fn first(n: usize) -> __mmask16 {
        debug_assert!(n <= 16);
        ((1u32 << n) - 1) as __mmask16
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
    unsafe fn abs(a: __m512) -> __m512 {
        intr!(_mm512_abs_ps(a))
    }
    #[inline(always)]
    unsafe fn sqrt(a: __m512) -> __m512 {
        intr!(_mm512_sqrt_ps(a))
    }
    #[inline(always)]
    unsafe fn le(a: __m512, b: __m512) -> __mmask16 {
        intr!(_mm512_cmp_ps_mask::<_CMP_LE_OQ>(a, b))
    }
    #[inline(always)]
    unsafe fn eq(a: __m512, b: __m512) -> __mmask16 {
        intr!(_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, b))
    }
    #[inline(always)]
    unsafe fn load_i32_f32(p: *const i32, n: usize) -> __m512 {
        intr!(_mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(
            tail_mask(n.min(16)),
            p
        )))
    }
    #[inline(always)]
    unsafe fn store_u8(p: *mut u8, v: __m512, n: usize) {
        // vpmovdb truncates each i32 to its low byte; a whole vector's 16 bytes go out in one
        // plain store (the masked memory form is several times slower), a tail's under its mask.
        intr!({
            let i = _mm512_cvtps_epi32(v);
            if n >= 16 {
                _mm_storeu_si128(p as *mut __m128i, _mm512_cvtepi32_epi8(i))
            } else {
                _mm512_mask_cvtepi32_storeu_epi8(p as *mut i8, tail_mask(n), i)
            }
        })
    }
    #[inline(always)]
    unsafe fn round_bf16(v: __m512) -> __m512 {
        intr!(_mm512_castsi512_ps(_mm512_slli_epi32::<16>(bf16_lanes(v))))
    }
    #[inline(always)]
    unsafe fn store_bf16(p: *mut u16, v: __m512, n: usize) {
        intr!({
            let r = bf16_lanes(v);
            if n >= 16 {
                _mm256_storeu_si256(p as *mut __m256i, _mm512_cvtepi32_epi16(r))
            } else {
                _mm512_mask_cvtepi32_storeu_epi16(p as *mut i16, tail_mask(n), r)
            }
        })
    }
}
