//! Matrix products over weights packed once into panels, with fused epilogues.
//!
//! `C[m, n] = epilogue(A[m, k] · B[k, n])`. `B` is packed at load into column panels of `NR`
//! columns (the tier's register-tile width): panel `p` holds `B[0..k, p*NR..(p+1)*NR]` row by row,
//! zero-padded past `n`, as float32 values, or as bf16 pairs widened to float32 as they are read
//! ([`PanelValues`]: the bf16 products of tiers without a bf16 dot product, whose input rows are
//! float32 rounded to bf16; the same float32 arithmetic in the same order). `A` is read in place (row stride `lda`; packing it as well measured no
//! faster here). A register tile of `MR x NR`
//! outputs accumulates over blocks of `kc` inner indices; the first block adds the bias, the last
//! one applies the activation and the residual. The cache blocks (`kc`, `mc` rows of A, and how
//! much of A stays in L2: [`Blocks`](crate::Blocks)) follow the CPU's cache sizes. Every output element is computed by the same
//! sequence of operations whatever the thread split, so results are bit-identical for any
//! thread count.

use super::act::apply_tile;
use super::product::{ProductArgs, by_rows};
use crate::activation::Activation;
use crate::simd::Simd;
use crate::simd::bf16::WidenPairs;

/// How the panels of a float product hold their values.
///
/// # Safety
/// `row` may only run inside S's target features, with `p` valid for `G * LANES` values.
pub(crate) unsafe trait PanelValues<S: Simd>: Copy + 'static {
    /// A stored value.
    type T: Copy;
    /// Inner rows per group (a column's values of consecutive inner rows lie together): 1 for
    /// float32, 2 for a bf16 pair in one 32-bit lane.
    const G: usize;
    /// Inner row `g < G` of the `LANES` columns whose groups start at `p`, as float32.
    unsafe fn row(p: *const Self::T, g: usize) -> S::V;
}

/// Panels of float32 values.
#[derive(Clone, Copy, Debug)]
pub(crate) struct F32Values;

// Safety: one `Simd` load of `LANES` values, as the contract allows.
unsafe impl<S: Simd> PanelValues<S> for F32Values {
    type T = f32;
    const G: usize = 1;
    #[inline(always)]
    unsafe fn row(p: *const f32, _g: usize) -> S::V {
        // SAFETY: the trait's contract.
        unsafe { S::load(p) }
    }
}

/// Panels of bf16 pairs, widened to float32 ([`WidenPairs`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bf16Pairs;

// Safety: one widening load of `LANES` pairs, as the contract allows.
unsafe impl<S: WidenPairs> PanelValues<S> for Bf16Pairs {
    type T = u16;
    const G: usize = 2;
    #[inline(always)]
    unsafe fn row(p: *const u16, g: usize) -> S::V {
        // SAFETY: the trait's contract.
        unsafe { S::widen_pairs(p, g) }
    }
}

/// Raw epilogue operands (validated by the safe wrapper).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epi {
    /// `[n]` or null.
    pub bias: *const f32,
    /// `[m, ldr]` (same row indexing as C) or null.
    pub residual: *const f32,
    pub ldr: usize,
    /// An element-wise activation (or `Linear`), applied after the bias, before the residual.
    pub act: Activation,
}

impl Epi {
    /// Bias only.
    pub(crate) const NONE: Epi = Epi {
        bias: std::ptr::null(),
        residual: std::ptr::null(),
        ldr: 0,
        act: Activation::Linear,
    };
}

/// Cache lines a register tile fetches into L2 as it runs (the next weight slice's share:
/// see [`panel_block`]), spread over its inner loop rather than issued at once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ahead {
    /// The first line's address (any address: a prefetch reads nothing).
    pub at: *const u8,
    /// How many lines, 64 bytes apart.
    pub lines: usize,
}

impl Ahead {
    /// Nothing to fetch.
    pub(crate) const NONE: Ahead = Ahead {
        at: std::ptr::null(),
        lines: 0,
    };
}

/// The first `min(n, LANES)` values at `p` (the other lanes 0).
#[inline(always)]
pub(crate) unsafe fn load_n<S: Simd>(p: *const f32, n: usize) -> S::V {
    // SAFETY: p is valid for n (< LANES) or LANES values (caller).
    unsafe {
        if n >= S::LANES {
            S::load(p)
        } else {
            S::load_partial(p, n)
        }
    }
}

