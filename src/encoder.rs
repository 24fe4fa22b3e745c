//! The encoder layer: construction, the forward pass (SPEC section 3) and its options.

use crate::config::{EncoderConfig, WeightPrecision};
use crate::error::{Error, Result};
use crate::mask::{Dims, Mask, merge};
use crate::weights::{Dense, DenseWeights, EncoderWeights, NormWeights, Sublayers, WeightDims};
use std::sync::Arc;
use transformer_encoder_kernels::{
    Activation, AttentionScratch, AttentionShape, Epilogue, Isa, KeepMask, Kernels, MaskedRows,
    PackedMatrix, Par, rng,
};

/// Where an encoder's kernels run their threads. Results are bit-identical for every choice.
///
/// ```
/// use std::sync::Arc;
/// use transformer_encoder::{EncoderConfig, Threads, TransformerEncoder};
/// let pool = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap());
/// let enc = TransformerEncoder::init(EncoderConfig::new(64, 8), 64, 1)
///     .unwrap()
///     .with_threads(Threads::Pool(pool));
/// # let _ = enc;
/// ```
#[derive(Clone, Debug, Default)]
pub enum Threads {
    /// The caller's thread only, with no rayon involvement at all.
    Single,
    /// Rayon's current context: the caller's pool inside `ThreadPool::install`, else the global
    /// pool (sized by `RAYON_NUM_THREADS`). Small problems still run on one thread.
    #[default]
    Current,
    /// A dedicated rayon pool.
    Pool(Arc<rayon::ThreadPool>),
}

/// An f32 input tensor: data and shape (the encoder takes rank 3, `[batch, seq, hidden]`).
///
/// ```
/// use transformer_encoder::TensorView;
/// let x = vec![0.0f32; 2 * 3 * 4];
/// let t = TensorView::new(&x, &[2, 3, 4]);
/// assert_eq!(t.data().len(), 24);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    data: &'a [f32],
    shape: Dims,
}

impl<'a> TensorView<'a> {
    /// A view of `data` with `shape` (checked when used).
    pub fn new(data: &'a [f32], shape: &[usize]) -> TensorView<'a> {
        TensorView {
            data,
            shape: Dims::new(shape),
        }
    }

    /// The values.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    /// `(batch, seq, hidden)` if the shape has rank 3.
    pub fn shape3(&self) -> Option<(usize, usize, usize)> {
        (self.shape.rank() == 3).then(|| (self.shape.get(0), self.shape.get(1), self.shape.get(2)))
    }

    /// `(batch, seq, hidden)` if the view is a well-formed rank-3 tensor.
    fn dims3(&self, arg: &str) -> Result<(usize, usize, usize)> {
        if self.shape.rank() != 3 {
            return Err(Error::shape(
                arg,
                "rank 3 [batch, seq, hidden]",
                self.shape.describe(),
            ));
        }
        let n = self.shape.elements();
        if n != Some(self.data.len()) {
            return Err(Error::shape(
                arg,
                format!(
                    "{} values for shape {}",
                    n.unwrap_or(usize::MAX),
                    self.shape.describe()
                ),
                format!("{} values", self.data.len()),
            ));
        }
        Ok((self.shape.get(0), self.shape.get(1), self.shape.get(2)))
    }
}

/// What a query row with every key masked gets (SPEC section 4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MaskedRowPolicy {
    /// Exactly what Keras does: all-zero probabilities when attention scores are requested or
    /// `dropout > 0` (its scores path), uniform 1/S otherwise (its fused path).
    #[default]
    Keras,
    /// Always all-zero probabilities: the row's attention output is the output bias alone.
    Zeros,
    /// Always 1/S on every key, masked or not.
    Uniform,
}

impl MaskedRowPolicy {
    /// The kernel's behaviour for a call: Keras' scores path (taken when scores are requested or
    /// `dropout > 0`) zeroes fully masked rows, its fused path makes them uniform.
    pub(crate) fn resolve(self, scores_path: bool, dropout: f64) -> MaskedRows {
        match self {
            MaskedRowPolicy::Zeros => MaskedRows::Zeros,
            MaskedRowPolicy::Uniform => MaskedRows::Uniform,
            MaskedRowPolicy::Keras if scores_path || dropout > 0.0 => MaskedRows::Zeros,
            MaskedRowPolicy::Keras => MaskedRows::Uniform,
        }
    }
}

