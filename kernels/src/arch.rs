//! Thin `#[target_feature]` shells: one per (kernel, tier), each instantiating the shared generic
//! body of `ops/` with the tier's [`Simd`](crate::simd::Simd) vocabulary and register tile.
//!
//! The shells are `unsafe fn`: calling one requires the tier's CPU features, which the kernel
//! table guarantees (a table is only handed out for an available tier).

use crate::activation::Activation;
use crate::ops::act::{apply_slice, row};
#[cfg(target_arch = "x86_64")]
use crate::ops::amx::gemm_tiles;
use crate::ops::attention::{AttnArgs, attention_head};
use crate::ops::gemm::{F32Values, gemm_panels};
use crate::ops::norm::layer_norm_row;
use crate::ops::product::{ProductArgs, ProductKernel};
use crate::ops::qgemm::qgemm_panels;
use crate::ops::quant::prepare_row;

/// `layer_norm(a, r, rows, n, gamma, beta, eps, out, sum_out, quant)` over `rows` rows.
pub(crate) type NormFn = unsafe fn(
    *const f32,
    *const f32,
    usize,
    usize,
    *const f32,
    *const f32,
    f32,
    *mut f32,
    *mut f32,
    &QuantOut,
);
/// `quantize(x, rows, n, quant)`: Keras' per-row int8 quantization of `rows` rows (or their
/// rounding to bf16, as `quant` says).
pub(crate) type QuantFn = unsafe fn(*const f32, usize, usize, &QuantOut);

/// Where rows are quantized to: `bytes` (the buffer: the call's row `i` is row `row0 + i`,
/// `stride` bytes per row, laid out as `ops::quant::row_offset` says), `scale` (Keras' `s` per
/// row) and `inv_scale` (`1 / s`), offset to the first row of the call;
/// `bytes` null: none. With `bf16`, the rows are rounded to bfloat16 instead (`stride / 2`
/// values per row, or `stride / 4` kept as float32 with `wide`; no scales).
#[derive(Clone, Copy, Debug)]
pub(crate) struct QuantOut {
    pub bytes: *mut u8,
    pub stride: usize,
    pub scale: *mut f32,
    pub inv_scale: *mut f32,
    /// Store `q + 128` (the VNNI tiers).
    pub offset: bool,
    /// Round to bfloat16 instead of quantizing.
    pub bf16: bool,
    /// With `bf16`: keep each rounded value as a float32.
    pub wide: bool,
    /// The rows in tile order (`ops::quant::row_offset`).
    pub tiled: bool,
    /// The call's first row in the buffer (`bytes` is the buffer's start).
    pub row0: usize,
}

impl QuantOut {
    pub(crate) const NONE: QuantOut = QuantOut {
        bytes: std::ptr::null_mut(),
        stride: 0,
        scale: std::ptr::null_mut(),
        inv_scale: std::ptr::null_mut(),
        offset: false,
        bf16: false,
        wide: false,
        tiled: false,
        row0: 0,
    };

    /// Record row `i`'s scale `s` (and `1 / s`).
    ///
    /// # Safety
    /// Row `i` is within the buffers.
    #[inline(always)]
    pub(crate) unsafe fn put(&self, i: usize, s: f32) {
        // SAFETY: the caller keeps i within the rows of the buffers.
        unsafe {
            *self.scale.add(i) = s;
            *self.inv_scale.add(i) = 1.0 / s;
        }
    }

