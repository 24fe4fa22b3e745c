//! Products on AMX tiles (Intel Sapphire Rapids and later), one driver for two formats:
//!
//! * int8 ([`Int8Tiles`]): `tdpbssd` multiplies a tile of 16 rows x 64 signed bytes of A by a
//!   tile of 16 x 64 signed bytes of B (16 groups of 4 inner rows for 16 columns) into 16 x 16
//!   int32 sums, exactly; the epilogue dequantizes (Keras' int8 mode).
//! * bf16 ([`Bf16Tiles`]): `tdpbf16ps` multiplies a tile of 16 rows x 32 bf16 values of A by a
//!   tile of 16 pairs x 16 columns of B into 16 x 16 float32 sums (Keras' `mixed_bfloat16`:
//!   bf16 operands, float32 sums). Each product of two bf16 values is exact in float32; the
//!   instruction adds them pair by pair in order, rounding to nearest even, and treats bf16
//!   subnormal inputs (below 2^-126 in magnitude) as zero and flushes subnormal sums to zero.
//!
//! A block of 32 rows x 32 columns keeps four accumulator tiles (tmm0..3); each 64-byte step of
//! the inner dimension loads two A tiles (tmm4, 5) and two B tiles (tmm6, 7) and issues four
//! tile products. A block of at most 16 rows (a short query) uses one A tile and two products
//! per step: the rows past it are neither loaded nor multiplied. The sums are stored to a
//! 4 KiB stack block and finished by the format's float epilogue (bias, activation, residual)
//! while the tiles compute the next block.
//!
//! Layouts: A rows are the prepared rows (signed bytes, or bf16 values), their stride a multiple
//! of 64 bytes, the buffer padded to a multiple of 32 rows (padding rows are read, their sums
//! dropped); row after row, or (`TILED`, the products' prepared rows) in tile order: a step's
//! 32 rows x 64 bytes together, each A tile one contiguous KiB (`ops::quant::row_offset`). B is packed in panels of 32 columns, 2 KiB per step: two 16 x 64-byte tiles
//! (columns 0..16, then 16..32; `PanelLayout::Tiles`), for int8 and bf16 alike. (For bf16 a C
//! model of this loop on the Xeon with AMX ran 7 % faster than with the vector kernels' pair
//! layout, each tile loaded at a 128-byte stride; in the whole layer the two were within the
//! noise of that host.)
//!
//! The tile instructions are emitted with inline assembly (the AMX intrinsics are not stable).
//! Linux hands out the tile state only after `arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`, which
//! the tier's detection requests ([`crate::isa`]); a tier that is not available is never run.

use super::act::apply_tile;
use super::gemm::{load_n, store_n};
use super::product::ProductArgs;
use super::qgemm::{QEpi, finish};
use super::quant::row_offset;
use crate::activation::Activation;
use crate::simd::Simd;
use std::arch::asm;
use std::arch::x86_64::{_MM_HINT_ET0, _mm_prefetch};

/// Rows and columns of a block (two tiles each way): the rows of a block in tile order.
pub(crate) const BLOCK: usize = super::quant::TILE_BLOCK_ROWS;
/// Inner bytes per step (one tile row): a chunk of a row in tile order.
pub(crate) const STEP: usize = super::quant::CHUNK;
/// Rows of one tile.
const TILE_ROWS: usize = 16;

/// The tile configuration: palette 1, eight tiles of 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

static CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64;
        c[48 + t] = 16;
        t += 1;
    }
    TileConfig(c)
};

/// Bytes from a step's first B tile to its second.
const B1: usize = 1024;
/// Bytes from one row of a B tile to the next.
const B_STRIDE: usize = 64;

/// A weight format on tiles: its tile products and the float epilogue of one row of its sums.
pub(crate) trait TileFormat {
    /// `tmm0..3 += [tmm4 = A rows a0.., tmm5 = A rows a1..] x [tmm6, tmm7 = the B tiles at b]`.
    ///
    /// # Safety
    /// Tiles configured; 16 rows of 64 bytes readable at `a0` and `a1` (stride `lda`), and the
    /// step's two 1 KiB B tiles at `b`.
    unsafe fn step4(a0: *const u8, a1: *const u8, lda: usize, b: *const u8);

