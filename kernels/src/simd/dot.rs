//! The int8 dot-product vocabulary: how one tier multiplies 4 activation bytes (broadcast) by a
//! vector of weight columns (4 int8 rows each) into int32 lanes. Every form is exact for every
//! operand in `[-127, 127]`:
//!
//! * VNNI (`vpdpbusd`, zmm or ymm): unsigned x signed bytes, four products summed into each int32
//!   lane without intermediate rounding. Activations are stored as `q + 128` (unsigned); the
//!   packed weights carry `128 * column sum`, subtracted in the epilogue.
//! * AVX-512BW without VNNI (`vpmaddubsw` + `vpmaddwd`): `vpmaddubsw` adds pairs of u8 x s8
//!   products in int16 with saturation. With `|a|` as the unsigned operand and the weight's sign
//!   flipped where `a` is negative, each product is at most 127 * 127 and a pair at most
//!   32,258 < 32,767: never saturated, so exact. Activations are stored as `q` itself.
//! * AVX2 without VNNI (`vpmaddwd` on int16 pairs): the row tile widened to int16 once, the
//!   weights sign-extended as loaded; a pair sum is at most 2 * 127 * 127, exact with no sign step
//!   (on Zen 3 the sign step's `vpsignb` and `vpabsb` shared the multiplies' pipes: `peak_flops`
//!   measured the `vpmaddubsw` form with it at 104-135 GOP/s, this one at 115-166).
//! * Portable: scalar int32 arithmetic.
//!
//! Weight panels are `k/4` groups of `NR` columns x 4 bytes: group `g`, column `c` holds
//! `W[4g..4g+4, c]`, so one vector load gives `LANES` columns of 4 consecutive rows (the AVX2
//! form orders each 8 columns' 32 bytes in pairs instead: [`Dot::LAYOUT`]).

use super::Simd;
use crate::ops::product::PanelLayout;

