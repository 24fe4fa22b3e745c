//! Masked softmax attention for one (sequence, head).
//!
//! A call holds sequences end to end ([`SeqSpan`]: a uniform batch is the case of equal
//! lengths). Each (sequence, head) reads only its own rows, mask block and scores block, and
//! dropout draws by position within the sequence, so its result is the same whatever else the
//! call holds.
//!
//! Queries are processed `MR` rows at a time; the logits are `q·k` and `1/sqrt(D)` is applied in
//! the softmax exponent (the query projection stays Keras' own). For each block the logits of every key are formed
//! in a per-thread scratch row block (`MR x S`, so memory per call grows with `S`, never with
//! `S^2`), masked, normalised with a stable softmax (max subtracted, vectorised exp) and
//! multiplied with `V`. Keys are read from a transposed copy and values from a copy, both made
//! once per (batch item, head) in panels of the register tile's width as the weights of the
//! products are packed, so every product is a register-tiled micro-kernel streaming one
//! contiguous panel.
//!
//! Masked keys get probability exactly 0. Padded keys' values are zeroed in the copy; otherwise,
//! when every value of the head is finite, `0 * v = 0` and the tiled product is exact; if some
//! value is NaN or Inf (with a full attention mask), the product instead skips masked keys one by
//! one, so a poisoned masked position can never leak into another row.

use super::gemm::{Ahead, Epi, F32Values, tile};
use crate::simd::Simd;
use crate::simd::math::exp_nonpositive;
use crate::{KeepMask, MaskedRows};

/// One sequence of a call: its first row, its length, and `sum len_j^2` over the sequences
/// before it (where its `[len, len]` mask block starts; its scores start at `heads` times that).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SeqSpan {
    pub start: usize,
    pub len: usize,
    pub square: usize,
}

/// Sizes and operands of one attention call (validated by the safe wrapper).
#[derive(Clone, Copy)]
pub(crate) struct AttnArgs<'a> {
    pub qkv: *const f32,
    pub spans: &'a [SeqSpan],
    pub heads: usize,
    pub key_dim: usize,
    pub mask: KeepMask<'a>,
    pub policy: MaskedRows,
    pub dropout: Option<(f32, u64)>,
    pub ctx: *mut f32,
    pub scores: *mut f32,
}

/// `n` rounded up to whole vectors of `l`, plus one vector if that is a multiple of 64 values.
fn padded_len(n: usize, l: usize) -> usize {
    let p = n.div_ceil(l) * l;
    if p.is_multiple_of(64) { p + l } else { p }
}

/// Scratch floats one thread needs for sequence `s`, key dim `d`, tile `mr x nr` (an upper
/// bound: the kernel pads to whole vectors, `nr` is a multiple of them).
pub(crate) fn scratch_len(s: usize, d: usize, mr: usize, nr: usize) -> usize {
    let sp = padded_len(s, nr).max(padded_len(s, 16));
    s.div_ceil(nr) * nr * d + d.div_ceil(nr) * nr * s + mr * sp
}

