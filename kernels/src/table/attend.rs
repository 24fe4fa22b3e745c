//! Masked multi-head attention over uniform and ragged batches.

use super::*;

impl Kernels {
    /// Masked multi-head attention. `qkv` is `[B*S, 3*N*D]`: queries, keys and values side by
    /// side (as the projections give them), head `n` at columns `n*D` of each third; the logits
    /// are scaled by Keras' `1/sqrt(D)` inside the softmax.
    /// Writes the context `[B*S, N*D]` and, if given, the probabilities `[B, N, S, S]` (before
    /// dropout). `dropout` is `(rate, seed)`, drawn by position within each sequence (every
    /// batch item draws the same stream, as a batch-1 call on it would). `scratch` is reused
    /// between calls. If `quant` is armed for an int8 product, the context rows are quantized
    /// into it as soon as every head has written them. If it is armed for a bf16 product (a
    /// layer in Keras' `mixed_bfloat16`), the attention's own products take bf16 operands too
    /// (float32 sums; softmax in float32) on a tier with bf16 tiles, and the context rows are
    /// rounded into it.
    ///
    /// A uniform batch is the ragged case of equal lengths: this is
    /// [`attention_ragged`](Kernels::attention_ragged) with `B` lengths of `S`.
    pub fn attention(
        &self,
        qkv: &[f32],
        shape: AttentionShape,
        mask: KeepMask<'_>,
        policy: MaskedRows,
        dropout: Option<(f32, u64)>,
        ctx: &mut [f32],
        scores: Option<&mut [f32]>,
        scratch: &mut AttentionScratch,
        quant: Option<&mut QuantRows>,
        par: Par,
    ) -> Result<(), KernelError> {
        let AttentionShape {
            batch,
            seq,
            heads,
            key_dim,
        } = shape;
        let rows = batch
            .checked_mul(seq)
            .ok_or_else(|| overflow("attention rows"))?;
        let squares = rows
            .checked_mul(seq)
            .ok_or_else(|| overflow("attention scores"))?;
        let totals = Totals {
            rows,
            squares,
            longest: seq,
        };
        let call = AttnCall {
            qkv,
            heads,
            key_dim,
            mask,
            policy,
            dropout,
        };
        let Some(q_out) = self.check_attention(&call, totals, ctx, scores.as_deref(), quant)?
        else {
            return Ok(());
        };
        scratch.spans.clear();
        scratch.spans.extend((0..batch).map(|b| SeqSpan {
            start: b * seq,
            len: seq,
            square: b * seq * seq,
        }));
        scratch.order.clear();
        scratch.order.extend(0..batch);
        self.run_attention(&call, totals, ctx, scores, scratch, q_out, par);
        Ok(())
    }

    /// Masked multi-head attention over sequences of different lengths packed end to end
    /// (`../SPEC.md` section 11): `qkv` is `[T, 3*N*D]` and the context `[T, N*D]` for
    /// `T = sum(lengths)` rows. A [`KeepMask::Keys`] mask has `T` flags, a [`KeepMask::Full`]
    /// mask holds each sequence's `[len_i, len_i]` block end to end, and the scores each
    /// sequence's `[N, len_i, len_i]` end to end. Each sequence's results are bit-identical to
    /// a call on that sequence alone, whatever else the call holds and however many threads run.
    ///
    /// The (sequence, head) units are handed out longest first to whichever thread is free, so
    /// one long sequence among short ones does not leave a thread idle; the scratch space
    /// grows with the longest sequence only.
    ///
    /// ```
    /// use transformer_encoder_kernels::{
    ///     AttentionScratch, Isa, KeepMask, Kernels, MaskedRows, Par, RaggedShape,
    /// };
    /// let k = Kernels::for_isa(Isa::Portable)?;
    /// let lengths = [2, 1]; // two sequences, 3 rows; 1 head of size 2
    /// let qkv: Vec<f32> = (0..3 * 6).map(|i| i as f32 / 10.0).collect();
    /// let mut ctx = vec![0.0; 3 * 2];
    /// let shape = RaggedShape { lengths: &lengths, heads: 1, key_dim: 2 };
    /// let mut scratch = AttentionScratch::new();
    /// k.attention_ragged(&qkv, shape, KeepMask::All, MaskedRows::Zeros, None, &mut ctx, None,
    ///     &mut scratch, None, Par::Seq).unwrap();
    /// // A sequence of one token attends to itself: its context is its value.
    /// assert_eq!(&ctx[4..], &qkv[2 * 6 + 4..]);
    /// # Ok::<(), transformer_encoder_kernels::IsaError>(())
    /// ```
    pub fn attention_ragged(
        &self,
        qkv: &[f32],
        shape: RaggedShape<'_>,
        mask: KeepMask<'_>,
        policy: MaskedRows,
        dropout: Option<(f32, u64)>,
        ctx: &mut [f32],
        scores: Option<&mut [f32]>,
        scratch: &mut AttentionScratch,
        quant: Option<&mut QuantRows>,
        par: Par,
    ) -> Result<(), KernelError> {
        let RaggedShape {
            lengths,
            heads,
            key_dim,
        } = shape;
        let mut totals = Totals {
            rows: 0,
            squares: 0,
            longest: 0,
        };
        for &len in lengths {
            totals.rows = totals
                .rows
                .checked_add(len)
                .ok_or_else(|| overflow("attention rows"))?;
            totals.squares = len
                .checked_mul(len)
                .and_then(|q| q.checked_add(totals.squares))
                .ok_or_else(|| overflow("attention scores"))?;
            totals.longest = totals.longest.max(len);
        }
        let call = AttnCall {
            qkv,
            heads,
            key_dim,
            mask,
            policy,
            dropout,
        };
        let Some(q_out) = self.check_attention(&call, totals, ctx, scores.as_deref(), quant)?
        else {
            return Ok(());
        };
        let (mut start, mut square) = (0, 0);
        scratch.spans.clear();
        for &len in lengths {
            scratch.spans.push(SeqSpan { start, len, square });
            start += len;
            square += len * len;
        }
        // Longest first (empty sequences have no work and are left out).
        scratch.order.clear();
        scratch
            .order
            .extend((0..lengths.len()).filter(|&i| lengths[i] > 0));
        scratch
            .order
            .sort_unstable_by_key(|&i| std::cmp::Reverse(lengths[i]));
        self.run_attention(&call, totals, ctx, scores, scratch, q_out, par);
        Ok(())
    }