/// The int8 primitives of one tier.
///
/// # Safety
///
/// As [`Simd`]: methods may only run inside the tier's target features, and pointers must be
/// valid for the bytes read (`4` for `bcast`; `4 * LANES` for `load_b`, or their share of a
/// group when it is taken in [`Dot::PARTS`]). An implementation's parts stay inside a group:
/// `(PARTS - 1) * A_PART + 4` is at most a row's group (4 bytes, 8 with [`Dot::WIDE_A`]), and
/// `(PARTS - 1) * B_PART` plus the bytes `load_b` reads at most `4 * LANES` (the kernel checks
/// the first at compile time; the second is the implementation's to keep).
pub(crate) unsafe trait Dot: Copy + 'static {
    /// The float vocabulary of the same tier (for the epilogue).
    type F: Simd;
    /// `F::LANES` int32 lanes.
    type I: Copy;
    /// A prepared broadcast of 4 activation bytes.
    type A: Copy;
    /// A loaded vector of weight groups (`LANES` columns x 4 rows, or one part of them).
    type B: Copy;
    /// Activations are stored as `q + 128` (for unsigned x signed instructions).
    const OFFSET: bool;
    /// The kernel reads a copy of each row tile widened to int16 (8 bytes a group, `bcast`
    /// reading them a part at a time), not the quantized bytes in place.
    const WIDE_A: bool = false;
    /// How the packed weights lie ([`PanelLayout::Groups`] unless the loads want another order).
    const LAYOUT: PanelLayout = PanelLayout::Groups;
    /// A group of 4 inner rows is taken in this many parts, one after the other: part `j`
    /// broadcasts the bytes `j * A_PART` into the row's group and loads the weights
    /// `j * B_PART` into each vector's (fewer registers live at once: a taller tile fits).
    const PARTS: usize = 1;
    /// Bytes between the parts of a row's group (see [`Dot::PARTS`]).
    const A_PART: usize = 0;
    /// Bytes between the parts of a vector's weights (see [`Dot::PARTS`]).
    const B_PART: usize = 0;
    /// All lanes 0.
    unsafe fn zero() -> Self::I;
    /// Broadcast the 4 bytes at `p` (a group of 4 activations, or one part of a widened one).
    unsafe fn bcast(p: *const u8) -> Self::A;
    /// Load the `4 * LANES` weight bytes at `p` (`4 * LANES / PARTS` for one part).
    unsafe fn load_b(p: *const i8) -> Self::B;
    /// `acc + a . b` lane-wise.
    unsafe fn dot(acc: Self::I, a: Self::A, b: Self::B) -> Self::I;
    /// `a - (the LANES int32 at p)`.
    unsafe fn sub_i32(a: Self::I, p: *const i32) -> Self::I;
    /// Exact conversion to float lanes (rounded where `|x| > 2^24`).
    unsafe fn to_f32(a: Self::I) -> <Self::F as Simd>::V;
    /// Store the lanes as int32 (the first `n <= LANES`).
    unsafe fn store_i32(p: *mut i32, a: Self::I, n: usize);
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::*;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Dot;
    use crate::ops::product::PanelLayout;
    use crate::simd::avx2::Avx2;
    use crate::simd::avx512::Avx512;
    use std::arch::x86_64::*;

    /// Evaluate an intrinsic expression under the [`Dot`] contract.
    macro_rules! intr {
        ($e:expr) => {{
            // SAFETY: `Dot` contract: callers run inside a function compiled with the tier's
            // features on a CPU that has them, with pointers valid for the bytes accessed.
            unsafe { $e }
        }};
    }

    #[inline(always)]
    fn mask16(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// AVX512-VNNI: `vpdpbusd` on zmm.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx512Vnni;

    // Safety: AVX-512 F/BW and VNNI intrinsics; the contract makes callers enable them.
    unsafe impl Dot for Avx512Vnni {
        type F = Avx512;
        type I = __m512i;
        type A = __m512i;
        type B = __m512i;
        const OFFSET: bool = true;
        #[inline(always)]
        unsafe fn zero() -> __m512i {
            intr!(_mm512_setzero_si512())
        }
        #[inline(always)]
        unsafe fn bcast(p: *const u8) -> __m512i {
            intr!(_mm512_set1_epi32(std::ptr::read_unaligned(p as *const i32)))
        }
        #[inline(always)]
        unsafe fn load_b(p: *const i8) -> __m512i {
            intr!(_mm512_loadu_si512(p as *const _))
        }
        #[inline(always)]
        unsafe fn dot(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
            intr!(_mm512_dpbusd_epi32(acc, a, b))
        }
        #[inline(always)]
        unsafe fn sub_i32(a: __m512i, p: *const i32) -> __m512i {
            intr!(_mm512_sub_epi32(a, _mm512_loadu_si512(p as *const _)))
        }
        #[inline(always)]
        unsafe fn to_f32(a: __m512i) -> __m512 {
            intr!(_mm512_cvtepi32_ps(a))
        }
        #[inline(always)]
        unsafe fn store_i32(p: *mut i32, a: __m512i, n: usize) {
            intr!(_mm512_mask_storeu_epi32(p, mask16(n), a))
        }
    }

    /// AVX-512BW without VNNI: `vpmaddubsw` + `vpmaddwd` on zmm, signs moved to the weights.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx512Bw;

    // Safety: AVX-512 F/BW intrinsics; the contract makes callers enable them.
    unsafe impl Dot for Avx512Bw {
        type F = Avx512;
        type I = __m512i;
        /// `(|a|, the lanes where a < 0)`.
        type A = (__m512i, __mmask64);
        type B = __m512i;
        const OFFSET: bool = false;
        #[inline(always)]
        unsafe fn zero() -> __m512i {
            intr!(_mm512_setzero_si512())
        }
        #[inline(always)]
        unsafe fn bcast(p: *const u8) -> (__m512i, __mmask64) {
            intr!({
                let a = _mm512_set1_epi32(std::ptr::read_unaligned(p as *const i32));
                (_mm512_abs_epi8(a), _mm512_movepi8_mask(a))
            })
        }
        #[inline(always)]
        unsafe fn load_b(p: *const i8) -> __m512i {
            intr!(_mm512_loadu_si512(p as *const _))
        }
        #[inline(always)]
        unsafe fn dot(acc: __m512i, a: (__m512i, __mmask64), w: __m512i) -> __m512i {
            intr!({
                // The weight's sign flipped where the activation is negative: |a| * (+-w).
                let w = _mm512_mask_sub_epi8(w, a.1, _mm512_setzero_si512(), w);
                let pairs = _mm512_maddubs_epi16(a.0, w);
                _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, _mm512_set1_epi16(1)))
            })
        }
        #[inline(always)]
        unsafe fn sub_i32(a: __m512i, p: *const i32) -> __m512i {
            intr!(_mm512_sub_epi32(a, _mm512_loadu_si512(p as *const _)))
        }
        #[inline(always)]
        unsafe fn to_f32(a: __m512i) -> __m512 {
            intr!(_mm512_cvtepi32_ps(a))
        }
        #[inline(always)]
        unsafe fn store_i32(p: *mut i32, a: __m512i, n: usize) {
            intr!(_mm512_mask_storeu_epi32(p, mask16(n), a))
        }
    }

    #[inline(always)]
    fn mask8(n: usize) -> __m256i {
        intr!(_mm256_cmpgt_epi32(
            _mm256_set1_epi32(n.min(8) as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)
        ))
    }

    /// AVX-VNNI: the VEX `vpdpbusd` on ymm.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx2Vnni;

    // Safety: AVX2 and AVX-VNNI intrinsics; the contract makes callers enable them.
    unsafe impl Dot for Avx2Vnni {
        type F = Avx2;
        type I = __m256i;
        type A = __m256i;
        type B = __m256i;
        const OFFSET: bool = true;
        #[inline(always)]
        unsafe fn zero() -> __m256i {
            intr!(_mm256_setzero_si256())
        }
        #[inline(always)]
        unsafe fn bcast(p: *const u8) -> __m256i {
            intr!(_mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32)))
        }
        #[inline(always)]
        unsafe fn load_b(p: *const i8) -> __m256i {
            intr!(_mm256_loadu_si256(p as *const _))
        }
        #[inline(always)]
        unsafe fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
            intr!(_mm256_dpbusd_avx_epi32(acc, a, b))
        }
        #[inline(always)]
        unsafe fn sub_i32(a: __m256i, p: *const i32) -> __m256i {
            intr!(_mm256_sub_epi32(a, _mm256_loadu_si256(p as *const _)))
        }
        #[inline(always)]
        unsafe fn to_f32(a: __m256i) -> __m256 {
            intr!(_mm256_cvtepi32_ps(a))
        }
        #[inline(always)]
        unsafe fn store_i32(p: *mut i32, a: __m256i, n: usize) {
            intr!(_mm256_maskstore_epi32(p, mask8(n), a))
        }
    }

    /// AVX2 without VNNI, exact without a sign step: `vpmaddwd` on int16 pairs. The kernel
    /// reads its row tile widened to int16 ([`Dot::WIDE_A`]); the weights stay int8, laid out
    /// in pairs ([`PanelLayout::Pairs`]) and sign-extended as loaded. A group is taken in two
    /// parts, one pair of inner rows each ([`Dot::PARTS`]), so a part holds one broadcast and
    /// `NV` weight vectors: a 6 x 16 tile fits the 16 registers (12 sums, a broadcast, two
    /// weight vectors and the product of one `vpmaddwd`, none spare). A pair sum is at most
    /// 2 * 127 * 127: exact, and no `vpsignb` / `vpabsb` shares the multiplies' pipes (measured
    /// on Zen 3 with `tools/peak_flops.c`).
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx2Madd16;

    // Safety: AVX2 intrinsics; the contract makes callers enable them (`bcast` reads 4 bytes,
    // `load_b` 16).
    unsafe impl Dot for Avx2Madd16 {
        type F = Avx2;
        type I = __m256i;
        /// One pair of widened activations `(a0, a1)` in every lane.
        type A = __m256i;
        /// One pair of inner rows `(w0, w1)` of each of 8 columns, as int16.
        type B = __m256i;
        const OFFSET: bool = false;
        const WIDE_A: bool = true;
        const LAYOUT: PanelLayout = PanelLayout::Pairs;
        const PARTS: usize = 2;
        const A_PART: usize = 4;
        const B_PART: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> __m256i {
            intr!(_mm256_setzero_si256())
        }
        #[inline(always)]
        unsafe fn bcast(p: *const u8) -> __m256i {
            intr!(_mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32)))
        }
        #[inline(always)]
        unsafe fn load_b(p: *const i8) -> __m256i {
            intr!(_mm256_cvtepi8_epi16(_mm_loadu_si128(p as *const _)))
        }
        #[inline(always)]
        unsafe fn dot(acc: __m256i, a: __m256i, w: __m256i) -> __m256i {
            intr!(_mm256_add_epi32(acc, _mm256_madd_epi16(a, w)))
        }
        #[inline(always)]
        unsafe fn sub_i32(a: __m256i, p: *const i32) -> __m256i {
            intr!(_mm256_sub_epi32(a, _mm256_loadu_si256(p as *const _)))
        }
        #[inline(always)]
        unsafe fn to_f32(a: __m256i) -> __m256 {
            intr!(_mm256_cvtepi32_ps(a))
        }
        #[inline(always)]
        unsafe fn store_i32(p: *mut i32, a: __m256i, n: usize) {
            intr!(_mm256_maskstore_epi32(p, mask8(n), a))
        }
    }
}