/// Store the first `min(n, LANES)` lanes of `v` at `p`.
#[inline(always)]
pub(crate) unsafe fn store_n<S: Simd>(p: *mut f32, n: usize, v: S::V) {
    // SAFETY: p is valid for n (< LANES) or LANES values (caller).
    unsafe {
        if n >= S::LANES {
            S::store(p, v)
        } else {
            S::store_partial(p, n, v)
        }
    }
}

/// One `R x (NV * LANES)` register tile: `C[0..R, 0..cols] (+)= A[0..R, 0..kc] · B[0..kc, ..]`.
///
/// # Safety
/// * `a` valid for `R` rows of `kc` values at stride `lda` (`kc` a multiple of `W::G`); `b`
///   valid for `kc / W::G` groups of `NV * LANES * W::G` values at stride `ldb`; `c` valid for
///   `R` rows of `cols` values at stride `ldc`.
/// * `first`: C is overwritten with `bias + acc` (`epi.bias` offset to this tile's first column,
///   valid for `cols`, or null). Otherwise C is read and accumulated.
/// * `last`: the residual (`epi.residual` offset to this tile, valid for `R` rows of `cols` at
///   stride `epi.ldr`, or null) is added. `epi.act` is not applied here (see [`gemm_panels`]).
/// * `ahead`: with `PF`, cache lines fetched into L2 as the tile runs (a hint: nothing is read,
///   any address will do); without, unused (the loop then holds no register for it).
#[inline(always)]
pub(crate) unsafe fn micro<
    S: Simd,
    W: PanelValues<S>,
    const R: usize,
    const NV: usize,
    const PF: bool,
>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const W::T,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    first: bool,
    last: bool,
    epi: &Epi,
    ahead: Ahead,
) {
    // SAFETY: bounds as documented above; S's features are enabled by the calling shell.
    unsafe {
        let zero = S::splat(0.0);
        let mut acc = [[zero; NV]; R];
        // One group of the inner product: its `G` inner rows in order, each row's A value
        // times NV vectors of B.
        macro_rules! step {
            ($ap:expr, $bp:expr, $astride:expr) => {{
                let bp = $bp;
                for g in 0..W::G {
                    let mut bv = [zero; NV];
                    for v in 0..NV {
                        bv[v] = W::row(bp.add(v * S::LANES * W::G), g);
                    }
                    for i in 0..R {
                        let av = S::splat(*$ap.add(i * $astride + g));
                        for v in 0..NV {
                            acc[i][v] = S::fma(av, bv[v], acc[i][v]);
                        }
                    }
                }
            }};
        }
        // Unrolled by four groups: both operands advance as streams (A along each row, B by
        // groups).
        let gs = W::G;
        let steps = kc / gs;
        let (mut ap, mut bp) = (a, b);
        let mut kk = 0;
        // The lines to fetch: two per four groups while more are left than groups remain,
        // else one; what the loop cannot take is fetched first.
        let iters = steps / 4;
        let (mut pf, mut left) = (ahead.at, if PF { ahead.lines } else { 0 });
        while left > 2 * iters {
            S::prefetch_l2(pf);
            pf = pf.wrapping_add(64);
            left -= 1;
        }
        let two = left > iters;
        while kk + 4 <= steps {
            if PF && left > 0 {
                S::prefetch_l2(pf);
                pf = pf.wrapping_add(64);
                left -= 1;
                if two && left > 0 {
                    S::prefetch_l2(pf);
                    pf = pf.wrapping_add(64);
                    left -= 1;
                }
            }
            step!(ap, bp, lda);
            step!(ap.add(gs), bp.add(ldb), lda);
            step!(ap.add(2 * gs), bp.add(2 * ldb), lda);
            step!(ap.add(3 * gs), bp.add(3 * ldb), lda);
            ap = ap.add(4 * gs);
            bp = bp.add(4 * ldb);
            kk += 4;
        }
        while kk < steps {
            step!(ap, bp, lda);
            ap = ap.add(gs);
            bp = bp.add(ldb);
            kk += 1;
        }
        for i in 0..R {
            for v in 0..NV {
                let cc = v * S::LANES;
                if cc >= cols {
                    break;
                }
                let n = cols - cc;
                let cp = c.add(i * ldc + cc);
                let prev = if first {
                    if epi.bias.is_null() {
                        zero
                    } else {
                        load_n::<S>(epi.bias.add(cc), n)
                    }
                } else {
                    load_n::<S>(cp, n)
                };
                let mut x = S::add(acc[i][v], prev);
                if last && !epi.residual.is_null() {
                    x = S::add(x, load_n::<S>(epi.residual.add(i * epi.ldr + cc), n));
                }
                store_n::<S>(cp, n, x);
            }
        }
    }
}

