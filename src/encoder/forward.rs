//! The forward pass (SPEC section 3): the attention and feed-forward blocks, their buffers,
//! and the workspace a call reuses.

use super::*;

/// Reusable scratch space for [`TransformerEncoder::forward_into`]: one per thread of calls.
/// It grows to the largest call and is then reused without allocating.
#[derive(Debug, Default)]
pub struct Workspace {
    pub(super) mask: Vec<u8>,
    pub(super) normed: Vec<f32>,
    pub(super) qkv: Vec<f32>,
    pub(super) ctx: Vec<f32>,
    pub(super) attn: Vec<f32>,
    pub(super) x1: Vec<f32>,
    pub(super) inter: Vec<f32>,
    pub(super) ffn: Vec<f32>,
    pub(super) scratch: AttentionScratch,
    /// The int8 feed-forward's intermediate activation, a block of rows per thread.
    pub(super) product: ProductScratch,
    /// The quantized input of the next int8 product, and of the one after (a product reads one
    /// while it fills the other); untouched for float32 weights.
    pub(super) quant: [QuantRows; 2],
    /// Between the layers of a stack: a layer's output quantized for the next layer's first
    /// product by the layer's last LayerNorm, while each row is in L1 (see [`Carry`]).
    pub(super) carry: QuantRows,
    pub(super) carry_in: bool,
    pub(super) carry_out: bool,
    pub(super) carried: bool,
}

/// How a stack hands a layer's output to the next layer in int8 (the flags hold for one call
/// and are cleared by the stack after it).
pub(crate) enum Carry<'a> {
    /// The next layer's first product is int8 and takes this call's output as it is: quantize
    /// the output for it too.
    Out(&'a PackedMatrix),
    /// The previous call left this call's input quantized for its first product (set before
    /// `Out`).
    In,
}

impl Workspace {
    /// Arm the hand-over between stacked layers for the next call (see [`Carry`]).
    pub(crate) fn set_carry(&mut self, c: Carry<'_>) {
        match c {
            Carry::Out(next) => {
                self.carry.arm_for(next);
                self.carry_out = true;
            }
            Carry::In => {
                // The carried rows become the first product's input buffer (before the carry
                // buffer is armed again for this call's own output).
                std::mem::swap(&mut self.quant[0], &mut self.carry);
                self.carry_in = true;
            }
        }
    }

    /// Clear the hand-over flags after a call; `true` if that call left its output quantized.
    pub(crate) fn end_carry(&mut self) -> bool {
        self.carry_in = false;
        self.carry_out = false;
        std::mem::take(&mut self.carried)
    }

    /// An empty workspace.
    pub fn new() -> Workspace {
        Workspace::default()
    }
}

pub(super) fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// A call's checked input: its rows, how they split into sequences, the merged masks.
#[derive(Clone, Copy)]
pub(super) struct Rows<'a> {
    pub(super) x: &'a [f32],
    pub(super) layout: Layout<'a>,
    pub(super) rows: usize,
    /// `sum(len^2)` over the sequences.
    pub(super) squares: usize,
    pub(super) merged: crate::mask::Merged,
}

/// What one call does, resolved once: masks, the masked-row behaviour, dropout, threads.
pub(super) struct Call<'a> {
    pub(super) layout: Layout<'a>,
    pub(super) keep: KeepMask<'a>,
    pub(super) policy: MaskedRows,
    /// `(rate, seed)` in training mode with dropout > 0.
    pub(super) dropout: Option<(f32, u64)>,
    pub(super) par: Par,
}

impl TransformerEncoder {
    /// The inputs' last dimension must be the weights' hidden size.
    pub(super) fn check_hidden(&self, hidden: usize) -> Result<()> {
        if hidden != self.dims.hidden_dim {
            return Err(Error::shape(
                "inputs",
                format!(
                    "last dimension (hidden) = {} to match the weights",
                    self.dims.hidden_dim
                ),
                format!("{hidden}"),
            ));
        }
        Ok(())
    }

