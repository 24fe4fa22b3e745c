//! int8 products on AMX tiles (Intel Sapphire Rapids and later): `tdpbssd` multiplies a tile of
//! 16 rows x 64 signed bytes of A by a tile of 16 x 64 signed bytes of B (16 groups of 4 inner
//! rows for 16 columns, the VNNI layout) into 16 x 16 int32 sums, exactly.
//!
//! A block of 32 rows x 32 columns keeps four accumulator tiles (tmm0..3); each 64-wide step of
//! `k` loads two A tiles (tmm4, 5) and two B tiles (tmm6, 7) and issues four `tdpbssd`. The sums
//! are stored to a 4 KiB stack block and finished by the float epilogue of the other int8
//! kernels (dequantization, bias, activation, residual).
//!
//! Layouts: A rows are the quantized rows (signed bytes, no offset), their stride a multiple of
//! 64, the buffer padded to a multiple of 32 rows (padding rows are read, their sums dropped).
//! B is packed in panels of 32 columns: for each 64-wide step of `k`, the 16 x 64-byte tile of
//! columns 0..16, then that of columns 16..32.
//!
//! The tile instructions are emitted with inline assembly (the AMX intrinsics are not stable).
//! Linux hands out the tile state only after `arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`, which
//! the tier's detection requests ([`crate::isa`]); a tier that is not available is never run.

use super::act::apply_tile;
use super::product::ProductArgs;
use super::qgemm::{QEpi, finish};
use crate::activation::Activation;
use crate::simd::Simd;
use std::arch::asm;
use std::arch::x86_64::{_MM_HINT_ET0, _mm_prefetch};

/// Rows and columns of a block (two tiles each way).
pub(crate) const BLOCK: usize = 32;
/// Inner bytes per step (one tile row).
pub(crate) const STEP: usize = 64;

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