/// [`micro`] for `rows < R_MAX` rows, chosen at run time.
#[inline(always)]
pub(crate) unsafe fn micro_rows<S: Simd, W: PanelValues<S>, const NV: usize>(
    rows: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const W::T,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    first: bool,
    last: bool,
    epi: &Epi,
) {
    macro_rules! go {
        ($r:literal) => {
            micro::<S, W, $r, NV, false>(
                kc,
                a,
                lda,
                b,
                ldb,
                c,
                ldc,
                cols,
                first,
                last,
                epi,
                Ahead::NONE,
            )
        };
    }
    // SAFETY: forwarded from the caller (same contract as `micro` with R = rows).
    unsafe { by_rows!(rows, go, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 12) }
}

/// A register tile of `rows <= MR` rows: the full-size kernel when `rows == MR`, else the one
/// monomorphised for `rows`.
///
/// # Safety
/// As [`micro`] with `R = rows`.
#[inline(always)]
pub(crate) unsafe fn tile<S: Simd, W: PanelValues<S>, const MR: usize, const NV: usize>(
    rows: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const W::T,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    first: bool,
    last: bool,
    epi: &Epi,
    ahead: Ahead,
) {
    // SAFETY: forwarded contract of `micro`.
    unsafe {
        if rows == MR {
            if ahead.lines > 0 {
                micro::<S, W, MR, NV, true>(
                    kc, a, lda, b, ldb, c, ldc, cols, first, last, epi, ahead,
                );
            } else {
                micro::<S, W, MR, NV, false>(
                    kc, a, lda, b, ldb, c, ldc, cols, first, last, epi, ahead,
                );
            }
        } else {
            micro_rows::<S, W, NV>(rows, kc, a, lda, b, ldb, c, ldc, cols, first, last, epi);
        }
    }
}

/// Rows `0..m` and panels `p0..p1` of `C = epilogue(A · B)`. Without an activation the
/// register tile adds bias and residual; with one, the tile is written with its bias, then the
/// activation and the residual are applied to it while it is still in L1 ([`apply_tile`]).
///
/// # Safety
/// * `a`: `m` rows of `k = steps * W::G` float32 values, `lda` bytes apart (a multiple of 4);
///   `packed`: `ceil(n / NR)` panels of `k * NR` values of `W::T`; `c`: `m` rows of `n` values at stride
///   `ldc`; `epi.bias`: `n` values or null; `epi.residual`: `m` rows of `n` values at stride
///   `epi.ldr`, or null.
/// * `k >= 1`; no other thread writes the columns of panels `p0..p1`.
#[inline(always)]
pub(crate) unsafe fn gemm_panels<S: Simd, W: PanelValues<S>, const MR: usize, const NV: usize>(
    a: *const u8,
    packed: *const u8,
    c: *mut f32,
    args: &ProductArgs,
) {
    let ProductArgs {
        m,
        steps,
        p0,
        p1,
        blocks,
        ..
    } = *args;
    let k = steps * W::G;
    let (a, lda) = (a as *const f32, args.lda / 4);
    let packed = packed as *const W::T;
    // Row blocks of even size in whole register tiles, about `mc` rows: 512 rows in blocks
    // of 192 would leave a last block of 128 (measured on the Xeon, BERT-base seq 512 on 2
    // threads, calls alternated in one process: 0.3-0.8 % faster for 192, 240 and 384).
    // Inner blocks of even size, at most `kc` each: k = 768 in three of 256, not 336, 336
    // and 96 (each block reads and writes the output tile once more). Zen 3, BERT-base seq 128
    // on one thread, with A kept up to 384 KiB (see `Blocks::for_caches`), settings alternated
    // in 4 rounds: the fastest runs 23.2-23.4 ms before, 22.2-22.3 so.
    let kc_max = blocks.kc.max(1).next_multiple_of(W::G);
    // (16 and `kc_max` are multiples of `W::G`, 1 or 2.)
    let kc = k
        .div_ceil(k.div_ceil(kc_max))
        .next_multiple_of(16)
        .min(kc_max);
    // As many blocks as `mc` goes into `m` to the nearest whole (at least one), so a block
    // holds up to 1.5 `mc` rows rather than the weights streaming once more for a remainder:
    // Zen 3 (`mc` 96), BERT-base seq 128 on one thread, `latency --precision fp32`, builds
    // alternated in 8 rounds: 128 rows as one block against two of 66 and 62, the rounds'
    // medians 23.8 ms against 25.2 (median), their fastest runs 22.8 against 24.2.
    let mc_max = blocks.mc.max(1);
    let count = ((m + mc_max / 2) / mc_max).max(1);
    let mcb = m.div_ceil(count).div_ceil(MR) * MR;
    let mut ic = 0;
    while ic < m {
        let mc = mcb.min(m - ic);
        // Measured on the Xeon (pairs of runs alternated in one process, `avx512`, one thread,
        // 512 KiB): BERT-base QKV (k = 768, 384 KiB of A) 4 % faster panel by panel, the FFN
        // output (k = 3,072, 1.5 MiB of A) 2.4 % slower.
        // One block of panel `p`, inner block `pc` (both in range below; `fetch` names the
        // block that runs next, or the memory order). A macro, not a closure: a closure does
        // not inherit the tier's features, so its inlined kernel could run without them.
        macro_rules! block {
            ($p:expr, $pc:expr, $fetch:expr) => {
                // SAFETY: the contract above, forwarded.
                unsafe {
                    panel_block::<S, W, MR, NV>(
                        a, lda, packed, c, args, ic, mc, $p, $pc, kc, $fetch,
                    )
                }
            };
        }
        if mc * k * 4 <= blocks.a_resident {
            // The rows' whole A stays in L2: each panel runs every inner block at once, its
            // output tile kept in cache from one block to the next.
            for p in p0..p1 {
                for pc in (0..k).step_by(kc) {
                    block!(p, pc, Fetch::Stream);
                }
            }
        } else {
            // A block of A per inner block, in L2 while every panel passes.
            for pc in (0..k).step_by(kc) {
                for p in p0..p1 {
                    let next = if p + 1 < p1 {
                        Some((p + 1, pc))
                    } else if pc + kc < k {
                        Some((p0, pc + kc))
                    } else {
                        None
                    };
                    block!(p, pc, Fetch::Next(next));
                }
            }
        }
        ic += mc;
    }
}