    /// Run `body` where this encoder's kernels run their threads, with the `Par` to give them:
    /// for several threads, one team of threads for the whole of `body` (a stack runs all its
    /// layers in one). Inside a part of a team's job (a batch run side by side with others)
    /// `body` runs on this thread alone, planned for `n` threads.
    pub(crate) fn on_threads<R>(&self, body: impl FnOnce(Par) -> Result<R>) -> Result<R> {
        let n = match &self.threads {
            Threads::Single => return body(Par::Seq),
            Threads::Count(0) => {
                return Err(Error::config(
                    "threads",
                    "Threads::Count(0): at least 1 thread",
                ));
            }
            Threads::Count(n) => (*n).min(team::MAX_THREADS),
            Threads::Current => rayon::current_num_threads(),
            Threads::Pool(pool) => pool.current_num_threads(),
        };
        if n <= 1 {
            return body(Par::Seq);
        }
        // Inside a part the kernels still plan for `n` threads (their row blocks fit the cache
        // better than the one-thread plan: float32 corpus 91.5 against 85.8 texts/s on Zen 3;
        // the same results) and run their parts in order on this thread.
        if team::in_part() {
            return body(Par::Threads(n));
        }
        team::with_team(n, move || body(Par::Threads(n)))
    }

    /// How many threads a call of this encoder would use here (1 inside a team's part).
    #[cfg(feature = "bert")]
    pub(crate) fn thread_count(&self) -> usize {
        if team::in_part() {
            return 1;
        }
        match &self.threads {
            Threads::Single => 1,
            Threads::Count(n) => (*n).clamp(1, team::MAX_THREADS),
            Threads::Current => rayon::current_num_threads(),
            Threads::Pool(pool) => pool.current_num_threads(),
        }
    }

    /// Check the outputs of a call whose input and masks are checked, then run the two blocks
    /// as Keras does.
    pub(super) fn run(
        &self,
        call: Rows<'_>,
        opts: &CallOptions<'_>,
        out: &mut [f32],
        scores: Option<&mut [f32]>,
        ws: &mut Workspace,
        par: Par,
    ) -> Result<()> {
        let Rows {
            x,
            layout,
            rows: m,
            squares,
            merged,
        } = call;
        let (h, heads) = (self.dims.hidden_dim, self.dims.num_heads);
        let shape = |what: &str| match layout {
            Layout::Uniform { batch, seq } => match what {
                "out" => format!("[{batch}, {seq}, {h}]"),
                _ => format!("[{batch}, {heads}, {seq}, {seq}]"),
            },
            Layout::Ragged(_) => match what {
                "out" => format!("[{m}, {h}]"),
                _ => format!("[{heads}, len_i, len_i] per sequence"),
            },
        };
        if out.len() != x.len() {
            return Err(Error::shape(
                "out",
                format!("{} values ({})", x.len(), shape("out")),
                format!("{} values", out.len()),
            ));
        }
        if let Some(s) = scores.as_deref() {
            let want = squares.checked_mul(heads).ok_or_else(|| {
                Error::shape("scores", "a size that fits in usize", "an overflow")
            })?;
            if s.len() != want {
                return Err(Error::shape(
                    "scores",
                    format!("{want} values ({})", shape("scores")),
                    format!("{} values", s.len()),
                ));
            }
        }
        if m == 0 {
            return Ok(());
        }
        // A stack's hand-over: the input arrives quantized (post-norm: the first product reads
        // the input itself), or the output is to leave quantized for the next layer.
        let pre = self.config.normalize_first;
        let input_ready = std::mem::take(&mut ws.carry_in) && !pre;
        let carry_out = std::mem::take(&mut ws.carry_out) && !pre;
        let rate = self.config.dropout;
        let call = Call {
            layout,
            keep: merged.keep(&ws.mask),
            policy: opts.masked_rows.resolve(scores.is_some(), rate),
            dropout: opts
                .training
                .filter(|_| rate > 0.0)
                .map(|seed| (rate as f32, seed)),
            par,
        };
        let x1 = grow(&mut ws.x1, m * h);
        let [qa, qb] = &mut ws.quant;
        let bufs = AttentionBuffers {
            normed: grow(&mut ws.normed, m * h),
            qkv: grow(&mut ws.qkv, m * 3 * heads * self.dims.key_dim),
            ctx: grow(&mut ws.ctx, m * heads * self.dims.key_dim),
            attn: grow(&mut ws.attn, m * h),
            scratch: &mut ws.scratch,
            quant: qa,
            spare: qb,
        };
        self.self_attention_block(x, m, &call, scores, bufs, x1, input_ready)?;
        // The intermediate activation in float32 only for float32 output weights (int8 ones
        // take it quantized, from a block of rows per thread).
        let f32_inter = self.feed_forward.output.kernel.format() == Precision::F32;
        let bufs = FeedForwardBuffers {
            normed: grow(&mut ws.normed, m * h),
            inter: grow(
                &mut ws.inter,
                if f32_inter {
                    m * self.dims.intermediate_dim
                } else {
                    0
                },
            ),
            ffn: grow(&mut ws.ffn, m * h),
            // Post-norm: LN1 left x1 quantized in the second buffer.
            quant: if pre { [qa, qb] } else { [qb, qa] },
            carry: if carry_out { Some(&mut ws.carry) } else { None },
            product: &mut ws.product,
        };
        self.feed_forward_block(&ws.x1[..m * h], m, &call, bufs, out)?;
        ws.carried = carry_out;
        Ok(())
    }

