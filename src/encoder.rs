//! The encoder layer: construction, the forward pass (SPEC section 3) and its options.

use crate::config::{EncoderConfig, WeightPrecision};
use crate::error::{Error, Result};
use crate::mask::{Dims, Mask, Merged, merge};
use crate::weights::{EncoderWeights, WeightDims};
use std::sync::Arc;
use transformer_encoder_kernels::{
    AttentionScratch, AttentionShape, Epilogue, Isa, KeepMask, Kernels, MaskedRows, PackedMatrix,
    Par, rng,
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

/// One `keras_hub.layers.TransformerEncoder` layer with its weights, ready to run.
///
/// `Send + Sync`; [`forward`](TransformerEncoder::forward) takes `&self`, so one encoder serves
/// many threads.
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
    weights: EncoderWeights,
    dims: WeightDims,
    kernels: &'static Kernels,
    wqkv: PackedMatrix,
    bqkv: Vec<f32>,
    wo: PackedMatrix,
    w1: PackedMatrix,
    w2: PackedMatrix,
    threads: Threads,
}

impl TransformerEncoder {
    /// Build from a configuration and weights, on the default tier ([`Kernels::best`]).
    pub fn new(config: EncoderConfig, weights: EncoderWeights) -> Result<TransformerEncoder> {
        TransformerEncoder::build(config, weights, Kernels::best())
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
        mut weights: EncoderWeights,
        kernels: &'static Kernels,
    ) -> Result<TransformerEncoder> {
        let dims = weights.dims();
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
        match config.weight_precision()? {
            WeightPrecision::F32 => {}
            WeightPrecision::Bf16 => {
                weights.round_through("bfloat16", |v| half::bf16::from_f32(v).to_f32())?
            }
            WeightPrecision::F16 => {
                weights.round_through("float16", |v| half::f16::from_f32(v).to_f32())?
            }
        }
        let (h, w, f) = (
            dims.hidden_dim,
            dims.num_heads * dims.key_dim,
            dims.intermediate_dim,
        );
        // Fused QKV: [H, 3W] = [Wq * scale | Wk | Wv]; 1/sqrt(D) folded into the query.
        let scale = (1.0 / (dims.key_dim as f64).sqrt()) as f32;
        let mut wqkv = vec![0.0f32; h * 3 * w];
        for r in 0..h {
            for c in 0..w {
                wqkv[r * 3 * w + c] = weights.tensor(0)[r * w + c] * scale;
                wqkv[r * 3 * w + w + c] = weights.tensor(2)[r * w + c];
                wqkv[r * 3 * w + 2 * w + c] = weights.tensor(4)[r * w + c];
            }
        }
        let mut bqkv = Vec::with_capacity(3 * w);
        bqkv.extend(weights.tensor(1).iter().map(|b| b * scale));
        bqkv.extend_from_slice(weights.tensor(3));
        bqkv.extend_from_slice(weights.tensor(5));
        let wqkv = kernels.pack(&wqkv, h, 3 * w)?;
        let wo = kernels.pack(weights.tensor(6), w, h)?;
        let w1 = kernels.pack(weights.tensor(12), h, f)?;
        let w2 = kernels.pack(weights.tensor(14), f, h)?;
        Ok(TransformerEncoder {
            config,
            weights,
            dims,
            kernels,
            wqkv,
            bqkv,
            wo,
            w1,
            w2,
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

    /// The weights in Keras layout (after rounding to the storage precision).
    pub fn weights(&self) -> &EncoderWeights {
        &self.weights
    }

    /// The hidden size (the input's last dimension).
    pub fn hidden_dim(&self) -> usize {
        self.dims.hidden_dim
    }

    /// Heads.
    pub fn num_heads(&self) -> usize {
        self.dims.num_heads
    }

    /// The instruction-set tier this encoder runs on.
    pub fn isa(&self) -> Isa {
        self.kernels.isa()
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
        let m = batch * seq;
        if m == 0 {
            return Ok(());
        }
        let dropout = self.config.dropout as f32;
        let train = opts.training.filter(|_| dropout > 0.0);
        let policy = match opts.masked_rows {
            MaskedRowPolicy::Zeros => MaskedRows::Zeros,
            MaskedRowPolicy::Uniform => MaskedRows::Uniform,
            MaskedRowPolicy::Keras => {
                if scores.is_some() || self.config.dropout > 0.0 {
                    MaskedRows::Zeros
                } else {
                    MaskedRows::Uniform
                }
            }
        };
        let keep = match merged {
            Merged::None => KeepMask::All,
            Merged::Keys => KeepMask::Keys(&ws.mask),
            Merged::Full => KeepMask::Full(&ws.mask),
        };
        let (h, w, f) = (
            hidden,
            heads * self.dims.key_dim,
            self.dims.intermediate_dim,
        );
        let k = self.kernels;
        let eps = self.config.layer_norm_epsilon as f32;
        let pre = self.config.normalize_first;
        let wt = |i: usize| self.weights.tensor(i);
        let xd = x.data;

        // Attention block.
        let normed = grow(&mut ws.normed, m * h);
        if pre {
            k.layer_norm(xd, None, h, wt(8), wt(9), eps, normed, None, par)?;
        }
        let qkv = grow(&mut ws.qkv, m * 3 * w);
        k.gemm(
            if pre { normed } else { xd },
            m,
            &self.wqkv,
            &bias(&self.bqkv),
            qkv,
            par,
        )?;
        let ctx = grow(&mut ws.ctx, m * w);
        let shape = AttentionShape {
            batch,
            seq,
            heads,
            key_dim: self.dims.key_dim,
        };
        let drop = train.map(|s| (dropout, s));
        k.attention(
            qkv,
            shape,
            keep,
            policy,
            drop,
            ctx,
            scores,
            &mut ws.scratch,
            par,
        )?;
        let attn = grow(&mut ws.attn, m * h);
        k.gemm(ctx, m, &self.wo, &bias(wt(7)), attn, par)?;
        if let Some(seed) = train {
            apply_dropout(attn, dropout, seed, 1);
        }
        let x1 = grow(&mut ws.x1, m * h);
        if pre {
            // x1 = attn + x, and LN2(x1) for the feed-forward input, in one pass.
            k.layer_norm(
                attn,
                Some(xd),
                h,
                wt(10),
                wt(11),
                eps,
                normed,
                Some(x1),
                par,
            )?;
        } else {
            k.layer_norm(attn, Some(xd), h, wt(8), wt(9), eps, x1, None, par)?;
        }

        // Feed-forward block.
        let inter = grow(&mut ws.inter, m * f);
        let ep1 = Epilogue {
            bias: Some(wt(13)),
            activation: Some(self.config.activation),
            ..Epilogue::default()
        };
        k.gemm(if pre { normed } else { x1 }, m, &self.w1, &ep1, inter, par)?;
        if pre && train.is_none() {
            let ep2 = Epilogue {
                bias: Some(wt(15)),
                residual: Some(x1),
                ..Epilogue::default()
            };
            k.gemm(inter, m, &self.w2, &ep2, out, par)?;
            return Ok(());
        }
        let ffn = grow(&mut ws.ffn, m * h);
        k.gemm(inter, m, &self.w2, &bias(wt(15)), ffn, par)?;
        if let Some(seed) = train {
            apply_dropout(ffn, dropout, seed, 2);
        }
        if pre {
            for ((o, a), r) in out.iter_mut().zip(ffn.iter()).zip(x1.iter()) {
                *o = a + r;
            }
        } else {
            k.layer_norm(ffn, Some(x1), h, wt(10), wt(11), eps, out, None, par)?;
        }
        Ok(())
    }
}

/// An epilogue that adds a bias only.
fn bias(t: &[f32]) -> Epilogue<'_> {
    Epilogue {
        bias: Some(t),
        ..Epilogue::default()
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
