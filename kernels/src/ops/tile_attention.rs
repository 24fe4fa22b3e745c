//! Attention for one (sequence, head) with its two products on AMX bf16 tiles: Keras'
//! `mixed_bfloat16` (bf16 operands, float32 sums; softmax, masking and dropout in float32).
//!
//! The head's keys are packed once as the weights of `Q · Kᵀ` and its values as those of
//! `P · V`, both rounded to bf16 (to nearest, ties to even) in the tile layout of the bf16
//! products ([`PanelLayout::Tiles`](super::product::PanelLayout)); then each block of 32 queries
//! is rounded to bf16, multiplied on tiles into float32 logits, turned into probabilities exactly
//! as the float32 kernel does ([`probabilities`]), rounded to bf16 and multiplied by the values
//! straight into the context. Dimensions past `D` are zero in the queries and the keys, and keys
//! past the sequence zero in the probabilities and the values, so padding adds exact zeros (the
//! logits of padding keys are never written).
//!
//! Masked keys' values are zero in the packed copy (unless every key is masked and the uniform
//! policy averages them all, as in float32), so nothing they hold can reach another row. A head
//! whose kept values hold a NaN or an infinity runs the float32 kernel instead (its skip of masked
//! keys one by one is what keeps such a value out of the rows that do not use it).

use super::amx::{BLOCK, Bf16Tiles, gemm_tiles};
use super::attention::{AttnArgs, attention_head, probabilities, seq_masks};
use super::gemm::Epi;
use super::product::{Dequant, PanelLayout, ProductArgs};
use super::quant::{CHUNK, bf16_row};
use crate::simd::Simd;
use crate::simd::avx512::{Avx512, bf16_lanes};
use std::arch::x86_64::*;

/// The vector vocabulary of the conversions and the epilogue (the AMX tier's float tier).
type S = Avx512;

/// Sequences shorter than this run the float32 kernel: packing the keys and values and the
/// tiles' set-up cost more than the tiles save. Measured on the Xeon with AMX (the attention
/// kernel alone, one thread, 12 heads, alternated calls in one process): tiles against float32
/// 1.18x the time at 32 keys (`D` = 32), 1.04x (`D` = 64); 0.93x and 0.74x at 64 keys; 0.86x
/// and 0.70x at 128; 0.58x at 512 (`D` = 64).
pub(crate) const MIN_KEYS: usize = 64;

/// `n` rounded up to whole blocks of 32 (a tile step holds 32 bf16 values; a panel 32 columns).
fn whole(n: usize) -> usize {
    n.div_ceil(BLOCK) * BLOCK
}

/// Scratch floats one thread needs for a sequence of `s` and key dim `d`: the packed keys and
/// values (`s32 * d32` bf16 values each), a block of queries and one of probabilities in bf16,
/// and the block's float32 logits.
pub(crate) fn scratch_len(s: usize, d: usize) -> usize {
    let (sp, dp) = (whole(s), whole(d));
    // In bf16 values, then halved into floats.
    let halves = 2 * sp * dp + BLOCK * dp + BLOCK * sp;
    halves.div_ceil(2) + BLOCK * sp
}

/// The `n <= 16` floats at `x` (zero past `n`) rounded to bf16 (each lane's low half), and
/// `poison` grown by the rounded values' `y - y`: NaN once one of them is NaN or infinite, which
/// includes a finite float32 beyond the largest bf16 (about 3.3961e38), rounded to infinity.
///
/// # Safety
/// `x` valid for `n` values; AVX-512F/BW enabled.
#[inline(always)]
unsafe fn rounded(x: *const f32, n: usize, poison: &mut __m512) -> __m512i {
    // SAFETY: the load reads lanes below n only; features by the caller.
    unsafe {
        let r = bf16_lanes(S::load_partial(x, n));
        let y = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(r));
        *poison = S::add(*poison, S::sub(y, y));
        r
    }
}

/// `d <= 32` floats at `x` (zero past `d`) rounded to bf16, as 16 pairs of neighbours (pair
/// `i`: value `2i` in the low half, `2i + 1` in the high half); `poison` as in [`rounded`].
///
/// # Safety
/// `x` valid for `d` values; AVX-512F/BW enabled.
#[inline(always)]
unsafe fn pairs32(x: *const f32, d: usize, poison: &mut __m512) -> __m512i {
    // SAFETY: the loads read lanes below d only; features by the caller.
    unsafe {
        let lo = rounded(x, d.min(16), poison);
        let hi = if d > 16 {
            rounded(x.add(16), d - 16, poison)
        } else {
            _mm512_setzero_si512()
        };
        let lo = _mm512_cvtepi32_epi16(lo);
        let hi = _mm512_cvtepi32_epi16(hi);
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }
}