    /// The matrix of the layer's first product when it takes the layer's input as it is (post-norm
    /// mode): a stack quantizes the previous layer's output for it.
    pub(crate) fn takes_input_for(&self) -> Option<&PackedMatrix> {
        let k = &self.attention.qkv.kernel;
        (!self.config.normalize_first && k.format() != Precision::F32).then_some(k)
    }

    /// Does the layer end with a LayerNorm that can quantize its output (post-norm mode)?
    pub(crate) fn ends_with_norm(&self) -> bool {
        !self.config.normalize_first
    }

    /// `x1 = x + dropout(attention(norm?(x)))`, then `LN1(x1)` in post-norm mode. Each
    /// product's input is quantized where it is produced when the product is int8 (the buffer is
    /// armed for the matrix; for float32 weights nothing is spent on it). In post-norm mode LN1's
    /// output is the feed-forward block's input, so it is quantized for that block's first
    /// product.
    pub(super) fn self_attention_block(
        &self,
        x: &[f32],
        m: usize,
        call: &Call<'_>,
        scores: Option<&mut [f32]>,
        b: AttentionBuffers<'_>,
        x1: &mut [f32],
        input_ready: bool,
    ) -> Result<()> {
        let k = self.kernels;
        let a = &self.attention;
        let pre = self.config.normalize_first;
        let eps = self.config.layer_norm_epsilon as f32;
        let h = self.dims.hidden_dim;
        let (g, par) = (&a.norm, call.par);
        if !input_ready {
            b.quant.arm_for(&a.qkv.kernel);
        }
        let input = if pre {
            let q = Some(&mut *b.quant);
            k.layer_norm(x, None, h, &g.gamma, &g.beta, eps, b.normed, None, q, par)?;
            &*b.normed
        } else {
            if !input_ready {
                k.prepare(x, h, b.quant, par)?;
            }
            x
        };
        let ep = bias(&a.qkv.bias);
        k.gemm_prepared(input, b.quant, m, &a.qkv.kernel, &ep, b.qkv, None, par)?;
        b.quant.arm_for(&a.output.kernel);
        let (heads, key_dim) = (self.dims.num_heads, self.dims.key_dim);
        let (keep, policy, dropout) = (call.keep, call.policy, call.dropout);
        let q = Some(&mut *b.quant);
        match call.layout {
            Layout::Uniform { batch, seq } => {
                let shape = AttentionShape {
                    batch,
                    seq,
                    heads,
                    key_dim,
                };
                let ctx = &mut *b.ctx;
                k.attention(
                    b.qkv, shape, keep, policy, dropout, ctx, scores, b.scratch, q, par,
                )?;
            }
            Layout::Ragged(lengths) => {
                let shape = RaggedShape {
                    lengths,
                    heads,
                    key_dim,
                };
                let (ctx, s) = (&mut *b.ctx, b.scratch);
                k.attention_ragged(b.qkv, shape, keep, policy, dropout, ctx, scores, s, q, par)?;
            }
        }
        if pre {
            // x1 = x + dropout(ctx Wo + bo)
            self.residual_projection(&a.output, b.ctx, b.quant, m, x, call, 1, b.attn, x1)
        } else {
            // x1 = LN1(x + dropout(ctx Wo + bo)), LN1's output quantized for the feed-forward
            // block's first product.
            let (wo, bo) = (&a.output.kernel, &a.output.bias);
            let norm = (&g.gamma[..], &g.beta[..], eps);
            let q_next = b.spare;
            q_next.arm_for(&self.feed_forward.intermediate.kernel);
            match call.dropout {
                // Without dropout each block of rows is normalised as soon as the product
                // finishes it.
                None => {
                    let q = Some(q_next);
                    k.gemm_layer_norm(
                        b.ctx,
                        b.quant,
                        m,
                        wo,
                        Some(bo),
                        Some(x),
                        norm,
                        b.attn,
                        x1,
                        q,
                        par,
                    )
                }
                Some((rate, seed)) => {
                    let ep = bias(bo);
                    k.gemm_prepared(b.ctx, b.quant, m, wo, &ep, b.attn, None, par)
                        .and_then(|()| {
                            apply_dropout(b.attn, h, call.layout, rate, seed, 1);
                            let q = Some(q_next);
                            k.layer_norm(b.attn, Some(x), h, norm.0, norm.1, eps, x1, None, q, par)
                        })
                }
            }?;
            Ok(())
        }
    }