    /// The same, `rows` rows further.
    ///
    /// # Safety
    /// The result stays within the buffers (or `bytes` is null).
    pub(crate) unsafe fn skip(&self, rows: usize) -> QuantOut {
        if self.bytes.is_null() {
            return *self;
        }
        // SAFETY: the caller keeps the offset inside the buffers.
        unsafe {
            QuantOut {
                row0: self.row0 + rows,
                scale: if self.bf16 {
                    self.scale
                } else {
                    self.scale.add(rows)
                },
                inv_scale: if self.bf16 {
                    self.inv_scale
                } else {
                    self.inv_scale.add(rows)
                },
                ..*self
            }
        }
    }
}
/// `attention(args, bh0, bh1, scratch)` for the (batch, head) pairs `bh0..bh1`.
pub(crate) type AttnFn = unsafe fn(&AttnArgs<'_>, usize, usize, &mut [f32]);
/// `activation(x, len, act)` in place, element-wise.
pub(crate) type ActFn = unsafe fn(*mut f32, usize, Activation);
/// `activation_rows(x, rows, n, act, residual)` in place: rows of a row-wise activation, then
/// `+ residual` (null: none).
pub(crate) type RowActFn = unsafe fn(*mut f32, usize, usize, Activation, *const f32);

macro_rules! shells {
    ($module:ident, $simd:ty, $mr:literal, $nv:literal, [$($tall:literal),*] $(, #[$attr:meta])*) => {
        pub(crate) mod $module {
            use super::*;

            /// Register tile rows.
            pub(crate) const MR: usize = $mr;
            /// Register tile columns.
            pub(crate) const NR: usize = $nv * <$simd as crate::simd::Simd>::LANES;
            /// Register tile columns, in vectors.
            #[allow(dead_code)]
            pub(crate) const NV: usize = $nv;

            /// The float32 product with a register tile of `R` rows.
            ///
            /// # Safety
            /// The tier's CPU features; `gemm_panels`' contract.
            $(#[$attr])*
            unsafe fn product<const R: usize>(
                a: *const u8,
                packed: *const u8,
                c: *mut f32,
                args: &ProductArgs,
            ) {
                // SAFETY: forwarded contract; features enabled on this function.
                unsafe { gemm_panels::<$simd, F32Values, R, $nv>(a, packed, c, args) }
            }

            /// This tier's float32 product with its first register tile (`MR` rows; the
            /// attention's tile too): the kernel table's row for the format.
            pub(crate) const KERNEL: ProductKernel = ProductKernel::vector(product::<$mr>, MR, NR, 1, 4);

            /// Every register tile of this tier's float32 product, `KERNEL` first; the others
            /// taller (the same panels: `NR` columns).
            pub(crate) const TILES: &[ProductKernel] = &[
                KERNEL,
                $(ProductKernel::vector(product::<$tall>, $tall, NR, 1, 4)),*
            ];

            /// # Safety
            /// The tier's CPU features; `layer_norm_row`'s contract for each of `rows` rows.
            $(#[$attr])*
            pub(crate) unsafe fn layer_norm(
                a: *const f32,
                r: *const f32,
                rows: usize,
                n: usize,
                gamma: *const f32,
                beta: *const f32,
                eps: f32,
                out: *mut f32,
                sum_out: *mut f32,
                q: &QuantOut,
            ) {
                // Rows are fetched two ahead: the residual in particular (the layer's input, or
                // the attention block's output) was written long before and is rarely in cache.
                const AHEAD: usize = 2;
                for i in 0..rows {
                    let off = i * n;
                    // SAFETY: row i of every operand lies within the caller's [rows, n] buffers
                    // (and the quantized rows' buffers, if any); the row fetched ahead is row
                    // i + AHEAD < rows of the same buffers.
                    unsafe {
                        if i + AHEAD < rows {
                            let next = off + AHEAD * n;
                            let mut j = 0;
                            while j < n {
                                <$simd as crate::simd::Simd>::prefetch(a.add(next + j));
                                if !r.is_null() {
                                    <$simd as crate::simd::Simd>::prefetch(r.add(next + j));
                                }
                                j += 16;
                            }
                        }
                        layer_norm_row::<$simd>(
                            a.add(off),
                            if r.is_null() { r } else { r.add(off) },
                            n,
                            gamma,
                            beta,
                            eps,
                            out.add(off),
                            if sum_out.is_null() { sum_out } else { sum_out.add(off) },
                        );
                        // The normalised row, still in L1, prepared for the next product.
                        if !q.bytes.is_null() {
                            prepare_row::<$simd>(out.add(off), n, q, i);
                        }
                    }
                }
            }

            /// # Safety
            /// The tier's CPU features; `x` valid for `rows * n` values; `q` for `rows` rows.
            $(#[$attr])*
            pub(crate) unsafe fn quantize(x: *const f32, rows: usize, n: usize, q: &QuantOut) {
                for i in 0..rows {
                    // SAFETY: row i of x and of the quantized rows is in bounds.
                    unsafe { prepare_row::<$simd>(x.add(i * n), n, q, i) };
                }
            }

            /// # Safety
            /// The tier's CPU features; `attention_head`'s contract.
            $(#[$attr])*
            pub(crate) unsafe fn attention(args: &AttnArgs<'_>, seq: usize, head: usize, scratch: &mut [f32]) {
                // SAFETY: forwarded contract; features enabled on this function.
                unsafe { attention_head::<$simd, $mr, $nv>(args, seq, head, scratch) }
            }

            /// # Safety
            /// The tier's CPU features; `x` valid for `len` values.
            $(#[$attr])*
            pub(crate) unsafe fn activation(x: *mut f32, len: usize, act: Activation) {
                // SAFETY: forwarded contract; features enabled on this function.
                unsafe { apply_slice::<$simd>(x, len, act) }
            }

            /// # Safety
            /// The tier's CPU features; `x` valid for `rows * n` values, `residual` likewise or
            /// null; `n >= 1`.
            $(#[$attr])*
            pub(crate) unsafe fn activation_rows(
                x: *mut f32,
                rows: usize,
                n: usize,
                act: Activation,
                residual: *const f32,
            ) {
                for i in 0..rows {
                    // SAFETY: row i of both [rows, n] buffers is in bounds.
                    unsafe {
                        let r = if residual.is_null() { residual } else { residual.add(i * n) };
                        row::<$simd>(x.add(i * n), n, act, r)
                    }
                }
            }
        }
    };
}

// Each tier's float32 register tiles: `MR` rows of `NV` vectors, and taller ones that can be
// forced (`TRANSFORMER_ENCODER_FP32_TILE`): AVX-512 has 32 registers, room for 12 x 2 accumulators.
shells!(portable, crate::simd::portable::Portable, 4, 1, [8]);
#[cfg(target_arch = "x86_64")]
shells!(avx2, crate::simd::avx2::Avx2, 6, 2, [], #[target_feature(enable = "avx2,fma")]);
#[cfg(target_arch = "x86_64")]
shells!(
    avx512,
    crate::simd::avx512::Avx512,
    8,
    2,
    [12],
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
);

/// Thin shells of the int8 products: one per dot-product flavour, each instantiating
/// `qgemm_panels` with its register tile (`MR` rows of `NV` vectors).
macro_rules! qshells {
    ($module:ident, $dot:ty, $mr:literal, $nv:literal $(, #[$attr:meta])*) => {
        pub(crate) mod $module {
            use super::*;

            /// Register tile rows.
            pub(crate) const MR: usize = $mr;
            /// Register tile columns (the int8 panel width).
            pub(crate) const NR: usize =
                $nv * <<$dot as crate::simd::dot::Dot>::F as crate::simd::Simd>::LANES;
            /// Activations stored as `q + 128`.
            pub(crate) const OFFSET: bool = <$dot as crate::simd::dot::Dot>::OFFSET;

            /// # Safety
            /// The tier's CPU features; `qgemm_panels`' contract.
            $(#[$attr])*
            unsafe fn product(a: *const u8, packed: *const u8, c: *mut f32, args: &ProductArgs) {
                // SAFETY: forwarded contract; features enabled on this function.
                unsafe { qgemm_panels::<$dot, $mr, $nv>(a, packed, c, args) }
            }

            /// This tier's int8 product: the kernel table's row for the format (groups of 4).
            pub(crate) const KERNEL: ProductKernel = ProductKernel::vector(product, MR, NR, 4, 1)
                .with_layout(<$dot as crate::simd::dot::Dot>::LAYOUT);
        }
    };
}

qshells!(q_portable, crate::simd::dot::PortableDot, 4, 1);
#[cfg(target_arch = "x86_64")]
// `vpmaddwd` on int16 pairs (exact with no sign step), 6 rows x 2 vectors: 12 sums, and a
// group taken in two parts (one pair broadcast and two weight vectors live at once: 15
// registers). Before 2026-12-07 (second session) the exact `vpmaddubsw` form with a sign step
// (6 x 16 until that morning: 18 registers, two sums spilled; then 4 x 16); then 4 x 16 on
// pairs (14 registers). Zen 3, `latency --precision int8`, builds alternated: 4 x 16 pairs
// against the sign step, one thread, BERT-base seq 128 0.91-0.94x the time, the 6-layer query
// 0.94-0.97x; 6 x 16 against 4 x 16 (2026-12-07, fourth session, 3-4 rounds): BERT-base seq 128
// one thread 0.97-0.98x, MiniLM seq 128 two threads 0.96-0.97x, the query 0.98-1.00x.
qshells!(q_avx2, crate::simd::dot::Avx2Madd16, 6, 2, #[target_feature(enable = "avx2,fma")]);
#[cfg(target_arch = "x86_64")]
qshells!(
    q_avx2vnni,
    crate::simd::dot::Avx2Vnni,
    6,
    2,
    #[target_feature(enable = "avx2,fma,avxvnni")]
);
#[cfg(target_arch = "x86_64")]
qshells!(
    q_avx512,
    crate::simd::dot::Avx512Bw,
    6,
    2,
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
);
#[cfg(target_arch = "x86_64")]
qshells!(
    q_avx512vnni,
    crate::simd::dot::Avx512Vnni,
    8,
    3,
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,avx512vnni")]
);

/// The products on AMX tiles (with the AVX-512 tier's float epilogue): int8 (`tdpbssd`) and
/// bf16 (`tdpbf16ps`), one shell each over the shared tile driver.
#[cfg(target_arch = "x86_64")]
macro_rules! amx_shells {
    ($module:ident, $format:ty, $k_align:expr, $a_bytes:expr, $what:literal $(, $extra:item)*) => {
        pub(crate) mod $module {
            use super::*;
            $($extra)*

            /// Rows of a block.
            pub(crate) const MR: usize = crate::ops::amx::BLOCK;
            /// Columns of a panel.
            pub(crate) const NR: usize = crate::ops::amx::BLOCK;

            /// # Safety
            /// The tier's CPU features and the OS' tile grant; `gemm_tiles`' contract.
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
            unsafe fn product(a: *const u8, packed: *const u8, c: *mut f32, args: &ProductArgs) {
                // SAFETY: forwarded contract; features enabled on this function.
                unsafe { gemm_tiles::<$format, crate::simd::avx512::Avx512, true>(a, packed, c, args) }
            }

            #[doc = concat!("The AMX ", $what, " product: the kernel table's row for the format ")]
            /// (rows padded to 64 bytes, their count to whole blocks, in tile order).
            pub(crate) const KERNEL: ProductKernel = ProductKernel {
                run: product,
                mr: MR,
                nr: NR,
                layout: crate::ops::product::PanelLayout::Tiles,
                k_align: $k_align,
                rows_align: crate::ops::amx::BLOCK,
                a_bytes: $a_bytes,
                a_tiled: true,
            };
        }
    };
}

#[cfg(target_arch = "x86_64")]
amx_shells!(
    q_amx,
    crate::ops::amx::Int8Tiles,
    crate::ops::amx::STEP,
    1,
    "int8",
    /// Activations stored as `q` (`tdpbssd` multiplies signed bytes).
    pub(crate) const OFFSET: bool = false;
);
#[cfg(target_arch = "x86_64")]
amx_shells!(
    b_amx,
    crate::ops::amx::Bf16Tiles,
    crate::ops::amx::STEP / 2,
    2,
    "bf16",
    /// # Safety
    /// The tier's CPU features and the OS' tile grant; `attention_head_tiles`' contract.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    unsafe fn attention(args: &AttnArgs<'_>, seq: usize, head: usize, scratch: &mut [f32]) {
        use crate::ops::tile_attention::attention_head_tiles;
        // SAFETY: forwarded contract; features enabled on this function; the float32
        // fallback is the AVX-512 tier's own register tile.
        unsafe { attention_head_tiles::<{ avx512::MR }, { avx512::NV }>(args, seq, head, scratch) }
    },
    /// The attention of a bf16 layer: its two products on bf16 tiles.
    pub(crate) const ATTENTION: Option<AttnFn> = Some(attention);
);
