//! The one interface of a packed matrix product, whatever the weight format.
//!
//! Every format (float32, int8, bf16) and every tier implements the same entry point,
//! [`ProductFn`]: rows `0..m` and panels `p0..p1` of `C = epilogue(A · B)`, its operands and one
//! [`ProductArgs`]. A format's rows of `A` and its packed panels are bytes whose layout the
//! format's body knows (float32 values, quantized bytes, bf16 values); the planner in
//! `table/` only moves pointers by whole rows and panels. A tier's shell module exports its
//! product as a [`ProductKernel`] constant, the row of the kernel table for that format.

use super::gemm::Epi;

/// The int8 dequantization operands of a product's epilogue (Keras: `float(sum) * (1 / s_w) *
/// (1 / s_x)`), offset to row 0 of the call; null for the float formats, which do not read them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dequant {
    /// `128 * column sum` per column, padded to whole panels (for offset activations).
    pub comp: *const i32,
    /// `1 / s_w` per column, padded to whole panels.
    pub wscale: *const f32,
    /// `1 / s_x` per row of A (indexed like A's rows).
    pub xscale: *const f32,
    /// Store the int32 sums (C is `*mut i32`), no float epilogue.
    pub raw: bool,
}

impl Dequant {
    /// None: a float format.
    pub(crate) const NONE: Dequant = Dequant {
        comp: std::ptr::null(),
        wscale: std::ptr::null(),
        xscale: std::ptr::null(),
        raw: false,
    };
}

/// The shape and epilogue of one call of a packed product: rows `0..m` and panels `p0..p1` of
/// `C = epilogue(A · B)`. The operands themselves (`A`'s row 0, the packed panels, `C`'s row 0)
/// are the entry point's own arguments (see [`ProductFn`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProductArgs {
    /// Bytes from one row of A to the next.
    pub lda: usize,
    /// Rows of A and C.
    pub m: usize,
    /// Inner steps of a panel: `k` values (float32), groups of four (int8), pairs (bf16).
    pub steps: usize,
    /// Columns of C (the panels cover `ceil(n / NR) * NR`).
    pub n: usize,
    /// Values from one row of C to the next.
    pub ldc: usize,
    pub p0: usize,
    pub p1: usize,
    /// Bias, residual (offset to row 0), element-wise activation.
    pub epi: Epi,
    /// int8 only.
    pub deq: Dequant,
    /// float32 only: the cache blocks (chosen per CPU at the table).
    pub blocks: crate::blocks::Blocks,
    /// int8 on registers only: how far ahead (bytes) each tile fetches the weights it streams,
    /// 0 for none (chosen per CPU at the table: [`crate::blocks::int8_ahead`]).
    pub ahead: usize,
    /// int8 on registers only: the weight bytes one pass of the row tiles runs over (whole
    /// panels, at least one; chosen per CPU at the table: [`crate::blocks::int8_pass`]).
    pub pass: usize,
}

impl ProductArgs {
    /// The same product for rows `r0..r1` (the row-indexed epilogue operands offset to `r0`)
    /// over panels `p0..p1`.
    ///
    /// # Safety
    /// `r0 <= r1 <= m`, `p0 <= p1`.
    #[inline]
    pub(crate) unsafe fn part(&self, r0: usize, r1: usize, p0: usize, p1: usize) -> ProductArgs {
        // SAFETY: the caller keeps the rows within the operands' extents.
        unsafe {
            let mut args = *self;
            args.m = r1 - r0;
            (args.p0, args.p1) = (p0, p1);
            if !args.epi.residual.is_null() {
                args.epi.residual = args.epi.residual.add(r0 * args.epi.ldr);
            }
            if !args.deq.xscale.is_null() {
                args.deq.xscale = args.deq.xscale.add(r0);
            }
            args
        }
    }
}

/// A format's product on one tier: `(a, packed, c, args)`, with `a` row 0 of A in the format's
/// input type, `packed` panel 0 of the packed weights and `c` row 0 of C (`f32`, or `i32` for
/// raw int8 sums). The three operands are arguments, not fields of `args`: with them loaded from
/// memory, LLVM kept the float32 register tile's accumulators in memory (one store per FMA,
/// 2.2x slower on Zen 4).
///
/// # Safety
/// The tier's CPU features; the operands valid as its body documents, with `steps >= 1`; no
/// other thread writes the columns of panels `p0..p1` of these rows.
pub(crate) type ProductFn = unsafe fn(*const u8, *const u8, *mut f32, &ProductArgs);