/// The options of one call, as Keras' `call()` takes them.
///
/// ```
/// use transformer_encoder::{CallOptions, Mask, MaskedRowPolicy};
/// let pad = [1u8, 1, 0];
/// let opts = CallOptions::new()
///     .padding_mask(Mask::new(&pad[..], &[1, 3]))
///     .masked_rows(MaskedRowPolicy::Zeros);
/// # let _ = opts;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct CallOptions<'a> {
    /// Key padding mask `[B, S]`.
    pub padding_mask: Option<Mask<'a>>,
    /// Attention mask `[B, S, S]`.
    pub attention_mask: Option<Mask<'a>>,
    /// Training mode with this dropout seed (dropout acts only if the configuration's rate > 0).
    pub training: Option<u64>,
    /// The fully-masked-row policy.
    pub masked_rows: MaskedRowPolicy,
}

impl<'a> CallOptions<'a> {
    /// Inference, no masks, Keras' masked-row behaviour.
    pub fn new() -> Self {
        Self::default()
    }
    /// Set the padding mask `[B, S]`.
    pub fn padding_mask(mut self, m: Mask<'a>) -> Self {
        self.padding_mask = Some(m);
        self
    }
    /// Set the attention mask `[B, S, S]`.
    pub fn attention_mask(mut self, m: Mask<'a>) -> Self {
        self.attention_mask = Some(m);
        self
    }
    /// Training mode: dropout at Keras' three sites, drawn reproducibly from `seed`.
    pub fn training(mut self, seed: u64) -> Self {
        self.training = Some(seed);
        self
    }
    /// Set the fully-masked-row policy.
    pub fn masked_rows(mut self, p: MaskedRowPolicy) -> Self {
        self.masked_rows = p;
        self
    }
}

/// Reusable scratch space for [`TransformerEncoder::forward_into`]: one per thread of calls.
/// It grows to the largest call and is then reused without allocating.
#[derive(Debug, Default)]
pub struct Workspace {
    mask: Vec<u8>,
    normed: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    attn: Vec<f32>,
    x1: Vec<f32>,
    inter: Vec<f32>,
    ffn: Vec<f32>,
    scratch: AttentionScratch,
}

impl Workspace {
    /// An empty workspace.
    pub fn new() -> Workspace {
        Workspace::default()
    }
}

fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// A projection ready to run: its kernel packed once for the encoder's tier, and its bias.
#[derive(Debug)]
struct Projection {
    kernel: PackedMatrix,
    bias: Vec<f32>,
}

impl Projection {
    fn new(k: &Kernels, kernel: &[f32], rows: usize, cols: usize, bias: Vec<f32>) -> Result<Self> {
        Ok(Projection {
            kernel: k.pack(kernel, rows, cols)?,
            bias,
        })
    }

    fn bytes(&self) -> usize {
        self.kernel.bytes() + self.bias.capacity() * 4
    }
}

/// Keras' `self_attention_layer` (query, key and value fused into one product) and
/// `self_attention_layer_norm`.
#[derive(Debug)]
struct SelfAttention {
    qkv: Projection,
    output: Projection,
    norm: NormWeights,
}

/// Keras' `feedforward_intermediate_dense`, `feedforward_output_dense` and
/// `feedforward_layer_norm`.
#[derive(Debug)]
struct FeedForward {
    intermediate: Projection,
    output: Projection,
    norm: NormWeights,
}

fn norm_bytes(n: &NormWeights) -> usize {
    (n.gamma.capacity() + n.beta.capacity()) * 4
}

/// What one call does, resolved once: masks, the masked-row behaviour, dropout, threads.
struct Call<'a> {
    keep: KeepMask<'a>,
    policy: MaskedRows,
    /// `(rate, seed)` in training mode with dropout > 0.
    dropout: Option<(f32, u64)>,
    par: Par,
}

/// One `keras_hub.layers.TransformerEncoder` layer with its weights, ready to run.
///
/// `Send + Sync`; [`forward`](TransformerEncoder::forward) takes `&self`, so one encoder serves
/// many threads. It holds its weights once, packed for its instruction-set tier
/// ([`held_bytes`](TransformerEncoder::held_bytes)); [`weights`](TransformerEncoder::weights)
/// unpacks them in Keras' layout on request.
///
/// ```
/// use transformer_encoder::{CallOptions, EncoderConfig, TensorView, TransformerEncoder};
/// let enc = TransformerEncoder::init(EncoderConfig::new(64, 8), 64, 42).unwrap();
/// let x = vec![0.5f32; 2 * 10 * 64];
/// let y = enc.forward(TensorView::new(&x, &[2, 10, 64]), &CallOptions::new()).unwrap();
/// assert_eq!(y.len(), x.len());
/// ```
#[derive(Debug)]
pub struct TransformerEncoder {
    config: EncoderConfig,
    dims: WeightDims,
    kernels: &'static Kernels,
    attention: SelfAttention,
    feed_forward: FeedForward,
    threads: Threads,
}