/// The portable form: scalar int32 lanes, 8 columns.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PortableDot;

// Safety: plain Rust; pointer validity is the callers' obligation.
unsafe impl Dot for PortableDot {
    type F = super::portable::Portable;
    type I = [i32; 8];
    type A = [i32; 4];
    type B = [i8; 32];
    const OFFSET: bool = false;
    #[inline(always)]
    unsafe fn zero() -> [i32; 8] {
        [0; 8]
    }
    #[inline(always)]
    unsafe fn bcast(p: *const u8) -> [i32; 4] {
        // SAFETY: p valid for 4 bytes (trait contract).
        let b: [u8; 4] = unsafe { std::ptr::read_unaligned(p as *const [u8; 4]) };
        b.map(|x| x as i8 as i32)
    }
    #[inline(always)]
    unsafe fn load_b(p: *const i8) -> [i8; 32] {
        // SAFETY: p valid for 32 bytes (trait contract).
        unsafe { std::ptr::read_unaligned(p as *const [i8; 32]) }
    }
    #[inline(always)]
    unsafe fn dot(mut acc: [i32; 8], a: [i32; 4], w: [i8; 32]) -> [i32; 8] {
        for (c, x) in acc.iter_mut().enumerate() {
            let g = &w[4 * c..4 * c + 4];
            *x += a[0] * g[0] as i32 + a[1] * g[1] as i32 + a[2] * g[2] as i32 + a[3] * g[3] as i32;
        }
        acc
    }
    #[inline(always)]
    unsafe fn sub_i32(mut a: [i32; 8], p: *const i32) -> [i32; 8] {
        // SAFETY: p valid for 8 values (trait contract).
        let c: [i32; 8] = unsafe { std::ptr::read_unaligned(p as *const [i32; 8]) };
        for (x, y) in a.iter_mut().zip(c) {
            *x -= y;
        }
        a
    }
    #[inline(always)]
    unsafe fn to_f32(a: [i32; 8]) -> wide::f32x8 {
        wide::f32x8::new(a.map(|x| x as f32))
    }
    #[inline(always)]
    unsafe fn store_i32(p: *mut i32, a: [i32; 8], n: usize) {
        for (i, x) in a.iter().enumerate().take(n.min(8)) {
            // SAFETY: p valid for n values (trait contract).
            unsafe { *p.add(i) = *x };
        }
    }
}