/// Attention for head `h` of sequence `b`.
///
/// # Safety
/// * `args` describe valid buffers: `qkv` `[T, 3*N*D]`, `ctx` `[T, N*D]` for the `T` rows the
///   spans cover (only the columns of head `h` of sequence `b` are written), `scores` (null or
///   `[N, len, len]` per sequence, end to end); a key mask covers the `T` rows, a full mask the
///   `[len, len]` blocks end to end. No other thread writes the same head's regions.
/// * `b < spans.len()`, `h < heads`; `scratch` holds at least [`scratch_len`] floats for the
///   sequence's length. `D >= 1`. S's features enabled.
#[inline(always)]
pub(crate) unsafe fn attention_head<S: Simd, const MR: usize, const NV: usize>(
    args: &AttnArgs<'_>,
    b: usize,
    h: usize,
    scratch: &mut [f32],
) {
    let span = args.spans[b];
    let (s, d, n_heads) = (span.len, args.key_dim, args.heads);
    if s == 0 {
        return;
    }
    let (keys, block) = seq_masks(args, span);
    let keep = |i: usize, j: usize| match (keys, block) {
        (Some(k), _) => k[j] != 0,
        (_, Some(f)) => f[i * s + j] != 0,
        _ => true,
    };
    // Keys and values are copied into panels of `W` (the register tile's width) as the
    // weights of the products are packed: panel `q` of the transposed keys holds keys
    // `q W .. (q + 1) W` as `D` rows of `W`, panel `c` of the values columns `c W .. (c + 1) W` as
    // `S` rows of `W`, so each register tile streams one contiguous block (its rows of the
    // whole copies lie a row length apart: a cache line each from L2 at every inner step). Zen 3,
    // the attention alone (12 heads, one thread, builds alternated in 3 rounds, the rounds'
    // fastest runs): 64 keys of D = 64 53.5-56.1 GFLOP/s before, 60.9-61.4 so; 512 keys
    // 64.8-67.2 before, 73.0-75.1 so; 512 keys of D = 32 57.0-57.4 before, 59.4-62.1 so.
    // The probabilities' row length is padded to whole vectors, plus one if that is a multiple
    // of 64 floats, so the rows of a tile do not all fall into the same few L1 sets.
    let l = S::LANES;
    let wd = NV * l;
    // The keys are transposed eight at a time, never across two panels.
    const { assert!((NV * S::LANES).is_multiple_of(8)) };
    let sp = padded_len(s, l);
    let (kpanels, vpanels) = (s.div_ceil(wd), d.div_ceil(wd));
    let w = n_heads * d;
    let ld3 = 3 * w;
    let (kt, rest) = scratch.split_at_mut(kpanels * d * wd);
    let (vs, rest) = rest.split_at_mut(vpanels * s * wd);
    let p = &mut rest[..MR * sp];
    // Where value column `c` of key `j` lies in its panel.
    let vat = |j: usize, c: usize| (c / wd) * s * wd + j * wd + c % wd;
    // SAFETY: all offsets below are within the buffers described in the contract: rows
    // b*s..(b+1)*s of qkv/ctx, columns of head h, and the scratch extents carved above (every
    // panel of keys `d * wd` floats, of values `s * wd`).
    unsafe {
        let base = args.qkv.add(span.start * ld3);
        // With a key padding mask, the values of padded keys are replaced by zeros (unless
        // every key is padded, when the uniform policy averages them all, as Keras does): their
        // probability is exactly 0, so nothing they hold (NaN, Inf) can reach another row, and
        // the result is bit-identical to any other content of the padded positions.
        let key_row: Option<&[u8]> = keys.filter(|r| r.iter().any(|&k| k != 0));
        // The head's rows of Q, K and V come from the projection's output, mostly out of L1/L2
        // and `3 N D` floats apart (a stride the hardware prefetchers do not follow across
        // pages): each is fetched a few rows ahead of the copies below.
        const AHEAD: usize = 8;
        let fetch = |j: usize| {
            let r = base.add(j * ld3 + h * d);
            for part in [0, w, 2 * w] {
                let mut k = 0;
                while k < d {
                    S::prefetch(r.add(part + k));
                    k += 16;
                }
                S::prefetch(r.add(part + d - 1));
            }
        };
        for j in 0..AHEAD.min(s) {
            fetch(j);
        }
        // Values: vector copies into the panels; zeros for padded keys and in the padding
        // columns of the last panel (the rest is overwritten).
        let vp = vs.as_mut_ptr();
        let mut poison = S::splat(0.0);
        for j in 0..s {
            if j + AHEAD < s {
                fetch(j + AHEAD);
            }
            if key_row.is_none_or(|r| r[j] != 0) {
                let src = base.add(j * ld3 + h * d + 2 * w);
                // Copied in vector registers (a call to memcpy per row costs more); x - x is NaN
                // exactly for NaN and the infinities.
                let mut k = 0;
                while k < d {
                    let n = (d - k).min(l);
                    let v = if n == l {
                        S::load(src.add(k))
                    } else {
                        S::load_partial(src.add(k), n)
                    };
                    // A partial load's other lanes are 0: the store zeroes that much padding
                    // (`wd` is a multiple of `l`, so a vector never straddles two panels).
                    S::store(vp.add(vat(j, k)), v);
                    poison = S::add(poison, S::sub(v, v));
                    k += l;
                }
                let c = d.next_multiple_of(l);
                if c % wd != 0 {
                    zero::<S>(vp.add(vat(j, c)), wd - c % wd);
                }
            } else {
                for c in (0..d).step_by(wd) {
                    zero::<S>(vp.add(vat(j, c)), wd);
                }
            }
        }
        let finite = S::reduce_sum(poison) == 0.0;
        // Keys, transposed into their panels, eight at a time: each store run covers eight
        // neighbouring columns of a panel row (`wd` is a multiple of 8).
        let kp = kt.as_mut_ptr();
        let mut j0 = 0;
        while j0 < s {
            let jn = 8.min(s - j0);
            let rows: [*const f32; 8] =
                std::array::from_fn(|jj| base.add((j0 + jj.min(jn - 1)) * ld3 + h * d + w));
            let panel = kp.add((j0 / wd) * d * wd + j0 % wd);
            for dd in 0..d {
                let out = panel.add(dd * wd);
                for (jj, row) in rows.iter().enumerate().take(jn) {
                    *out.add(jj) = *row.add(dd);
                }
            }
            j0 += jn;
        }
        // Past the last key, the last panel's columns are zeros (their logits are never used).
        if s % wd != 0 {
            let panel = kp.add((kpanels - 1) * d * wd);
            for dd in 0..d {
                zero::<S>(panel.add(dd * wd + s % wd), wd - s % wd);
            }
        }
        let qbase = base.add(h * d);
        let mut i0 = 0;
        while i0 < s {
            let rows = MR.min(s - i0);
            // Logits: P[rows, S_pad] = Q[i0.., :D] · K^T, a panel of keys at a time (columns
            // up to the panels' end or `sp`, whichever comes first).
            let a = qbase.add(i0 * ld3);
            let cols = sp.min(kpanels * wd);
            panels::<S, MR, NV>(rows, d, a, ld3, kt.as_ptr(), p.as_mut_ptr(), sp, cols);
            probabilities::<S>(args, span, h, i0, rows, p, sp);
            // Context: ctx[i0.., h*D..] = P · V, a panel of value columns at a time.
            let cbase = args.ctx.add((span.start + i0) * w + h * d);
            if finite {
                panels::<S, MR, NV>(rows, s, p.as_ptr(), sp, vs.as_ptr(), cbase, w, d);
            } else {
                // Some value is NaN or Inf: skip keys a row does not use, one by one.
                for r in 0..rows {
                    let i = i0 + r;
                    let all_masked = (0..s).all(|j| !keep(i, j));
                    let uses_all = all_masked && args.policy == MaskedRows::Uniform;
                    let out = cbase.add(r * w);
                    for dd in 0..d {
                        *out.add(dd) = 0.0;
                    }
                    for j in 0..s {
                        let pj = p[r * sp + j];
                        if !(uses_all || keep(i, j)) || pj == 0.0 {
                            continue;
                        }
                        for dd in 0..d {
                            *out.add(dd) += pj * vs[vat(j, dd)];
                        }
                    }
                }
            }
            i0 += rows;
        }
    }
}