/// A row of `d` floats at `x` rounded to bf16 into `dp` values at `out` (zero past `d`);
/// `poison` as in [`rounded`].
///
/// # Safety
/// `x` valid for `d` values, `out` for `dp >= d`; AVX-512F/BW enabled.
#[inline(always)]
unsafe fn round_row(x: *const f32, d: usize, out: *mut u16, dp: usize, poison: &mut __m512) {
    // SAFETY: every access is below d (floats) or dp (values).
    unsafe {
        let mut k = 0;
        while k < d {
            let n = (d - k).min(16);
            let r = rounded(x.add(k), n, poison);
            let lanes = if n == 16 { u16::MAX } else { (1u16 << n) - 1 };
            _mm512_mask_cvtepi32_storeu_epi16(out.add(k) as *mut i16, lanes, r);
            k += n;
        }
        for p in d..dp {
            *out.add(p) = 0;
        }
    }
}

/// Fetch the `d` values of a row into cache.
///
/// # Safety
/// `row` valid for `d` values (a prefetch never faults, but the address must be computable).
#[inline(always)]
unsafe fn fetch(row: *const f32, d: usize) {
    let mut k = 0;
    while k < d {
        // SAFETY: the caller's contract.
        unsafe { S::prefetch(row.add(k)) };
        k += 16;
    }
}

/// Values `c..c + n` (`n <= 16`) of the row at `row` (null: a zero row) as bf16 lanes (low
/// halves); `poison` as in [`rounded`].
///
/// # Safety
/// `row` null or valid for `c + n` values; AVX-512F enabled.
#[inline(always)]
unsafe fn value_lanes(row: *const f32, c: usize, n: usize, poison: &mut __m512) -> __m512i {
    // SAFETY: the caller's contract.
    unsafe {
        if row.is_null() || n == 0 {
            return _mm512_setzero_si512();
        }
        rounded(row.add(c), n, poison)
    }
}