    /// `y = x1 + dropout(W2 act(W1 norm?(x1)))`, then `LN2(y)` in post-norm mode. In post-norm
    /// mode `quant[0]` already holds `x1` quantized for W1 (by the attention block's LN1).
    pub(super) fn feed_forward_block(
        &self,
        x1: &[f32],
        m: usize,
        call: &Call<'_>,
        b: FeedForwardBuffers<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        let k = self.kernels;
        let f = &self.feed_forward;
        let pre = self.config.normalize_first;
        let eps = self.config.layer_norm_epsilon as f32;
        let h = self.dims.hidden_dim;
        let (g, par) = (&f.norm, call.par);
        let [q1, q2] = b.quant;
        let input = if pre {
            q1.arm_for(&f.intermediate.kernel);
            let q = Some(&mut *q1);
            k.layer_norm(x1, None, h, &g.gamma, &g.beta, eps, b.normed, None, q, par)?;
            &*b.normed
        } else {
            x1
        };
        let ep1 = Epilogue {
            bias: Some(&f.intermediate.bias),
            activation: Some(self.config.activation),
            residual: None,
        };
        // The activation's output, quantized for W2 while it is in cache (for int8 W2 it is
        // needed only quantized).
        q2.arm_for(&f.output.kernel);
        let kernel = &f.intermediate.kernel;
        if q2.is_armed() {
            k.gemm_quantized(q1, m, kernel, &ep1, q2, b.product, par)?;
        } else {
            k.gemm_prepared(input, q1, m, kernel, &ep1, b.inter, None, par)?;
        }
        if pre {
            self.residual_projection(&f.output, b.inter, q2, m, x1, call, 2, b.ffn, out)
        } else {
            // out = LN2(x1 + dropout(inter W2 + b2)), each block of rows normalised as soon as
            // the product finishes it when there is no dropout between them.
            let (w2, b2) = (&f.output.kernel, &f.output.bias);
            let norm = (&g.gamma[..], &g.beta[..], eps);
            match call.dropout {
                None => k.gemm_layer_norm(
                    b.inter,
                    q2,
                    m,
                    w2,
                    Some(b2),
                    Some(x1),
                    norm,
                    b.ffn,
                    out,
                    b.carry,
                    par,
                )?,
                Some((rate, seed)) => {
                    k.gemm_prepared(b.inter, q2, m, w2, &bias(b2), b.ffn, None, par)?;
                    apply_dropout(b.ffn, h, call.layout, rate, seed, 2);
                    k.layer_norm(
                        b.ffn,
                        Some(x1),
                        h,
                        norm.0,
                        norm.1,
                        eps,
                        out,
                        None,
                        b.carry,
                        par,
                    )?;
                }
            }
            Ok(())
        }
    }