/// Rows `0..m` and panels `p0..p1` of the int8 product on tiles.
///
/// # Safety
/// * The CPU has AMX-TILE and AMX-INT8 and the OS granted the tile state; S's features enabled.
/// * `a`: `ceil(m / 32) * 32` readable rows of `lda` bytes (`lda` a multiple of 64, at least
///   `4 * kg`, `kg = steps`); `packed`: `ceil(n / 32)` panels of `kg * 128` bytes (`kg` a multiple of 16);
///   `c`: `m` rows of `n` values (f32, or i32 with `epi.raw`) at stride `ldc`; the epilogue
///   operands as for `qgemm_panels` (comp unused: no offset).
/// * No other thread writes the columns of panels `p0..p1` of these rows.
#[inline(always)]
pub(crate) unsafe fn qgemm_amx<S: Simd>(
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
    let (packed, epi) = (packed as *const i8, &QEpi::of(args));
    let steps = kg / 16;
    // Two blocks of sums: the epilogue of one block runs while the tiles compute the next.
    let mut sums = [[0i32; BLOCK * BLOCK]; 2];
    let mut pending: Option<Pending> = None;
    let mut which = 0;
    // SAFETY: the tile instructions run on a CPU that has them (contract); every tile load
    // reads 16 rows of 64 bytes inside the buffers described above, every store writes a
    // 4 KiB block on the stack; the epilogue stays within C's rows and columns.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
        // Panels outer: a panel's weights (kg * 128 bytes) are read from memory once and stay in
        // L1/L2 while every row block passes; the rows of A stay in L2 across the panels.
        for p in p0..p1 {
            let col0 = p * BLOCK;
            let cols = BLOCK.min(n - col0);
            let mut r0 = 0;
            while r0 < m {
                let rows = BLOCK.min(m - r0);
                let a0 = a.add(r0 * lda);
                let a1 = a0.add(16 * lda);
                let mut b = packed.add(p * kg * 4 * BLOCK);
                // The block's output rows, fetched for writing while the tiles compute: its
                // epilogue (one block later) then stores into cache instead of waiting on memory
                // (measured: 0.8 -> 1.4 TOP/s on a 26 MB output; fetching further ahead did
                // not help).
                for i in 0..rows {
                    let row = c.add((r0 + i) * ldc + col0) as *const i8;
                    _mm_prefetch::<_MM_HINT_ET0>(row);
                    _mm_prefetch::<_MM_HINT_ET0>(row.wrapping_add(64));
                }
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
                let prev = pending.take();
                for t in 0..steps {
                    // The previous block's epilogue (vector work), a share of its rows after
                    // each step, overlaps this block's tile work.
                    if let Some(prev) = &prev {
                        let (i0, i1) = (prev.rows * t / steps, prev.rows * (t + 1) / steps);
                        let sp = sums[prev.buf].as_ptr();
                        block_epilogue::<S>(prev, sp, c, ldc, epi, i0, i1);
                    }
                    let ka = t * STEP;
                    asm!(
                        "tileloadd tmm4, [{a0} + {sa}*1]",
                        "tileloadd tmm5, [{a1} + {sa}*1]",
                        "tileloadd tmm6, [{b0} + {sb}*1]",
                        "tileloadd tmm7, [{b1} + {sb}*1]",
                        "tdpbssd tmm0, tmm4, tmm6",
                        "tdpbssd tmm1, tmm4, tmm7",
                        "tdpbssd tmm2, tmm5, tmm6",
                        "tdpbssd tmm3, tmm5, tmm7",
                        a0 = in(reg) a0.add(ka),
                        a1 = in(reg) a1.add(ka),
                        b0 = in(reg) b,
                        b1 = in(reg) b.add(1024),
                        sa = in(reg) lda,
                        sb = in(reg) 64usize,
                        options(nostack, readonly)
                    );
                    b = b.add(2048);
                }
                let sp = sums[which].as_mut_ptr();
                asm!(
                    "tilestored [{s} + {ld}*1], tmm0",
                    "tilestored [{s1} + {ld}*1], tmm1",
                    "tilestored [{s2} + {ld}*1], tmm2",
                    "tilestored [{s3} + {ld}*1], tmm3",
                    s = in(reg) sp,
                    s1 = in(reg) sp.add(16),
                    s2 = in(reg) sp.add(16 * BLOCK),
                    s3 = in(reg) sp.add(16 * BLOCK + 16),
                    ld = in(reg) 4 * BLOCK,
                    options(nostack)
                );
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
        if let Some(prev) = pending {
            block_epilogue::<S>(&prev, sums[prev.buf].as_ptr(), c, ldc, epi, 0, prev.rows);
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// A block whose sums wait in `sums[buf]` for their epilogue.
struct Pending {
    buf: usize,
    r0: usize,
    col0: usize,
    rows: usize,
    cols: usize,
}

/// Dequantization, bias, activation and residual of rows `i0..i1` of one block (or their raw
/// sums), from the block of sums at `sp` (`BLOCK x BLOCK` int32, row-major).
///
/// # Safety
/// As [`qgemm_amx`]'s operands; the block lies within C. S's features enabled.
#[inline(always)]
unsafe fn block_epilogue<S: Simd>(
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
    // epilogue operands are in bounds.
    unsafe {
        let e = QEpi {
            bias: if epi.bias.is_null() {
                epi.bias
            } else {
                epi.bias.add(col0)
            },
            residual: if epi.residual.is_null() {
                epi.residual
            } else {
                epi.residual.add(r0 * epi.ldr + col0)
            },
            comp: epi.comp,
            wscale: epi.wscale.add(col0),
            xscale: epi.xscale.add(r0),
            ..*epi
        };
        let cp = c.add(r0 * ldc + col0);
        debug_assert!(i1 <= rows);
        for i in i0..i1 {
            let xs = S::splat(*e.xscale.add(i));
            let mut cc = 0;
            while cc < cols {
                let nn = (cols - cc).min(S::LANES);
                let src = sp.add(i * BLOCK + cc);
                if e.raw {
                    std::ptr::copy_nonoverlapping(
                        src,
                        (c as *mut i32).add((r0 + i) * ldc + col0 + cc),
                        nn,
                    );
                } else {
                    let y = S::load_i32_f32(src, nn);
                    finish::<S>(y, xs, &e, i, cc, nn, cp.add(i * ldc + cc));
                }
                cc += nn;
            }
        }
        if !e.raw && e.act != Activation::Linear && i1 > i0 {
            let res = if e.residual.is_null() {
                e.residual
            } else {
                e.residual.add(i0 * e.ldr)
            };
            apply_tile::<S>(cp.add(i0 * ldc), ldc, i1 - i0, cols, e.act, res, e.ldr);
        }
    }
}