/// Attention for head `h` of sequence `b` on bf16 tiles (the float32 kernel `attention_head` with
/// register tile `MR x NV` for a head whose kept values are not all finite).
///
/// # Safety
/// * As [`attention_head`]'s contract, with `scratch` holding at least the larger of its
///   scratch length and this module's [`scratch_len`] for the sequence.
/// * The CPU has AMX-TILE, AMX-BF16 and AVX-512F/BW/DQ/VL, and the OS granted the tile state;
///   those features enabled.
#[inline(always)]
pub(crate) unsafe fn attention_head_tiles<const MR: usize, const NV: usize>(
    args: &AttnArgs<'_>,
    b: usize,
    h: usize,
    scratch: &mut [f32],
) {
    let span = args.spans[b];
    let (s, d) = (span.len, args.key_dim);
    if s < MIN_KEYS {
        // SAFETY: forwarded contract (the scratch covers the float32 kernel's length).
        unsafe { attention_head::<S, MR, NV>(args, b, h, scratch) };
        return;
    }
    let (keys, _) = seq_masks(args, span);
    // With a key mask, masked keys' values are zeroed (unless no key is kept).
    let key_row: Option<&[u8]> = keys.filter(|r| r.iter().any(|&k| k != 0));
    let kept = |j: usize| key_row.is_none_or(|r| r[j] != 0);
    let w = args.heads * d;
    let ld3 = 3 * w;
    // SAFETY: rows span.start.. of qkv hold the sequence (contract); head h's columns of each
    // third are within a row.
    let base = unsafe { args.qkv.add(span.start * ld3 + h * d) };
    let (sp, dp) = (whole(s), whole(d));
    let (logits, rest) = scratch.split_at_mut(BLOCK * sp);
    // The bf16 buffers live in the rest of the float scratch (u16 needs less alignment).
    let halves = rest.as_mut_ptr() as *mut u16;
    let kpack = halves;
    // SAFETY: these offsets stay within the `scratch_len` halves carved here (the caller's
    // scratch holds them).
    let (vpack, qa, pa) = unsafe {
        let vpack = kpack.add(sp * dp);
        let qa = vpack.add(sp * dp);
        (vpack, qa, qa.add(BLOCK * dp))
    };
    // Pairs (u32) of the tile layout: inner pair r, column c of panel p, with `kp` pairs per
    // panel: the layout's offset in values, halved.
    let pair_at = |p: usize, r: usize, c: usize, kp: usize| -> usize {
        PanelLayout::Tiles.offset(p, 2 * r, c, BLOCK, kp, 2) / 2
    };
    // The head's rows come from the projection's output, `3 N D` floats apart (a stride the
    // prefetchers do not follow across pages): each is fetched a few rows ahead.
    const AHEAD: usize = 8;
    // SAFETY: every row read is one of the sequence's (contract) and every write stays within
    // the buffers carved above: the packed keys and values hold (sp / 32) and (dp / 32) panels
    // of dp / 2 and sp / 2 pairs of 32 columns (sp * dp values each), the query and probability
    // blocks 32 rows of dp and sp values. `gemm_tiles`' contract: the CPU has the tiles and
    // their grant, and AVX-512 is enabled (this function's contract); the A blocks have 32
    // readable rows of 2 * dp and 2 * sp bytes (multiples of 64) and the packed panels dp / 2
    // and sp / 2 pairs (multiples of 16); the logits are this thread's scratch, and the context
    // columns h * D.. of these rows are this (sequence, head)'s alone (the caller's contract),
    // the only ones the product writes (n = D). `probabilities` gets rows * sp logits, sp a
    // multiple of 16; the float32 fallback gets the whole scratch, which covers its length too.
    unsafe {
        // Keys as the weights of Q · Kᵀ (inner: the head's dimensions, columns: the keys):
        // a key's 16 pairs of a tile step go down one column of the tile, 64 bytes apart.
        // Every key, and every kept value, is checked as it is rounded (`rounded`): one that is
        // NaN or infinite in bf16 (a finite float32 past the largest bf16 included) sends the
        // head to the float32 kernel, where 0 times it cannot make a NaN the float32 kernel
        // would not make.
        let mut poison = S::splat(0.0);
        let kq = kpack as *mut i32;
        let down = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(16),
        );
        for j in 0..s {
            if j + AHEAD < s {
                fetch(base.add((j + AHEAD) * ld3 + w), d);
            }
            let row = base.add(j * ld3 + w);
            let at0 = pair_at(j / BLOCK, 0, j % BLOCK, dp / 2);
            for t in 0..dp / BLOCK {
                let k0 = t * BLOCK;
                let v = if k0 < d {
                    pairs32(row.add(k0), (d - k0).min(BLOCK), &mut poison)
                } else {
                    _mm512_setzero_si512()
                };
                _mm512_i32scatter_epi32::<4>(kq.add(at0 + t * 512), down, v);
            }
        }
        // Values as the weights of P · V (inner: the keys, in pairs; columns: the dimensions):
        // two keys' 16 values of a column block interleave into 16 contiguous pairs.
        for r in 0..sp / 2 {
            let (j0, j1) = (2 * r, 2 * r + 1);
            for j in [j0, j1] {
                if j + AHEAD < s {
                    fetch(base.add((j + AHEAD) * ld3 + 2 * w), d);
                }
            }
            let row = |j: usize| {
                if j < s && kept(j) {
                    base.add(j * ld3 + 2 * w)
                } else {
                    std::ptr::null()
                }
            };
            let (r0, r1) = (row(j0), row(j1));
            let mut c = 0;
            while c < dp {
                let n = d.saturating_sub(c).min(16);
                let lo = value_lanes(r0, c, n, &mut poison);
                let hi = value_lanes(r1, c, n, &mut poison);
                let pair = _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi));
                // Columns c..c + 16 of pair r: 16 contiguous pairs, 64-byte aligned in the
                // layout (the scratch itself may not be: an unaligned store).
                let at = pair_at(c / BLOCK, r, c % BLOCK, sp / 2);
                _mm512_storeu_si512((vpack as *mut u32).add(at) as *mut __m512i, pair);
                c += 16;
            }
        }
        if S::reduce_sum(poison) != 0.0 {
            // The float32 kernel (the scratch covers its length too) skips masked keys one by
            // one.
            attention_head::<S, MR, NV>(args, b, h, scratch);
            return;
        }
        let none = |lda: usize, m: usize, steps: usize, n: usize, ldc: usize| ProductArgs {
            lda,
            m,
            steps,
            n,
            ldc,
            p0: 0,
            p1: n.div_ceil(BLOCK),
            epi: Epi::NONE,
            deq: Dequant::NONE,
            blocks: crate::Blocks::DEFAULT,
            ahead: 0,
            pass: 0,
        };
        let mut i0 = 0;
        while i0 < s {
            let rows = BLOCK.min(s - i0);
            // Logits[rows, s] = Q[i0.., :D] · Kᵀ; the block's other rows of Q are read by the
            // tiles and their sums dropped.
            let mut qpoison = S::splat(0.0);
            for r in 0..rows {
                round_row(
                    base.add((i0 + r) * ld3),
                    d,
                    qa.add(r * dp),
                    dp,
                    &mut qpoison,
                );
            }
            if S::reduce_sum(qpoison) != 0.0 {
                // A query past bf16's range (or NaN, infinite): the whole head again in float32,
                // which overwrites every row this head wrote.
                attention_head::<S, MR, NV>(args, b, h, scratch);
                return;
            }
            let args_qk = none(2 * dp, rows, dp / 2, s, sp);
            let la = logits.as_mut_ptr();
            gemm_tiles::<Bf16Tiles, S, false>(qa as *const u8, kpack as *const u8, la, &args_qk);
            probabilities::<S>(args, span, h, i0, rows, logits, sp);
            // Context[i0.., h*D..] = P · V, the probabilities rounded to bf16 (zero past s).
            for r in 0..rows {
                bf16_row::<S>(logits.as_ptr().add(r * sp), s, pa.add(r * sp), sp, CHUNK);
            }
            let cbase = args.ctx.add((span.start + i0) * w + h * d);
            let args_pv = none(2 * sp, rows, sp / 2, d, w);
            gemm_tiles::<Bf16Tiles, S, false>(pa as *const u8, vpack as *const u8, cbase, &args_pv);
            i0 += rows;
        }
    }
}