/// Sequence `span`'s keep flags: key flags over its rows, or its `[len, len]` block.
#[inline(always)]
pub(crate) fn seq_masks<'a>(
    args: &AttnArgs<'a>,
    span: SeqSpan,
) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
    let s = span.len;
    let keys = match args.mask {
        KeepMask::Keys(m) => Some(&m[span.start..span.start + s]),
        _ => None,
    };
    let block = match args.mask {
        KeepMask::Full(m) => Some(&m[span.square..span.square + s * s]),
        _ => None,
    };
    (keys, block)
}

/// Rows `i0..i0 + rows` of head `h`'s probabilities from their unscaled logits `q·k` in `p`
/// (row `r` at `r * sp`, `sp` a multiple of the vector length): masked softmax with Keras'
/// `1/sqrt(key_dim)` (computed in double and rounded to f32) folded into the exponent, copied
/// into the scores if asked for, then dropout.
///
/// # Safety
/// As [`attention_head`]'s contract for this sequence and head; `p` holds `rows * sp` values,
/// `span.len <= sp`. S's features enabled.
#[inline(always)]
pub(crate) unsafe fn probabilities<S: Simd>(
    args: &AttnArgs<'_>,
    span: SeqSpan,
    h: usize,
    i0: usize,
    rows: usize,
    p: &mut [f32],
    sp: usize,
) {
    let s = span.len;
    let (keys, block) = seq_masks(args, span);
    let scale = (1.0 / (args.key_dim as f64).sqrt()) as f32;
    // SAFETY: the scores block of this sequence and head is within the buffer (contract);
    // `softmax_row` gets rows of `sp` values, a multiple of the vector length (contract), with
    // S's features enabled by the caller.
    unsafe {
        for r in 0..rows {
            let i = i0 + r;
            let row = &mut p[r * sp..(r + 1) * sp];
            let mrow: Option<&[u8]> = keys.or(block.map(|f| &f[i * s..(i + 1) * s]));
            softmax_row::<S>(row, s, mrow, args.policy, scale);
            // Row i of this head's [s, s] block: the scores' index and dropout's stream
            // position (counted within the sequence, as a batch-1 call counts).
            let prow = (h * s + i) * s;
            if !args.scores.is_null() {
                let at = args.scores.add(args.heads * span.square + prow);
                std::ptr::copy_nonoverlapping(row.as_ptr(), at, s);
            }
            if let Some((rate, seed)) = args.dropout {
                let scale = 1.0 / (1.0 - rate);
                for (j, v) in row[..s].iter_mut().enumerate() {
                    *v = if crate::rng::dropout_keep(seed, 0, (prow + j) as u64, rate) {
                        *v * scale
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// `n` zeros at `p` in vector stores (the padding here is a few values: a `memset` call would
/// cost more than the stores).
///
/// # Safety
/// `p` valid for `n` values; S's features enabled.
#[inline(always)]
pub(crate) unsafe fn zero<S: Simd>(p: *mut f32, n: usize) {
    let mut j = 0;
    // SAFETY: full vectors below n, then a partial store of the rest.
    unsafe {
        let z = S::splat(0.0);
        while j + S::LANES <= n {
            S::store(p.add(j), z);
            j += S::LANES;
        }
        if j < n {
            S::store_partial(p.add(j), n - j, z);
        }
    }
}

/// `C[rows, 0..cols] = A[rows, 0..k] · B[0..k, 0..cols]` with `B` in panels of `NV` vectors
/// (panel `q`, `k` rows of `NV * LANES` values, at `b + q * k * NV * LANES`; columns past `cols`
/// read but not stored): one register tile per panel.
///
/// # Safety
/// `a`: `rows <= MR` rows of `k` at stride `lda`; `b`: `cols.div_ceil(NV * LANES)` whole
/// panels; `c`: `rows` rows of `cols` values at stride `ldc`. S's features enabled.
#[inline(always)]
unsafe fn panels<S: Simd, const MR: usize, const NV: usize>(
    rows: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    let (none, wd) = (Epi::NONE, NV * S::LANES);
    let mut c0 = 0;
    // SAFETY: each panel lies inside `b` and each tile writes its columns below `cols` (the
    // contract above).
    unsafe {
        while c0 < cols {
            let bp = b.add(c0 * k);
            tile::<S, F32Values, MR, NV>(
                rows,
                k,
                a,
                lda,
                bp,
                wd,
                c.add(c0),
                ldc,
                wd.min(cols - c0),
                true,
                true,
                &none,
                Ahead::NONE,
            );
            c0 += wd;
        }
    }
}

/// Masked softmax of one row of unscaled logits `q·k` in place, `softmax(scale · logits)`
/// (`row.len()` is the padded length; entries past `s` end up 0). `mask` is the row's keep flags
/// (`None`: every key kept).
#[inline(always)]
unsafe fn softmax_row<S: Simd>(
    row: &mut [f32],
    s: usize,
    mask: Option<&[u8]>,
    policy: MaskedRows,
    scale: f32,
) {
    let any = match mask {
        None => true,
        Some(m) => {
            let mut any = false;
            for (v, &k) in row.iter_mut().zip(m) {
                if k == 0 {
                    *v = f32::NEG_INFINITY;
                } else {
                    any = true;
                }
            }
            any
        }
    };
    if !any {
        let fill = match policy {
            MaskedRows::Zeros => 0.0,
            MaskedRows::Uniform => 1.0 / s as f32,
        };
        row[..s].fill(fill);
        row[s..].fill(0.0);
        return;
    }
    let l = S::LANES;
    let n = row.len();
    debug_assert!(n.is_multiple_of(l) && s <= n);
    // Whole vectors, then the lanes of a last partial one (selected with a lane mask: the
    // padding past `s` is never written lane by lane and then read as a vector, which would stall
    // store forwarding).
    let full = s - s % l;
    let tail = s - full;
    let end = if tail > 0 { full + l } else { full };
    let ptr = row.as_mut_ptr();
    // SAFETY: n is a multiple of LANES, end <= n, and ptr is valid for n values; features by
    // the caller.
    unsafe {
        let keep = S::first(tail);
        let (ninf, zero) = (S::splat(f32::NEG_INFINITY), S::splat(0.0));
        // Four running maxima (one would wait on each `max` in turn); the maximum is the same
        // in any order.
        let mut m4 = [ninf; 4];
        let mut j = 0;
        while j + 4 * l <= full {
            for (u, m) in m4.iter_mut().enumerate() {
                *m = S::max(*m, S::load(ptr.add(j + u * l)));
            }
            j += 4 * l;
        }
        while j < full {
            m4[0] = S::max(m4[0], S::load(ptr.add(j)));
            j += l;
        }
        let mut mx = S::max(S::max(m4[0], m4[1]), S::max(m4[2], m4[3]));
        if tail > 0 {
            mx = S::max(mx, S::select(keep, S::load(ptr.add(full)), ninf));
        }
        let m = S::reduce_max(mx);
        let mv = S::splat(m);
        let sv = S::splat(scale);
        let mut acc = zero;
        let mut j = 0;
        while j < end {
            // (l - max) * scale <= 0, or NaN, on the lanes below s.
            let mut e = exp_nonpositive::<S>(S::mul(S::sub(S::load(ptr.add(j)), mv), sv));
            if j == full {
                e = S::select(keep, e, zero);
            }
            S::store(ptr.add(j), e);
            acc = S::add(acc, e);
            j += l;
        }
        let inv = S::splat(1.0 / S::reduce_sum(acc));
        let mut j = 0;
        while j < end {
            S::store(ptr.add(j), S::mul(S::load(ptr.add(j)), inv));
            j += l;
        }
        while j < n {
            S::store(ptr.add(j), zero);
            j += l;
        }
    }
}