    /// Check an attention call's sizes; `None` when there is nothing to compute, else the
    /// armed quantized output (if any).
    pub(super) fn check_attention(
        &self,
        call: &AttnCall<'_>,
        totals: Totals,
        ctx: &[f32],
        scores: Option<&[f32]>,
        quant: Option<&mut QuantRows>,
    ) -> Result<Option<Option<QuantOut>>, KernelError> {
        let (heads, key_dim) = (call.heads, call.key_dim);
        if heads == 0 || key_dim == 0 {
            return Err(KernelError {
                message: format!(
                    "attention needs heads >= 1 and key_dim >= 1, got {heads} and {key_dim}"
                ),
            });
        }
        let w = heads
            .checked_mul(key_dim)
            .ok_or_else(|| overflow("attention width"))?;
        let m = totals.rows;
        let want_qkv = m
            .checked_mul(3)
            .and_then(|v| v.checked_mul(w))
            .ok_or_else(|| overflow("qkv"))?;
        expect_len("qkv", call.qkv.len(), want_qkv)?;
        let want_ctx = m
            .checked_mul(w)
            .ok_or_else(|| overflow("attention context"))?;
        expect_len("attention context", ctx.len(), want_ctx)?;
        let nscores = totals
            .squares
            .checked_mul(heads)
            .ok_or_else(|| overflow("attention scores"))?;
        if let Some(s) = scores {
            expect_len("attention scores", s.len(), nscores)?;
        }
        match call.mask {
            KeepMask::All => {}
            KeepMask::Keys(k) => expect_len("key mask", k.len(), m)?,
            KeepMask::Full(f) => expect_len("attention mask", f.len(), totals.squares)?,
        }
        if let Some((rate, _)) = call.dropout
            && !(0.0..1.0).contains(&rate)
        {
            return Err(KernelError {
                message: format!("dropout rate must be in [0, 1), got {rate}"),
            });
        }
        let q_out = self.armed_out(quant, m, w)?;
        Ok((m > 0).then_some(q_out))
    }