    /// `out = residual + dropout(input P + bias)` (the residual fused into the product's
    /// epilogue when there is no dropout between them). `q` holds `input` quantized for `P` when
    /// `P` is int8.
    pub(super) fn residual_projection(
        &self,
        p: &Projection,
        input: &[f32],
        q: &QuantRows,
        m: usize,
        residual: &[f32],
        call: &Call<'_>,
        site: u64,
        tmp: &mut [f32],
        out: &mut [f32],
    ) -> Result<()> {
        let k = self.kernels;
        match call.dropout {
            None => {
                let ep = Epilogue {
                    bias: Some(&p.bias),
                    activation: None,
                    residual: Some(residual),
                };
                k.gemm_prepared(input, q, m, &p.kernel, &ep, out, None, call.par)?;
            }
            Some((rate, seed)) => {
                k.gemm_prepared(input, q, m, &p.kernel, &bias(&p.bias), tmp, None, call.par)?;
                let h = self.dims.hidden_dim;
                apply_dropout(tmp, h, call.layout, rate, seed, site);
                for ((o, a), r) in out.iter_mut().zip(tmp.iter()).zip(residual) {
                    *o = a + r;
                }
            }
        }
        Ok(())
    }
}

/// The workspace buffers of the attention block.
pub(super) struct AttentionBuffers<'a> {
    pub(super) normed: &'a mut [f32],
    pub(super) qkv: &'a mut [f32],
    pub(super) ctx: &'a mut [f32],
    pub(super) attn: &'a mut [f32],
    pub(super) scratch: &'a mut AttentionScratch,
    pub(super) quant: &'a mut QuantRows,
    /// Post-norm: LN1's output quantized for the feed-forward block's first product (the
    /// output projection still reads `quant` while LN1 runs block by block).
    pub(super) spare: &'a mut QuantRows,
}

/// The workspace buffers of the feed-forward block.
pub(super) struct FeedForwardBuffers<'a> {
    pub(super) normed: &'a mut [f32],
    pub(super) inter: &'a mut [f32],
    pub(super) ffn: &'a mut [f32],
    pub(super) quant: [&'a mut QuantRows; 2],
    /// Armed for the next layer's first product: LN2's output quantized for it.
    pub(super) carry: Option<&'a mut QuantRows>,
    pub(super) product: &'a mut ProductScratch,
}

/// Configuration and weights must describe the same layer.
pub(super) fn check_config(config: &EncoderConfig, dims: &WeightDims) -> Result<()> {
    config.validate(dims.hidden_dim)?;
    if config.num_heads != dims.num_heads {
        return Err(Error::weights(
            "self_attention_layer/query/kernel",
            format!(
                "the weights have {} heads but the configuration has num_heads = {}",
                dims.num_heads, config.num_heads
            ),
        ));
    }
    if config.intermediate_dim != dims.intermediate_dim {
        return Err(Error::weights(
            "feedforward_intermediate_dense/kernel",
            format!(
                "the weights have intermediate size {} but the configuration has intermediate_dim = {}",
                dims.intermediate_dim, config.intermediate_dim
            ),
        ));
    }
    Ok(())
}

/// An epilogue that adds a bias only.
pub(super) fn bias(t: &[f32]) -> Epilogue<'_> {
    Epilogue {
        bias: Some(t),
        activation: None::<Activation>,
        residual: None,
    }
}

/// Inverted dropout in place over rows of `width`: each element kept with probability
/// `1 - rate`, scaled by `1 / (1 - rate)`; the decision depends only on (seed, site, index
/// within its sequence), so a sequence draws the same whatever else the call holds.
pub(super) fn apply_dropout(
    x: &mut [f32],
    width: usize,
    layout: Layout<'_>,
    rate: f32,
    seed: u64,
    site: u64,
) {
    let scale = 1.0 / (1.0 - rate);
    layout.each(|start, len| {
        let seq = &mut x[start * width..(start + len) * width];
        for (i, v) in seq.iter_mut().enumerate() {
            *v = if rng::dropout_keep(seed, site, i as u64, rate) {
                *v * scale
            } else {
                0.0
            };
        }
    });
}
