//! bfloat16 matrix products (Keras' `mixed_bfloat16`: bf16 operands, float32 accumulation) over
//! weights packed once into panels of `k/2` pairs (see `simd::bf16`), with the float epilogue
//! of the float32 products:
//!
//! `C[i, j] = act(sum_k a[i, k] w[k, j] + bias[j]) + residual`, `a` and `w` bf16, the sum float32.
//!
//! Two kinds of kernel: on a bf16 dot product (`vdpbf16ps`, [`bgemm_panels`]) the input rows are
//! bf16 and the sum over the whole of `k` stays in registers, pair by pair in order; elsewhere
//! the float32 product itself runs over the panels, widening each pair as it is read
//! (`gemm::Bf16Pairs`), its cache blocks and register tile, over input rows kept as float32
//! rounded to bf16 (4 bytes a value: no widening per use). Measured on an AMD EPYC (Zen 3,
//! AVX2), one thread, the products alone alternated in one process: the earlier widened kernel
//! (bf16 rows, no cache blocks, a 4 x 16 tile) ran BERT-base's products at 1.15-1.30x the
//! float32 time. Either way every output is computed by the same operations whatever the thread
//! split.

use super::act::apply_tile;
use super::gemm::{Bf16Pairs, Epi, gemm_panels, load_n, store_n};
use super::product::{ProductArgs, ProductKernel, by_rows};
use crate::activation::Activation;
use crate::simd::Simd;
use crate::simd::bf16::BDot;

/// One `R x (NV * LANES)` tile over the whole of `k` (`kp` pairs).
///
/// # Safety
/// `a`: `R` rows of `2 * kp` values at stride `lda` (values); `b`: the panel (`kp` pairs of
/// `NV * LANES * 2` values); `c`: `R` rows of `cols` values at stride `ldc`; `epi` offset to
/// this tile's first column (bias valid for `cols`, residual for `R` rows of `cols`). D's
/// features enabled.
#[inline(always)]
unsafe fn micro<D: BDot, const R: usize, const NV: usize>(
    kp: usize,
    a: *const u16,
    lda: usize,
    b: *const u16,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    epi: &Epi,
) {
    type S<D> = <D as BDot>::F;
    let lanes = <D::F as Simd>::LANES;
    let nr = NV * lanes;
    // SAFETY: every pointer formed stays inside the extents of the contract.
    unsafe {
        let mut acc = [[S::<D>::splat(0.0); NV]; R];
        let rows: [*const u16; R] = std::array::from_fn(|i| a.add(i * lda));
        let mut bp = b;
        for p in 0..kp {
            let mut bv = [D::load_b(bp); NV];
            for (v, x) in bv.iter_mut().enumerate().skip(1) {
                *x = D::load_b(bp.add(v * lanes * 2));
            }
            for i in 0..R {
                let av = D::bcast(rows[i].add(2 * p));
                for v in 0..NV {
                    acc[i][v] = D::dot(acc[i][v], av, bv[v]);
                }
            }
            bp = bp.add(nr * 2);
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, &y) in row.iter().enumerate() {
                let cc = v * lanes;
                if cc >= cols {
                    break;
                }
                let n = cols - cc;
                let mut y = y;
                if !epi.bias.is_null() {
                    y = S::<D>::add(y, load_n::<S<D>>(epi.bias.add(cc), n));
                }
                if epi.act == Activation::Linear && !epi.residual.is_null() {
                    let r = epi.residual.add(i * epi.ldr + cc);
                    y = S::<D>::add(y, load_n::<S<D>>(r, n));
                }
                store_n::<S<D>>(c.add(i * ldc + cc), n, y);
            }
        }
        if epi.act != Activation::Linear {
            apply_tile::<S<D>>(c, ldc, R, cols, epi.act, epi.residual, epi.ldr);
        }
    }
}

/// [`micro`] for `rows <= MR <= 8` rows, monomorphised per row count.
#[inline(always)]
unsafe fn tile<D: BDot, const NV: usize>(
    rows: usize,
    kp: usize,
    a: *const u16,
    lda: usize,
    b: *const u16,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    epi: &Epi,
) {
    macro_rules! go {
        ($r:literal) => {
            micro::<D, $r, NV>(kp, a, lda, b, c, ldc, cols, epi)
        };
    }
    // SAFETY: forwarded contract of `micro` with R = rows.
    unsafe { by_rows!(rows, go, [1, 2, 3, 4, 5, 6, 7], 8) }
}