impl TransformerEncoder {
    /// Build from a configuration and weights, on the default tier ([`Kernels::best`]: an error if
    /// `TRANSFORMER_ENCODER_ISA` names a tier this CPU lacks, or no tier).
    pub fn new(config: EncoderConfig, weights: EncoderWeights) -> Result<TransformerEncoder> {
        TransformerEncoder::build(config, weights, Kernels::best()?)
    }

    /// Build on a given instruction-set tier (an error if the CPU lacks it).
    pub fn with_isa(
        config: EncoderConfig,
        weights: EncoderWeights,
        isa: Isa,
    ) -> Result<TransformerEncoder> {
        TransformerEncoder::build(config, weights, Kernels::for_isa(isa)?)
    }

    /// Fresh weights drawn from the configuration's initializers, reproducible from `seed`.
    pub fn init(config: EncoderConfig, hidden_dim: usize, seed: u64) -> Result<TransformerEncoder> {
        let w = EncoderWeights::init(&config, hidden_dim, seed)?;
        TransformerEncoder::new(config, w)
    }

    fn build(
        config: EncoderConfig,
        weights: EncoderWeights,
        kernels: &'static Kernels,
    ) -> Result<TransformerEncoder> {
        let dims = weights.dims();
        check_config(&config, &dims)?;
        let weights = match config.weight_precision()? {
            WeightPrecision::F32 => weights,
            WeightPrecision::Bf16 => {
                weights.round_through("bfloat16", |v| half::bf16::from_f32(v).to_f32())?
            }
            WeightPrecision::F16 => {
                weights.round_through("float16", |v| half::f16::from_f32(v).to_f32())?
            }
        };
        let l = weights.sublayers();
        let (h, w) = dims.matrix(Dense::Query);
        let proj = |d: Dense| {
            let (rows, cols) = dims.matrix(d);
            let s = l.dense(d);
            Projection::new(kernels, &s.kernel, rows, cols, s.bias.clone())
        };
        // Query, key and value as one [H, 3W] product: [Wq | Wk | Wv].
        let mut wqkv = vec![0.0f32; h * 3 * w];
        for (i, d) in [Dense::Query, Dense::Key, Dense::Value]
            .into_iter()
            .enumerate()
        {
            for (r, row) in l.dense(d).kernel.chunks_exact(w).enumerate() {
                wqkv[r * 3 * w + i * w..][..w].copy_from_slice(row);
            }
        }
        let bqkv = [&l.query.bias[..], &l.key.bias, &l.value.bias].concat();
        let attention = SelfAttention {
            qkv: Projection::new(kernels, &wqkv, h, 3 * w, bqkv)?,
            output: proj(Dense::AttentionOutput)?,
            norm: l.self_attention_layer_norm.clone(),
        };
        drop(wqkv);
        let feed_forward = FeedForward {
            intermediate: proj(Dense::Intermediate)?,
            output: proj(Dense::Output)?,
            norm: l.feedforward_layer_norm.clone(),
        };
        Ok(TransformerEncoder {
            config,
            dims,
            kernels,
            attention,
            feed_forward,
            threads: Threads::default(),
        })
    }

    /// Choose where the kernels run their threads (default [`Threads::Current`]).
    pub fn with_threads(mut self, threads: Threads) -> Self {
        self.threads = threads;
        self
    }

    /// The thread setting.
    pub fn threads(&self) -> &Threads {
        &self.threads
    }