    /// Run a checked attention call over the spans and order in `scratch`.
    pub(super) fn run_attention(
        &self,
        call: &AttnCall<'_>,
        totals: Totals,
        ctx: &mut [f32],
        scores: Option<&mut [f32]>,
        scratch: &mut AttentionScratch,
        q_out: Option<QuantOut>,
        par: Par,
    ) {
        let (heads, key_dim) = (call.heads, call.key_dim);
        let w = heads * key_dim;
        let AttentionScratch {
            slots,
            spans,
            order,
        } = scratch;
        let units = order.len() * heads;
        // Work in multiply-adds: about len^2 * D per (sequence, head), twice.
        let work = totals.squares.saturating_mul(w);
        let parts = if work < PAR_MIN_ATTENTION {
            1
        } else {
            par.parts().min(units)
        };
        // A context that feeds a bf16 product is a bf16 layer's (Keras' `mixed_bfloat16`): its
        // attention products take bf16 operands too, on the tier's bf16 tiles if it has them
        // (every layer's, on a table from `with_bf16_attention`).
        let tiles = self
            .attn_bf16
            .filter(|_| self.attn_bf16_all || q_out.is_some_and(|q| q.bf16));
        let len = scratch_len(totals.longest, key_dim, self.f32.mr, self.f32.nr)
            .max(tiles.map_or(0, |_| tile_scratch_len(totals.longest, key_dim)));
        if slots.len() < parts {
            slots.resize_with(parts, Vec::new);
        }
        for s in slots.iter_mut().take(parts) {
            if s.len() < len {
                s.resize(len, 0.0);
            }
        }
        let args = AttnArgs {
            qkv: call.qkv.as_ptr(),
            spans,
            heads,
            key_dim,
            mask: call.mask,
            policy: call.policy,
            dropout: call.dropout,
            ctx: ctx.as_mut_ptr(),
            scores: scores.map_or(std::ptr::null_mut(), |s| s.as_mut_ptr()),
        };
        let (f, quant) = (tiles.unwrap_or(self.attn), self.quant);
        // Many sequences: a thread claims a whole sequence (every head), so its context rows
        // are complete in that thread's cache and are quantized there for the output projection.
        // Few (a long passage alone): (sequence, head) units, so every thread has work, and the
        // context is quantized in a pass after.
        let whole = parts == 1 || order.len() >= 4 * parts;
        let claims = if whole { order.len() } else { units };
        let fused = if whole { q_out } else { None };
        let next = AtomicUsize::new(0);
        let order: &[usize] = order;
        let shared = Shared((&args, slots.as_mut_ptr(), fused));
        let run = |part: usize| {
            let (args, slots, fused) = shared.get();
            // SAFETY: part `part` alone uses scratch slot `part` (of the `parts` sized above
            // to `len` floats, enough for the longest sequence).
            let slot = unsafe { &mut (&mut *slots.add(part))[..len] };
            loop {
                // Claims in order (longest sequences first), each taken by exactly one thread.
                let u = next.fetch_add(1, Ordering::Relaxed);
                if u >= claims {
                    break;
                }
                let (seq, h0, h1) = if whole {
                    (order[u], 0, heads)
                } else {
                    (order[u / heads], u % heads, u % heads + 1)
                };
                for head in h0..h1 {
                    // SAFETY: the tier is available; buffer lengths and the mask were checked
                    // against the spans; each unit is claimed once, and distinct (sequence,
                    // head) units write disjoint ctx columns and score blocks.
                    unsafe { f(args, seq, head, slot) };
                }
                let span = args.spans[seq];
                if let Some(qo) = fused.filter(|_| span.len > 0) {
                    // SAFETY: this thread wrote every column of the sequence's ctx rows above
                    // (no other thread touches them); the destination is shaped for all the
                    // call's rows, and these rows are this claim's alone.
                    unsafe {
                        quant(
                            args.ctx.add(span.start * w),
                            span.len,
                            w,
                            &qo.skip(span.start),
                        )
                    };
                }
            }
        };
        crate::team::for_parts(parts, &run);
        if let Some(qo) = q_out.filter(|_| !whole) {
            self.quantize_out(ctx, w, qo, par);
        }
    }
}

/// Scratch floats of the attention on bf16 tiles (none where there are no tiles).
fn tile_scratch_len(longest: usize, key_dim: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    return crate::ops::tile_attention::scratch_len(longest, key_dim);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (longest, key_dim);
        0
    }
}

/// The operands of an attention call that the uniform and ragged entries share.
pub(super) struct AttnCall<'a> {
    pub(super) qkv: &'a [f32],
    pub(super) heads: usize,
    pub(super) key_dim: usize,
    pub(super) mask: KeepMask<'a>,
    pub(super) policy: MaskedRows,
    pub(super) dropout: Option<(f32, u64)>,
}

/// Sizes of an attention call: rows, `sum len^2`, the longest sequence.
#[derive(Clone, Copy)]
pub(super) struct Totals {
    pub(super) rows: usize,
    pub(super) squares: usize,
    pub(super) longest: usize,
}

/// Per-thread scratch space for [`Kernels::attention`] and [`Kernels::attention_ragged`], grown
/// on first use and then reused (sized by the longest sequence, not by the call).
#[derive(Debug, Default)]
pub struct AttentionScratch {
    pub(super) slots: Vec<Vec<f32>>,
    /// Where each sequence of the call lies.
    pub(super) spans: Vec<SeqSpan>,
    /// The sequences with work, longest first.
    pub(super) order: Vec<usize>,
}

impl AttentionScratch {
    /// Empty scratch space.
    pub fn new() -> AttentionScratch {
        AttentionScratch::default()
    }
}

/// The shape of a ragged attention call ([`Kernels::attention_ragged`], which has an example):
/// sequences of these lengths end to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaggedShape<'a> {
    /// Each sequence's length (zero allowed).
    pub lengths: &'a [usize],
    /// Number of heads.
    pub heads: usize,
    /// Key (and value) size per head.
    pub key_dim: usize,
}

/// The shape of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Batch size.
    pub batch: usize,
    /// Sequence length.
    pub seq: usize,
    /// Number of heads.
    pub heads: usize,
    /// Key (and value) size per head.
    pub key_dim: usize,
}