    /// `tmm0, tmm1 += tmm4 = A rows a0.. x [tmm6, tmm7 = the B tiles at b]`.
    ///
    /// # Safety
    /// As [`step4`](TileFormat::step4) without `a1`.
    unsafe fn step2(a0: *const u8, lda: usize, b: *const u8);

    /// Row `i` of a block: its `cols` sums at `src` (the format's 32-bit values) finished into
    /// `dst` with `e` (offset to the block's first row and column); the activation is applied
    /// afterwards over the whole block.
    ///
    /// # Safety
    /// `src` and `dst` valid for `cols` values; `e`'s operands for row `i`, columns `0..cols`;
    /// S's features enabled.
    unsafe fn finish_row<S: Simd>(src: *const i32, e: &QEpi, i: usize, cols: usize, dst: *mut f32);
}

/// A format's `step4` and `step2` ([`TileFormat`]) with its tile product instruction `$dot`.
macro_rules! tile_steps {
    ($dot:literal) => {
        #[inline(always)]
        unsafe fn step4(a0: *const u8, a1: *const u8, lda: usize, b: *const u8) {
            // SAFETY: the contract: tiles configured, every tile load inside the operands.
            unsafe {
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tileloadd tmm7, [{b1} + {sb}*1]",
                    concat!($dot, " tmm0, tmm4, tmm6"),
                    concat!($dot, " tmm1, tmm4, tmm7"),
                    concat!($dot, " tmm2, tmm5, tmm6"),
                    concat!($dot, " tmm3, tmm5, tmm7"),
                    a0 = in(reg) a0,
                    a1 = in(reg) a1,
                    b0 = in(reg) b,
                    b1 = in(reg) b.add(B1),
                    sa = in(reg) lda,
                    sb = in(reg) B_STRIDE,
                    options(nostack, readonly)
                );
            }
        }

        #[inline(always)]
        unsafe fn step2(a0: *const u8, lda: usize, b: *const u8) {
            // SAFETY: as step4, one A tile.
            unsafe {
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tileloadd tmm7, [{b1} + {sb}*1]",
                    concat!($dot, " tmm0, tmm4, tmm6"),
                    concat!($dot, " tmm1, tmm4, tmm7"),
                    a0 = in(reg) a0,
                    b0 = in(reg) b,
                    b1 = in(reg) b.add(B1),
                    sa = in(reg) lda,
                    sb = in(reg) B_STRIDE,
                    options(nostack, readonly)
                );
            }
        }
    };
}

/// Keras' int8 products: `tdpbssd`, dequantized in the epilogue (or the raw int32 sums).
pub(crate) struct Int8Tiles;

impl TileFormat for Int8Tiles {
    tile_steps!("tdpbssd");

    #[inline(always)]
    unsafe fn finish_row<S: Simd>(src: *const i32, e: &QEpi, i: usize, cols: usize, dst: *mut f32) {
        // SAFETY: the contract: row i of the operands, columns below cols.
        unsafe {
            let xs = S::splat(*e.xscale.add(i));
            let mut cc = 0;
            while cc < cols {
                let nn = (cols - cc).min(S::LANES);
                if e.raw {
                    std::ptr::copy_nonoverlapping(src.add(cc), (dst as *mut i32).add(cc), nn);
                } else {
                    let y = S::load_i32_f32(src.add(cc), nn);
                    finish::<S>(y, xs, e, i, cc, nn, dst.add(cc));
                }
                cc += nn;
            }
        }
    }
}

/// Keras' `mixed_bfloat16` products: `tdpbf16ps`, float32 sums, the float epilogue.
pub(crate) struct Bf16Tiles;

impl TileFormat for Bf16Tiles {
    tile_steps!("tdpbf16ps");

    #[inline(always)]
    unsafe fn finish_row<S: Simd>(src: *const i32, e: &QEpi, i: usize, cols: usize, dst: *mut f32) {
        let src = src as *const f32;
        // SAFETY: the contract: row i of the operands, columns below cols.
        unsafe {
            let mut cc = 0;
            while cc < cols {
                let nn = (cols - cc).min(S::LANES);
                let mut y = load_n::<S>(src.add(cc), nn);
                if !e.bias.is_null() {
                    y = S::add(y, load_n::<S>(e.bias.add(cc), nn));
                }
                if e.act == Activation::Linear && !e.residual.is_null() {
                    y = S::add(y, load_n::<S>(e.residual.add(i * e.ldr + cc), nn));
                }
                store_n::<S>(dst.add(cc), nn, y);
                cc += nn;
            }
        }
    }
}