    /// The configuration.
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// The weights in Keras layout (after rounding to the storage precision), unpacked from the
    /// encoder's panels: exactly the values it computes with. (The encoder keeps no second copy;
    /// this allocates.)
    pub fn weights(&self) -> EncoderWeights {
        let (h, w) = self.dims.matrix(Dense::Query);
        let qkv = self.attention.qkv.kernel.unpack();
        let split = |i: usize| -> DenseWeights {
            let kernel = qkv
                .chunks_exact(3 * w)
                .flat_map(|row| row[i * w..(i + 1) * w].iter().copied())
                .collect();
            DenseWeights {
                kernel,
                bias: self.attention.qkv.bias[i * w..(i + 1) * w].to_vec(),
            }
        };
        let plain = |p: &Projection| DenseWeights {
            kernel: p.kernel.unpack(),
            bias: p.bias.clone(),
        };
        debug_assert_eq!(qkv.len(), h * 3 * w);
        let layers = Sublayers {
            query: split(0),
            key: split(1),
            value: split(2),
            attention_output: plain(&self.attention.output),
            self_attention_layer_norm: self.attention.norm.clone(),
            feedforward_layer_norm: self.feed_forward.norm.clone(),
            feedforward_intermediate_dense: plain(&self.feed_forward.intermediate),
            feedforward_output_dense: plain(&self.feed_forward.output),
        };
        // The sublayers came from validated weights of these sizes.
        EncoderWeights::new(self.dims, layers)
            .unwrap_or_else(|_| unreachable!("unpacked weights keep their validated shapes"))
    }

    /// The bytes this encoder holds on the heap (packed weights, biases, norms), plus itself.
    pub fn held_bytes(&self) -> usize {
        let a = &self.attention;
        let f = &self.feed_forward;
        std::mem::size_of::<Self>()
            + a.qkv.bytes()
            + a.output.bytes()
            + norm_bytes(&a.norm)
            + f.intermediate.bytes()
            + f.output.bytes()
            + norm_bytes(&f.norm)
    }

    /// The bytes of the packed weight matrices alone.
    pub fn packed_bytes(&self) -> usize {
        [
            &self.attention.qkv,
            &self.attention.output,
            &self.feed_forward.intermediate,
            &self.feed_forward.output,
        ]
        .iter()
        .map(|p| p.kernel.bytes())
        .sum()
    }

    /// The hidden size (the input's last dimension).
    pub fn hidden_dim(&self) -> usize {
        self.dims.hidden_dim
    }

    /// Heads.
    pub fn num_heads(&self) -> usize {
        self.dims.num_heads
    }

    /// The sizes of the weights.
    pub fn dims(&self) -> WeightDims {
        self.dims
    }

    /// The instruction-set tier this encoder runs on.
    pub fn isa(&self) -> Isa {
        self.kernels.isa()
    }

    /// Floating-point operations of one call on `[batch, seq, hidden]` (multiply-adds of the six
    /// products and the two attention products, counted as two), the measure the benchmarks and
    /// the anchors report GFLOP/s in.
    pub fn flops(&self, batch: usize, seq: usize) -> f64 {
        let d = self.dims;
        let w = (d.num_heads * d.key_dim) as f64;
        let (b, s, h, f) = (
            batch as f64,
            seq as f64,
            d.hidden_dim as f64,
            d.intermediate_dim as f64,
        );
        b * (2.0 * s * h * 3.0 * w + 4.0 * s * s * w + 2.0 * s * w * h + 4.0 * s * h * f)
    }

    /// Run the layer: `x` is `[batch, seq, hidden]`; returns `[batch, seq, hidden]`.
    pub fn forward(&self, x: TensorView<'_>, opts: &CallOptions<'_>) -> Result<Vec<f32>> {
        let mut out = vec![0.0; x.data.len()];
        self.forward_into(x, opts, &mut out, None, &mut Workspace::new())?;
        Ok(out)
    }

    /// Run the layer and also return the attention probabilities `[batch, heads, seq, seq]`
    /// (Keras' `return_attention_scores=True`; before dropout).
    pub fn forward_with_scores(
        &self,
        x: TensorView<'_>,
        opts: &CallOptions<'_>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (b, s, _) = x.dims3("inputs")?;
        let n = b
            .checked_mul(self.dims.num_heads)
            .and_then(|v| v.checked_mul(s))
            .and_then(|v| v.checked_mul(s))
            .ok_or_else(|| {
                Error::shape("inputs", "a size whose scores fit in memory", "an overflow")
            })?;
        let mut out = vec![0.0; x.data.len()];
        let mut scores = vec![0.0; n];
        self.forward_into(x, opts, &mut out, Some(&mut scores), &mut Workspace::new())?;
        Ok((out, scores))
    }