/// Rows `0..m` and panels `p0..p1` of the bf16 product.
///
/// # Safety
/// * `a`: `m` rows of `2 * kp` values (`kp = steps`), `lda` bytes apart (even); `packed`: `ceil(n / NR)` panels of `kp * NR * 2`
///   values; `c`: `m` rows of `n` values at stride `ldc`; `epi.bias` `n` values or null;
///   `epi.residual` `m` rows at stride `epi.ldr` or null.
/// * `MR <= 8`; no other thread writes the columns of panels `p0..p1` of these rows.
#[inline(always)]
pub(crate) unsafe fn bgemm_panels<D: BDot, const MR: usize, const NV: usize>(
    a: *const u8,
    packed: *const u8,
    c: *mut f32,
    args: &ProductArgs,
) {
    let ProductArgs {
        m,
        steps: kp,
        n,
        ldc,
        p0,
        p1,
        ref epi,
        ..
    } = *args;
    let (a, lda) = (a as *const u16, args.lda / 2);
    let packed = packed as *const u16;
    let nr = NV * <D::F as Simd>::LANES;
    // SAFETY: every pointer formed below stays inside the extents documented above.
    unsafe {
        // Row tiles outer: a tile's rows of A (MR x k values) stay in L1 while the panels stream.
        let mut i = 0;
        while i < m {
            let rows = MR.min(m - i);
            for p in p0..p1 {
                let col0 = p * nr;
                let cols = nr.min(n - col0);
                let bp = packed.add(p * kp * nr * 2);
                let e = Epi {
                    bias: if epi.bias.is_null() {
                        epi.bias
                    } else {
                        epi.bias.add(col0)
                    },
                    residual: if epi.residual.is_null() {
                        epi.residual
                    } else {
                        epi.residual.add(i * epi.ldr + col0)
                    },
                    ..*epi
                };
                let cp = c.add(i * ldc + col0);
                tile::<D, NV>(rows, kp, a.add(i * lda), lda, bp, cp, ldc, cols, &e);
            }
            i += rows;
        }
    }
}

/// The bf16 product on `vdpbf16ps`: the kernel table's row for the format on AVX-512 tiers
/// with AVX512-BF16 (`MR` rows of `NV` vectors).
#[cfg(target_arch = "x86_64")]
pub(crate) mod b_avx512bf16 {
    use super::*;

    /// Register tile rows.
    pub(crate) const MR: usize = 8;
    const NV: usize = 3;
    /// Register tile columns (the bf16 panel width).
    pub(crate) const NR: usize = NV * 16;

    /// # Safety
    /// The tier's CPU features; `bgemm_panels`' contract.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,avx512bf16")]
    unsafe fn product(a: *const u8, packed: *const u8, c: *mut f32, args: &ProductArgs) {
        // SAFETY: forwarded contract; features enabled on this function.
        unsafe { bgemm_panels::<crate::simd::bf16::Avx512Bf16, MR, NV>(a, packed, c, args) }
    }

    /// This tier's bf16 product (input rows bf16, 2 bytes a value).
    pub(crate) const KERNEL: ProductKernel = ProductKernel::vector(product, MR, NR, 2, 2);

    /// The attention of a bf16 layer: the float tier's own (float32 products).
    pub(crate) const ATTENTION: Option<crate::arch::AttnFn> = None;
}

/// Thin shells of the widened bf16 products: the float32 product of a float tier, with its
/// register tile (`MR` rows of `NV` vectors), over bf16 panels widened as they are read.
macro_rules! wshells {
    ($module:ident, $simd:ty, $mr:literal, $nv:literal $(, #[$attr:meta])*) => {
        pub(crate) mod $module {
            use super::*;

            /// Register tile rows.
            pub(crate) const MR: usize = $mr;
            /// Register tile columns (the bf16 panel width).
            pub(crate) const NR: usize = $nv * <$simd as crate::simd::Simd>::LANES;

            /// # Safety
            /// The tier's CPU features; `gemm_panels`' contract over bf16 pairs.
            $(#[$attr])*
            unsafe fn product(a: *const u8, packed: *const u8, c: *mut f32, args: &ProductArgs) {
                // SAFETY: forwarded contract; features enabled on this function.
                unsafe { gemm_panels::<$simd, Bf16Pairs, $mr, $nv>(a, packed, c, args) }
            }

            /// This tier's bf16 product (input rows float32 rounded to bf16, 4 bytes a value):
            /// the kernel table's row for the format.
            pub(crate) const KERNEL: ProductKernel = ProductKernel::vector(product, MR, NR, 2, 4);

            /// The attention of a bf16 layer: the float tier's own (float32 products).
            pub(crate) const ATTENTION: Option<crate::arch::AttnFn> = None;
        }
    };
}

wshells!(b_portable, crate::simd::portable::Portable, 4, 1);
// AVX2: 5 rows, not the float32 6: the widened pairs take two more registers, and a sixth row
// spilled two accumulators to the stack (0.5x the rate, Zen 3).
#[cfg(target_arch = "x86_64")]
wshells!(b_avx2, crate::simd::avx2::Avx2, 5, 2, #[target_feature(enable = "avx2,fma")]);
#[cfg(target_arch = "x86_64")]
wshells!(
    b_avx512,
    crate::simd::avx512::Avx512,
    8,
    2,
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
);