/// Which weights a block of [`panel_block`] fetches while it runs.
#[derive(Clone, Copy)]
enum Fetch {
    /// The blocks run in memory order (each panel all its inner blocks): a slice's length
    /// [`STREAM_AHEAD`] bytes on.
    Stream,
    /// The slice of the panel and inner block that run next, if any.
    Next(Option<(usize, usize)>),
}

/// How far ahead of the running slice the weights are fetched when the blocks run in memory
/// order: far enough past the latency of memory, near enough to stay in L2. Zen 3, the products
/// of the 6-layer MiniLM query alone (16 rows, one thread, six layers' weights: 42 MB, past L3),
/// settings alternated in 4-6 rounds, GFLOP/s: the next slice fetched at each tile's start
/// 53-62; spread over the tiles' inner loops 8 KiB ahead 66-69, 16 KiB 72-77, 24 KiB 72-74,
/// 32 KiB 72-75; the weights in L3 (one layer's, 7 MB) 80-83 before, 84-87 so. Fetching only
/// from the first tile of each block, `STREAM_AHEAD` past its own reads (no register more in
/// the loop), measured slower for the whole query (5.76 ms against 4.90, builds alternated in
/// 4 rounds).
const STREAM_AHEAD: usize = 16 << 10;

/// Panel `p`'s inner block `pc..pc + kc` over rows `ic..ic + mc` of [`gemm_panels`]: every
/// register tile of those rows, the B slice (`kc x NR`, in L1) reused by each. Meanwhile the
/// weights to come are fetched into L2, a share per tile, so a first tile does not wait on L3 or
/// memory (see [`Fetch`]).
///
/// # Safety
/// As [`gemm_panels`] (`a` as float32, `lda` in values; `kc` a multiple of `W::G`), for these
/// rows and panel; a `Fetch::Next(Some((np, npc)))` names one of the panels of `packed` and
/// `npc < k` (its slice's start, and every cache line of the slice fetched, lie inside
/// `packed`); `p1` of `args` is at most the number of panels of `packed`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn panel_block<S: Simd, W: PanelValues<S>, const MR: usize, const NV: usize>(
    a: *const f32,
    lda: usize,
    packed: *const W::T,
    c: *mut f32,
    args: &ProductArgs,
    ic: usize,
    mc: usize,
    p: usize,
    pc: usize,
    kc: usize,
    fetch: Fetch,
) {
    let ProductArgs {
        steps,
        n,
        ldc,
        p1,
        ref epi,
        ..
    } = *args;
    let k = steps * W::G;
    let nr = NV * S::LANES;
    let kc = kc.min(k - pc);
    let (first, last) = (pc == 0, pc + kc == k);
    let col0 = p * nr;
    let cols = nr.min(n - col0);
    let post = last && epi.act != Activation::Linear;
    // SAFETY: every pointer formed below stays inside the extents of the contract.
    unsafe {
        // Panel p holds k * nr values; its inner block pc (a whole number of groups) starts
        // pc * nr values in.
        let bp = packed.add(p * k * nr + pc * nr);
        let tile_epi = Epi {
            bias: if epi.bias.is_null() {
                epi.bias
            } else {
                epi.bias.add(col0)
            },
            residual: if post { std::ptr::null() } else { epi.residual },
            ldr: epi.ldr,
            act: epi.act,
        };
        // Whole tiles of MR rows, unless the last would have under half as many: then the
        // same number of tiles, of even height (16 rows under a 5-row tile: four of 4, not
        // three of 5 and one of 1, whose few accumulators wait on the FMA latency). Zen 3, the
        // bf16 query products (16 rows) alone, alternated with float32's: 1.14-1.17x the
        // float32 time before, 1.02-1.10x so; float32's own did not move beyond the noise.
        let tiles = mc.div_ceil(MR);
        let even = !mc.is_multiple_of(MR) && mc % MR < MR / 2;
        // What this block fetches into L2, a share per tile (see below): its first byte and
        // its length in cache lines (each line fetched starts inside the range, every one
        // inside `packed`).
        let size = std::mem::size_of::<W::T>();
        let (ahead, lines) = match fetch {
            // The blocks run in memory order: a slice's length from `STREAM_AHEAD` bytes past
            // this one's start, up to the end of the part's last panel.
            Fetch::Stream => {
                let end = p1 * k * nr * size;
                let from = ((p * k * nr + pc * nr) * size + STREAM_AHEAD).min(end);
                let to = (from + kc * nr * size).min(end);
                ((packed as *const u8).add(from), (to - from).div_ceil(64))
            }
            // The next slice, at most this block's length: after a panel's short last block
            // only that much of the next panel's first. Fetching the whole first block there
            // measured slower (Zen 3, the 6-layer query on one thread, builds alternated in 6
            // rounds: 6.66 ms against 6.02, median of the rounds' medians).
            Fetch::Next(Some((np, npc))) => (
                packed.add(np * k * nr + npc * nr) as *const u8,
                (kc.min(k - npc) * nr * size).div_ceil(64),
            ),
            Fetch::Next(None) => (std::ptr::null(), 0),
        };
        for t in 0..tiles {
            let (i, rows) = if even {
                let i = ic + mc * t / tiles;
                (i, ic + mc * (t + 1) / tiles - i)
            } else {
                (ic + t * MR, MR.min(mc - t * MR))
            };
            let (l0, l1) = (lines * t / tiles, lines * (t + 1) / tiles);
            // In memory order, a full tile takes its share in its inner loop (`micro`'s `PF`);
            // else the share is fetched at the tile's start, and the loop stays as tight as
            // without fetching (the share's registers in the loop made BERT-base seq 512 on two
            // threads 4 % slower: Zen 3, builds alternated in 5 rounds, 61.2 -> 63.5 ms).
            let share = if matches!(fetch, Fetch::Stream) && rows == MR {
                Ahead {
                    at: ahead.wrapping_add(64 * l0),
                    lines: l1 - l0,
                }
            } else {
                for l in l0..l1 {
                    S::prefetch_l2(ahead.wrapping_add(64 * l));
                }
                Ahead::NONE
            };
            let mut e = tile_epi;
            if !e.residual.is_null() {
                e.residual = e.residual.add(i * e.ldr + col0);
            }
            let ap = a.add(i * lda + pc);
            let cp = c.add(i * ldc + col0);
            tile::<S, W, MR, NV>(
                rows,
                kc,
                ap,
                lda,
                bp,
                nr * W::G,
                cp,
                ldc,
                cols,
                first,
                last,
                &e,
                share,
            );
            if post {
                let r = if epi.residual.is_null() {
                    epi.residual
                } else {
                    epi.residual.add(i * epi.ldr + col0)
                };
                apply_tile::<S>(cp, ldc, rows, cols, epi.act, r, epi.ldr);
            }
        }
    }
}