    /// Run the layer into caller-owned buffers: `out` is `[batch, seq, hidden]`, `scores` (if
    /// given, which also selects Keras' scores path for the masked-row policy) is
    /// `[batch, heads, seq, seq]`. On error nothing is written.
    pub fn forward_into(
        &self,
        x: TensorView<'_>,
        opts: &CallOptions<'_>,
        out: &mut [f32],
        scores: Option<&mut [f32]>,
        ws: &mut Workspace,
    ) -> Result<()> {
        match &self.threads {
            Threads::Single => self.run(x, opts, out, scores, ws, Par::Seq),
            Threads::Current => {
                let n = rayon::current_num_threads();
                self.run(x, opts, out, scores, ws, Par::Threads(n))
            }
            Threads::Pool(pool) => pool.install(|| {
                self.run(
                    x,
                    opts,
                    out,
                    scores,
                    ws,
                    Par::Threads(pool.current_num_threads()),
                )
            }),
        }
    }

    /// Check the call, then run the two blocks as Keras does.
    fn run(
        &self,
        x: TensorView<'_>,
        opts: &CallOptions<'_>,
        out: &mut [f32],
        scores: Option<&mut [f32]>,
        ws: &mut Workspace,
        par: Par,
    ) -> Result<()> {
        let (batch, seq, hidden) = x.dims3("inputs")?;
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
        if out.len() != x.data.len() {
            return Err(Error::shape(
                "out",
                format!("{} values ([{batch}, {seq}, {hidden}])", x.data.len()),
                format!("{} values", out.len()),
            ));
        }
        let heads = self.dims.num_heads;
        if let Some(s) = scores.as_deref() {
            let want = batch
                .checked_mul(heads)
                .and_then(|v| v.checked_mul(seq))
                .and_then(|v| v.checked_mul(seq))
                .ok_or_else(|| {
                    Error::shape("scores", "a size that fits in usize", "an overflow")
                })?;
            if s.len() != want {
                return Err(Error::shape(
                    "scores",
                    format!("{want} values ([{batch}, {heads}, {seq}, {seq}])"),
                    format!("{} values", s.len()),
                ));
            }
        }
        let merged = merge(
            opts.padding_mask.as_ref(),
            opts.attention_mask.as_ref(),
            batch,
            seq,
            &mut ws.mask,
        )?;
        if batch * seq == 0 {
            return Ok(());
        }
        let rate = self.config.dropout;
        let call = Call {
            keep: merged.keep(&ws.mask),
            policy: opts.masked_rows.resolve(scores.is_some(), rate),
            dropout: opts
                .training
                .filter(|_| rate > 0.0)
                .map(|seed| (rate as f32, seed)),
            par,
        };
        let shape = AttentionShape {
            batch,
            seq,
            heads,
            key_dim: self.dims.key_dim,
        };
        let m = batch * seq;
        let h = hidden;
        let x1 = grow(&mut ws.x1, m * h);
        let bufs = AttentionBuffers {
            normed: grow(&mut ws.normed, m * h),
            qkv: grow(&mut ws.qkv, m * 3 * heads * self.dims.key_dim),
            ctx: grow(&mut ws.ctx, m * heads * self.dims.key_dim),
            attn: grow(&mut ws.attn, m * h),
            scratch: &mut ws.scratch,
        };
        self.self_attention_block(x.data, shape, &call, scores, bufs, x1)?;
        let bufs = FeedForwardBuffers {
            normed: grow(&mut ws.normed, m * h),
            inter: grow(&mut ws.inter, m * self.dims.intermediate_dim),
            ffn: grow(&mut ws.ffn, m * h),
        };
        self.feed_forward_block(&ws.x1[..m * h], m, &call, bufs, out)
    }