/// Rows `0..m` and panels `p0..p1` of a product on tiles.
///
/// # Safety
/// * The CPU has AMX-TILE and the format's AMX instructions, and the OS granted the tile state;
///   S's features enabled.
/// * `a`: `ceil(m / 32) * 32` readable rows of `lda` bytes (`lda` a multiple of 64, at least
///   `4 * steps`), row after row, or in tile order with `TILED` (`a` then at a block's start, or at
///   its second half for at most 16 rows); `packed`: `ceil(n / 32)` panels of `steps * 128` bytes (`steps`, the groups
///   of 4 bytes or pairs of bf16 values, a multiple of 16); `c`: `m` rows of `n` values (f32,
///   or i32 with int8's `raw`) at stride `ldc`; the epilogue operands as for the format's vector
///   kernels (int8's comp unused: no offset).
/// * No other thread writes columns `32 * p0 .. min(32 * p1, n)` of these rows (the only ones
///   written).
#[inline(always)]
pub(crate) unsafe fn gemm_tiles<F: TileFormat, S: Simd, const TILED: bool>(
    a: *const u8,
    packed: *const u8,
    c: *mut f32,
    args: &ProductArgs,
) {
    let ProductArgs {
        lda,
        m,
        steps: kg,
        n,
        ldc,
        p0,
        p1,
        ..
    } = *args;
    let epi = &QEpi::of(args);
    // A step's two A tiles, from A's layout: bytes from the first tile to the second and from
    // one step (64-byte chunk) to the next, and from one tile row to the next.
    let (a_second, a_step) = row_offset(TILE_ROWS, lda, TILED);
    let a_stride = row_offset(1, lda, TILED).0;
    let steps = kg / 16;
    // Two blocks of sums: the epilogue of one block runs while the tiles compute the next.
    let mut sums = [[0i32; BLOCK * BLOCK]; 2];
    let mut pending: Option<Pending> = None;
    let mut which = 0;
    // SAFETY: the tile instructions run on a CPU that has them (contract); every tile load
    // reads 16 rows of 64 bytes inside the buffers described above (a block of at most 16 rows
    // loads only its first A tile), every store writes a 4 KiB block on the stack; the epilogue
    // stays within C's rows and columns.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
        // Chunks of rows outer, panels next: a chunk's rows of A are read from memory once and
        // stay in L2 while every panel passes, and a panel's weights (steps * 2 KiB) stay in
        // L1/L2 while every row block of the chunk passes. (Without chunks, A of 512 rows of
        // 3,072 bf16 values, 3 MiB, came from L3 for each panel: 675 GFLOP/s against 937 in
        // chunks, one thread, alternated runs.)
        let chunk = chunk_rows(lda);
        for c0 in (0..m).step_by(chunk) {
            for p in p0..p1 {
                let col0 = p * BLOCK;
                let cols = BLOCK.min(n - col0);
                let mut r0 = c0;
                while r0 < m.min(c0 + chunk) {
                    let rows = BLOCK.min(m - r0);
                    let a0 = a.add(r0 * lda);
                    let a1 = a0.add(a_second);
                    let mut b = packed.add(p * kg * 4 * BLOCK);
                    // The block's output rows, fetched for writing while the tiles compute: its
                    // epilogue (one block later) then stores into cache instead of waiting on memory
                    // (measured: 0.8 -> 1.4 TOP/s on a 26 MB output; fetching further ahead did
                    // not help).
                    for i in 0..rows {
                        let row = c.add((r0 + i) * ldc + col0) as *const i8;
                        _mm_prefetch::<_MM_HINT_ET0>(row);
                        if cols > 16 {
                            _mm_prefetch::<_MM_HINT_ET0>(row.wrapping_add(64));
                        }
                    }
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack, nomem)
                    );
                    let prev = pending.take();
                    let two = rows > TILE_ROWS;
                    for t in 0..steps {
                        // The previous block's epilogue (vector work), a share of its rows after
                        // each step, overlaps this block's tile work.
                        if let Some(prev) = &prev {
                            let (i0, i1) = (prev.rows * t / steps, prev.rows * (t + 1) / steps);
                            let sp = sums[prev.buf].as_ptr();
                            block_epilogue::<F, S>(prev, sp, c, ldc, epi, i0, i1);
                        }
                        let ka = t * a_step;
                        if two {
                            F::step4(a0.add(ka), a1.add(ka), a_stride, b);
                        } else {
                            F::step2(a0.add(ka), a_stride, b);
                        }
                        b = b.add(2 * TILE_ROWS * STEP);
                    }
                    let sp = sums[which].as_mut_ptr();
                    asm!(
                        "tilestored [{s} + {ld}*1], tmm0",
                        "tilestored [{s1} + {ld}*1], tmm1",
                        s = in(reg) sp,
                        s1 = in(reg) sp.add(TILE_ROWS),
                        ld = in(reg) 4 * BLOCK,
                        options(nostack)
                    );
                    if two {
                        asm!(
                            "tilestored [{s2} + {ld}*1], tmm2",
                            "tilestored [{s3} + {ld}*1], tmm3",
                            s2 = in(reg) sp.add(TILE_ROWS * BLOCK),
                            s3 = in(reg) sp.add(TILE_ROWS * BLOCK + TILE_ROWS),
                            ld = in(reg) 4 * BLOCK,
                            options(nostack)
                        );
                    }
                    pending = Some(Pending {
                        buf: which,
                        r0,
                        col0,
                        rows,
                        cols,
                    });
                    which ^= 1;
                    r0 += BLOCK;
                }
            }
        }
        if let Some(prev) = pending {
            let sp = sums[prev.buf].as_ptr();
            block_epilogue::<F, S>(&prev, sp, c, ldc, epi, 0, prev.rows);
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// Rows of A (`lda` bytes each) per chunk: whole blocks in the L2 the plans assume.
fn chunk_rows(lda: usize) -> usize {
    (crate::table::L2_BYTES / lda.max(1) / BLOCK).max(1) * BLOCK
}

/// A block whose sums wait in `sums[buf]` for their epilogue.
struct Pending {
    buf: usize,
    r0: usize,
    col0: usize,
    rows: usize,
    cols: usize,
}

/// The epilogue of rows `i0..i1` of one block (or their raw sums), from the block of sums at
/// `sp` (`BLOCK x BLOCK` 32-bit values, row-major), then the activation over those rows.
///
/// # Safety
/// As [`gemm_tiles`]' operands; the block lies within C. S's features enabled.
#[inline(always)]
unsafe fn block_epilogue<F: TileFormat, S: Simd>(
    blk: &Pending,
    sp: *const i32,
    c: *mut f32,
    ldc: usize,
    epi: &QEpi,
    i0: usize,
    i1: usize,
) {
    let Pending {
        r0,
        col0,
        rows,
        cols,
        ..
    } = *blk;
    // SAFETY: the contract above: rows r0..r0+rows and columns col0..col0+cols of C and of the
    // epilogue operands are in bounds (the int8 scales exist only for int8, which reads them).
    unsafe {
        let at = |p: *const f32, off: usize| if p.is_null() { p } else { p.add(off) };
        let e = QEpi {
            bias: at(epi.bias, col0),
            residual: at(epi.residual, r0 * epi.ldr + col0),
            wscale: at(epi.wscale, col0),
            xscale: at(epi.xscale, r0),
            ..*epi
        };
        let cp = c.add(r0 * ldc + col0);
        debug_assert!(i1 <= rows);
        for i in i0..i1 {
            F::finish_row::<S>(sp.add(i * BLOCK), &e, i, cols, cp.add(i * ldc));
        }
        if !e.raw && e.act != Activation::Linear && i1 > i0 {
            let res = at(e.residual, i0 * e.ldr);
            apply_tile::<S>(cp.add(i0 * ldc), ldc, i1 - i0, cols, e.act, res, e.ldr);
        }
    }
}