/// One weight format's product on one tier: the entry point, its register tile (`mr` rows,
/// `nr` columns: the panel width its packing uses), how its panels are laid out, how wide a
/// value of its prepared input rows is, and the padding its operands need: each row of A and each panel's inner dimension padded to a
/// multiple of `k_align` values (zeros), the rows of A to a multiple of `rows_align` (readable
/// memory; their outputs are dropped).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProductKernel {
    pub run: ProductFn,
    pub mr: usize,
    pub nr: usize,
    pub layout: PanelLayout,
    pub k_align: usize,
    pub rows_align: usize,
    /// Bytes of one value of A as the product reads it: 4 (float32, and bf16 values kept as
    /// float32 for the products that widen their panels), 2 (bf16), 1 (int8).
    pub a_bytes: usize,
    /// A's prepared rows in tile order (`ops::quant::row_offset`; the AMX products): the rows
    /// of a part then start at a multiple of `mr`, or of `mr / 2` for at most `mr / 2` rows.
    pub a_tiled: bool,
}

impl ProductKernel {
    /// The same kernel over panels laid out as `layout`.
    pub(crate) const fn with_layout(self, layout: PanelLayout) -> Self {
        ProductKernel { layout, ..self }
    }

    /// A kernel of register tile `mr x nr` over panels of groups ([`PanelLayout::Groups`])
    /// whose operands are padded to `k_align` inner values, reading A's values as `a_bytes`
    /// bytes each, with no padding rows (the vector kernels).
    pub(crate) const fn vector(
        run: ProductFn,
        mr: usize,
        nr: usize,
        k_align: usize,
        a_bytes: usize,
    ) -> Self {
        ProductKernel {
            run,
            mr,
            nr,
            layout: PanelLayout::Groups,
            k_align,
            rows_align: 1,
            a_bytes,
            a_tiled: false,
        }
    }
}

/// How a panel of `nr` columns keeps the values of a packed matrix whose inner rows come in
/// groups of `g` (4 int8 values, or 2 bf16 values: one 32-bit lane; 1 for float32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PanelLayout {
    /// Group after group, each `nr` columns of `g` values (the vector kernels).
    Groups,
    /// Per 16 groups (one 64-byte tile row of `g` values per column), two tiles of 16 groups x
    /// 16 columns, columns 0..16 then 16..32, 1 KiB each (AMX; `nr` = 32).
    Tiles,
    /// As [`Groups`](Self::Groups) for groups of 4 int8 values, but within each block of 8
    /// columns of a group the first 16 bytes hold every column's values 0 and 1, the next 16 its
    /// values 2 and 3: each half sign-extends (`vpmovsxbw`) into 8 lanes of int16 pairs (the
    /// AVX2 `vpmaddwd` kernel; `nr` a multiple of 8).
    Pairs,
}

impl PanelLayout {
    /// Where inner row `r`, column `c < nr` of panel `p` lies, in values, with `steps` groups
    /// of `g` values per panel.
    pub(crate) fn offset(
        self,
        p: usize,
        r: usize,
        c: usize,
        nr: usize,
        steps: usize,
        g: usize,
    ) -> usize {
        let (s, b) = (r / g, r % g);
        match self {
            PanelLayout::Groups => ((p * steps + s) * nr + c) * g + b,
            PanelLayout::Pairs => {
                ((p * steps + s) * nr + c / 8 * 8) * g + b / 2 * 16 + c % 8 * 2 + b % 2
            }
            PanelLayout::Tiles => {
                (p * steps + s / 16 * 16) * nr * g
                    + (c / 16) * 16 * 16 * g
                    + (s % 16) * 16 * g
                    + (c % 16) * g
                    + b
            }
        }
    }
}

/// `$go!(R)` with `R` the literal equal to the runtime row count `$rows` (the last literal for
/// any larger count): a register tile monomorphised per row count.
macro_rules! by_rows {
    ($rows:expr, $go:ident, [$($r:literal),*], $last:literal) => {
        match $rows {
            $($r => $go!($r),)*
            _ => $go!($last),
        }
    };
}
pub(crate) use by_rows;