    /// `x1 = x + dropout(attention(norm?(x)))`, then `LN1(x1)` in post-norm mode.
    fn self_attention_block(
        &self,
        x: &[f32],
        shape: AttentionShape,
        call: &Call<'_>,
        scores: Option<&mut [f32]>,
        b: AttentionBuffers<'_>,
        x1: &mut [f32],
    ) -> Result<()> {
        let k = self.kernels;
        let a = &self.attention;
        let m = shape.batch * shape.seq;
        let pre = self.config.normalize_first;
        let eps = self.config.layer_norm_epsilon as f32;
        let h = self.dims.hidden_dim;
        let input = if pre {
            k.layer_norm(
                x,
                None,
                h,
                &a.norm.gamma,
                &a.norm.beta,
                eps,
                b.normed,
                None,
                call.par,
            )?;
            &*b.normed
        } else {
            x
        };
        k.gemm(input, m, &a.qkv.kernel, &bias(&a.qkv.bias), b.qkv, call.par)?;
        k.attention(
            b.qkv,
            shape,
            call.keep,
            call.policy,
            call.dropout,
            b.ctx,
            scores,
            b.scratch,
            call.par,
        )?;
        if pre {
            // x1 = x + dropout(ctx Wo + bo)
            self.residual_projection(&a.output, b.ctx, m, x, call, 1, b.attn, x1)
        } else {
            // x1 = LN1(x + dropout(ctx Wo + bo))
            k.gemm(
                b.ctx,
                m,
                &a.output.kernel,
                &bias(&a.output.bias),
                b.attn,
                call.par,
            )?;
            if let Some((rate, seed)) = call.dropout {
                apply_dropout(b.attn, rate, seed, 1);
            }
            let g = &a.norm;
            k.layer_norm(
                b.attn,
                Some(x),
                h,
                &g.gamma,
                &g.beta,
                eps,
                x1,
                None,
                call.par,
            )?;
            Ok(())
        }
    }

    /// `y = x1 + dropout(W2 act(W1 norm?(x1)))`, then `LN2(y)` in post-norm mode.
    fn feed_forward_block(
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
        let input = if pre {
            k.layer_norm(
                x1,
                None,
                h,
                &f.norm.gamma,
                &f.norm.beta,
                eps,
                b.normed,
                None,
                call.par,
            )?;
            &*b.normed
        } else {
            x1
        };
        let ep1 = Epilogue {
            bias: Some(&f.intermediate.bias),
            activation: Some(self.config.activation),
            residual: None,
        };
        k.gemm(input, m, &f.intermediate.kernel, &ep1, b.inter, call.par)?;
        if pre {
            self.residual_projection(&f.output, b.inter, m, x1, call, 2, b.ffn, out)
        } else {
            k.gemm(
                b.inter,
                m,
                &f.output.kernel,
                &bias(&f.output.bias),
                b.ffn,
                call.par,
            )?;
            if let Some((rate, seed)) = call.dropout {
                apply_dropout(b.ffn, rate, seed, 2);
            }
            let g = &f.norm;
            k.layer_norm(
                b.ffn,
                Some(x1),
                h,
                &g.gamma,
                &g.beta,
                eps,
                out,
                None,
                call.par,
            )?;
            Ok(())
        }
    }

    /// `out = residual + dropout(input P + bias)` (the residual fused into the product's
    /// epilogue when there is no dropout between them).
    fn residual_projection(
        &self,
        p: &Projection,
        input: &[f32],
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
                k.gemm(input, m, &p.kernel, &ep, out, call.par)?;
            }
            Some((rate, seed)) => {
                k.gemm(input, m, &p.kernel, &bias(&p.bias), tmp, call.par)?;
                apply_dropout(tmp, rate, seed, site);
                for ((o, a), r) in out.iter_mut().zip(tmp.iter()).zip(residual) {
                    *o = a + r;
                }
            }
        }
        Ok(())
    }
}

/// The workspace buffers of the attention block.
struct AttentionBuffers<'a> {
    normed: &'a mut [f32],
    qkv: &'a mut [f32],
    ctx: &'a mut [f32],
    attn: &'a mut [f32],
    scratch: &'a mut AttentionScratch,
}

/// The workspace buffers of the feed-forward block.
struct FeedForwardBuffers<'a> {
    normed: &'a mut [f32],
    inter: &'a mut [f32],
    ffn: &'a mut [f32],
}

/// Configuration and weights must describe the same layer.
fn check_config(config: &EncoderConfig, dims: &WeightDims) -> Result<()> {
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
fn bias(t: &[f32]) -> Epilogue<'_> {
    Epilogue {
        bias: Some(t),
        activation: None::<Activation>,
        residual: None,
    }
}

/// Inverted dropout in place: each element kept with probability `1 - rate`, scaled by
/// `1 / (1 - rate)`; the decision depends only on (seed, site, index).
pub(crate) fn apply_dropout(x: &mut [f32], rate: f32, seed: u64, site: u64) {
    let scale = 1.0 / (1.0 - rate);
    for (i, v) in x.iter_mut().enumerate() {
        *v = if rng::dropout_keep(seed, site, i as u64, rate) {
            *v * scale
        } else {
            0.0
        };
    }
}
