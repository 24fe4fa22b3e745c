//! The encoder layer: construction, the forward pass (SPEC section 3) and its options.

use crate::config::{EncoderConfig, WeightPrecision};
use crate::error::{Error, Result};
use crate::int8::{Int8Dense, Int8Weights};
use crate::mask::{Dims, Mask, merge, merge_ragged};
use crate::weights::{Dense, DenseWeights, EncoderWeights, NormWeights, Sublayers, WeightDims};
use std::sync::Arc;
use transformer_encoder_kernels::team;
use transformer_encoder_kernels::{
    Activation, AttentionScratch, AttentionShape, Epilogue, Isa, KeepMask, Kernels, MaskedRows,
    PackedMatrix, Par, Precision, ProductScratch, QuantRows, RaggedShape, rng,
};

/// How many threads an encoder's kernels use. Results are bit-identical for every choice.
///
/// A call on several threads is led by the calling thread with helper threads that the crate
/// keeps for that thread:
/// spawned on its first call, parked between calls (they spin for at most 50 µs after a job,
/// then sleep), ended with it. Concurrent callers each lead their own team and share nothing
/// on the hot path. The count is clamped to
/// [`MAX_THREADS`](transformer_encoder_kernels::team::MAX_THREADS) (256).
///
/// ```
/// use std::sync::Arc;
/// use transformer_encoder::{EncoderConfig, Threads, TransformerEncoder};
/// let enc = TransformerEncoder::init(EncoderConfig::new(64, 8), 64, 1)
///     .unwrap()
///     .with_threads(Threads::Count(2));
/// let pool = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap());
/// let on_pool = enc.clone().with_threads(Threads::Pool(pool));
/// # let _ = (enc, on_pool);
/// ```
#[derive(Clone, Debug, Default)]
pub enum Threads {
    /// The caller's thread only.
    Single,
    /// As many threads as rayon's current context has: the caller's pool inside
    /// `ThreadPool::install`, else the global pool (sized by `RAYON_NUM_THREADS`). Small
    /// problems still run on one thread.
    #[default]
    Current,
    /// `n` threads, led by the caller's: `Count(1)` is [`Threads::Single`]; `Count(0)` is an
    /// error of every call (`threads`).
    Count(usize),
    /// As many threads as the pool has, led by the caller's thread (the same as
    /// `Count(pool.current_num_threads())`: the team's helpers are the crate's own threads, not
    /// the pool's, so a call never waits for a free thread of the pool and the pool's threads
    /// never run a team's loop).
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

    /// The shape as an error message prints it (`[2, 64]`).
    pub(crate) fn describe_shape(&self) -> String {
        self.shape.describe()
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

/// Sequences of different lengths packed end to end (SPEC section 11): `data` is
/// `[total_tokens, hidden]` row-major, sequence `i` holding the next `lengths[i]` rows. Lengths
/// of 0 are allowed. Checked when used.
///
/// ```
/// use transformer_encoder::RaggedView;
/// let x = vec![0.0f32; (3 + 1 + 5) * 4]; // three sequences of hidden size 4
/// let lengths = [3, 1, 5];
/// let v = RaggedView::new(&x, &lengths);
/// assert_eq!(v.tokens(), Some(9));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct RaggedView<'a> {
    data: &'a [f32],
    lengths: &'a [usize],
}

impl<'a> RaggedView<'a> {
    /// A view of `data` holding sequences of `lengths` end to end.
    pub fn new(data: &'a [f32], lengths: &'a [usize]) -> RaggedView<'a> {
        RaggedView { data, lengths }
    }

    /// The values.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    /// Each sequence's length.
    pub fn lengths(&self) -> &'a [usize] {
        self.lengths
    }

    /// The total number of tokens (`None` if the sum overflows).
    pub fn tokens(&self) -> Option<usize> {
        self.lengths
            .iter()
            .try_fold(0usize, |t, &l| t.checked_add(l))
    }

    /// `sum(len_i^2)`: the size of the per-sequence `[len, len]` blocks end to end.
    pub fn squares(&self) -> Option<usize> {
        self.lengths.iter().try_fold(0usize, |t, &l| {
            l.checked_mul(l).and_then(|q| q.checked_add(t))
        })
    }
}

/// How the rows of a call split into sequences.
#[derive(Clone, Copy, Debug)]
enum Layout<'a> {
    /// `batch` sequences of `seq` rows.
    Uniform { batch: usize, seq: usize },
    /// Sequences of these lengths end to end.
    Ragged(&'a [usize]),
}

impl Layout<'_> {
    /// Call `f(first_row, len)` for each sequence.
    fn each(&self, mut f: impl FnMut(usize, usize)) {
        match *self {
            Layout::Uniform { batch, seq } => (0..batch).for_each(|b| f(b * seq, seq)),
            Layout::Ragged(lengths) => {
                let mut start = 0;
                for &len in lengths {
                    f(start, len);
                    start += len;
                }
            }
        }
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
    /// Key padding mask `[B, S]` (in a ragged call: `[T]`, one value per token).
    pub padding_mask: Option<Mask<'a>>,
    /// Attention mask `[B, S, S]` (in a ragged call: each sequence's `[len_i, len_i]` mask end
    /// to end, shape `[sum(len_i^2)]`).
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
    /// The int8 feed-forward's intermediate activation, a block of rows per thread.
    product: ProductScratch,
    /// The quantized input of the next int8 product, and of the one after (a product reads one
    /// while it fills the other); untouched for float32 weights.
    quant: [QuantRows; 2],
    /// Between the layers of a stack: a layer's output quantized for the next layer's first
    /// product by the layer's last LayerNorm, while each row is in L1 (see [`Carry`]).
    carry: QuantRows,
    carry_in: bool,
    carry_out: bool,
    carried: bool,
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

fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// A projection ready to run: its kernel packed once for the encoder's tier (float32 or int8
/// panels), and its bias.
#[derive(Clone, Debug)]
struct Projection {
    kernel: PackedMatrix,
    bias: Vec<f32>,
}

impl Projection {
    fn bytes(&self) -> usize {
        self.kernel.bytes() + self.bias.capacity() * 4
    }
}

/// The weights of a projection in one of the formats the encoder runs: how they are packed, and
/// how several projections of the same input are fused side by side. The one place the formats
/// differ; the encoder itself only chooses the format.
trait ProjectionWeights {
    fn bias(&self) -> &[f32];
    /// Projections of the same input side by side: their columns concatenated.
    fn side_by_side(parts: &[&Self], rows: usize) -> Self;
    fn pack(&self, k: &Kernels, rows: usize, cols: usize) -> Result<PackedMatrix>;
}

/// Row-major `[rows, c_i]` matrices side by side: `[rows, sum c_i]`.
fn concat_columns<T: Copy>(parts: &[&[T]], rows: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for r in 0..rows {
        for p in parts {
            let c = p.len() / rows.max(1);
            out.extend_from_slice(&p[r * c..(r + 1) * c]);
        }
    }
    out
}

/// Columns `c0..c1` of a row-major `[rows, cols]` matrix.
fn columns<T: Copy>(m: &[T], cols: usize, c0: usize, c1: usize) -> Vec<T> {
    m.chunks_exact(cols.max(1))
        .flat_map(|row| row[c0..c1].iter().copied())
        .collect()
}

impl ProjectionWeights for DenseWeights {
    fn bias(&self) -> &[f32] {
        &self.bias
    }
    fn side_by_side(parts: &[&Self], rows: usize) -> Self {
        let k: Vec<&[f32]> = parts.iter().map(|p| &p.kernel[..]).collect();
        DenseWeights {
            kernel: concat_columns(&k, rows),
            bias: parts.iter().flat_map(|p| p.bias.iter().copied()).collect(),
        }
    }
    fn pack(&self, k: &Kernels, rows: usize, cols: usize) -> Result<PackedMatrix> {
        Ok(k.pack(&self.kernel, rows, cols)?)
    }
}

impl ProjectionWeights for Int8Dense {
    fn bias(&self) -> &[f32] {
        &self.bias
    }
    fn side_by_side(parts: &[&Self], rows: usize) -> Self {
        let k: Vec<&[i8]> = parts.iter().map(|p| &p.kernel[..]).collect();
        Int8Dense {
            kernel: concat_columns(&k, rows),
            kernel_scale: parts
                .iter()
                .flat_map(|p| p.kernel_scale.iter().copied())
                .collect(),
            bias: parts.iter().flat_map(|p| p.bias.iter().copied()).collect(),
        }
    }
    fn pack(&self, k: &Kernels, rows: usize, cols: usize) -> Result<PackedMatrix> {
        Ok(k.pack_int8(&self.kernel, &self.kernel_scale, rows, cols)?)
    }
}

/// Float weights to be packed in bfloat16 (Keras' `mixed_bfloat16`).
struct Bf16Dense(DenseWeights);

impl ProjectionWeights for Bf16Dense {
    fn bias(&self) -> &[f32] {
        &self.0.bias
    }
    fn side_by_side(parts: &[&Self], rows: usize) -> Self {
        let inner: Vec<&DenseWeights> = parts.iter().map(|p| &p.0).collect();
        Bf16Dense(DenseWeights::side_by_side(&inner, rows))
    }
    fn pack(&self, k: &Kernels, rows: usize, cols: usize) -> Result<PackedMatrix> {
        Ok(k.pack_bf16(&self.0.kernel, rows, cols)?)
    }
}

/// Keras' `self_attention_layer` (query, key and value fused into one product) and
/// `self_attention_layer_norm`.
#[derive(Clone, Debug)]
struct SelfAttention {
    qkv: Projection,
    output: Projection,
    norm: NormWeights,
}

/// Keras' `feedforward_intermediate_dense`, `feedforward_output_dense` and
/// `feedforward_layer_norm`.
#[derive(Clone, Debug)]
struct FeedForward {
    intermediate: Projection,
    output: Projection,
    norm: NormWeights,
}

fn norm_bytes(n: &NormWeights) -> usize {
    (n.gamma.capacity() + n.beta.capacity()) * 4
}

/// A call's checked input: its rows, how they split into sequences, the merged masks.
#[derive(Clone, Copy)]
struct Rows<'a> {
    x: &'a [f32],
    layout: Layout<'a>,
    rows: usize,
    /// `sum(len^2)` over the sequences.
    squares: usize,
    merged: crate::mask::Merged,
}

/// What one call does, resolved once: masks, the masked-row behaviour, dropout, threads.
struct Call<'a> {
    layout: Layout<'a>,
    keep: KeepMask<'a>,
    policy: MaskedRows,
    /// `(rate, seed)` in training mode with dropout > 0.
    dropout: Option<(f32, u64)>,
    par: Par,
}

/// One `keras_hub.layers.TransformerEncoder` layer with its weights, ready to run.
///
/// `Send + Sync`; [`forward`](TransformerEncoder::forward) takes `&self`, so one encoder serves
/// many threads (a clone copies the packed weights). It holds its weights once, packed for its
/// instruction-set tier ([`held_bytes`](TransformerEncoder::held_bytes));
/// [`weights`](TransformerEncoder::weights) unpacks them in Keras' layout on request.
///
/// ```
/// use transformer_encoder::{CallOptions, EncoderConfig, TensorView, TransformerEncoder};
/// let enc = TransformerEncoder::init(EncoderConfig::new(64, 8), 64, 42).unwrap();
/// let x = vec![0.5f32; 2 * 10 * 64];
/// let y = enc.forward(TensorView::new(&x, &[2, 10, 64]), &CallOptions::new()).unwrap();
/// assert_eq!(y.len(), x.len());
/// ```
#[derive(Clone, Debug)]
pub struct TransformerEncoder {
    config: EncoderConfig,
    dims: WeightDims,
    kernels: &'static Kernels,
    attention: SelfAttention,
    feed_forward: FeedForward,
    threads: Threads,
}

impl TransformerEncoder {
    /// Build from a configuration and float weights, on the default tier ([`Kernels::best`]: an
    /// error if `TRANSFORMER_ENCODER_ISA` names a tier this CPU lacks, or no tier).
    pub fn new(config: EncoderConfig, weights: EncoderWeights) -> Result<TransformerEncoder> {
        TransformerEncoder::from_float(config, weights, Kernels::best()?)
    }

    /// Build on a given instruction-set tier (an error if the CPU lacks it).
    pub fn with_isa(
        config: EncoderConfig,
        weights: EncoderWeights,
        isa: Isa,
    ) -> Result<TransformerEncoder> {
        TransformerEncoder::from_float(config, weights, Kernels::for_isa(isa)?)
    }

    /// Build in Keras' int8 mode from its quantized variables (as loaded by
    /// [`Int8Weights::from_safetensors`]), on the default tier.
    ///
    /// ```
    /// use transformer_encoder::{CallOptions, EncoderConfig, EncoderWeights, Int8Weights, Precision, TensorView, TransformerEncoder};
    /// let cfg = EncoderConfig::new(64, 8);
    /// let w = Int8Weights::quantize(&EncoderWeights::init(&cfg, 64, 1)?);
    /// let enc = TransformerEncoder::new_int8(cfg, w)?;
    /// assert_eq!(enc.precision(), Precision::Int8);
    /// let x = vec![0.5f32; 10 * 64];
    /// let y = enc.forward(TensorView::new(&x, &[1, 10, 64]), &CallOptions::new())?;
    /// assert_eq!(y.len(), x.len());
    /// # Ok::<(), transformer_encoder::Error>(())
    /// ```
    pub fn new_int8(config: EncoderConfig, weights: Int8Weights) -> Result<TransformerEncoder> {
        let dims = weights.dims();
        TransformerEncoder::build(config, dims, weights.into_sublayers(), Kernels::best()?)
    }

    /// [`TransformerEncoder::new_int8`] on a given tier.
    pub fn with_isa_int8(
        config: EncoderConfig,
        weights: Int8Weights,
        isa: Isa,
    ) -> Result<TransformerEncoder> {
        let dims = weights.dims();
        let kernels = Kernels::for_isa(isa)?;
        TransformerEncoder::build(config, dims, weights.into_sublayers(), kernels)
    }

    /// Fresh weights drawn from the configuration's initializers, reproducible from `seed`.
    pub fn init(config: EncoderConfig, hidden_dim: usize, seed: u64) -> Result<TransformerEncoder> {
        let w = EncoderWeights::init(&config, hidden_dim, seed)?;
        TransformerEncoder::new(config, w)
    }

    /// What Keras' `model.quantize("int8")` does to this layer: the same layer in int8 mode
    /// (weights quantized per output unit), on the same tier and threads. An encoder that is
    /// int8 already is returned as it is (rebuilt).
    pub fn quantize(&self) -> Result<TransformerEncoder> {
        if self.precision() == Precision::Bf16 {
            return Err(Error::config(
                "precision",
                "int8 from a bf16 layer: its float weights are not kept (build it from them)",
            ));
        }
        let w = match self.int8_weights() {
            Some(w) => w,
            None => Int8Weights::quantize(&self.weights()),
        };
        let dims = w.dims();
        Ok(
            TransformerEncoder::build(self.config.clone(), dims, w.into_sublayers(), self.kernels)?
                .with_threads(self.threads.clone()),
        )
    }

    /// This layer in `precision`: a float32 layer quantized for [`Precision::Int8`] (Keras'
    /// `quantize("int8")`) or packed in bfloat16 for [`Precision::Bf16`] (Keras'
    /// `mixed_bfloat16`). An int8 or bf16 layer asked for another precision is an error: its
    /// float weights are gone (build it from them).
    ///
    /// ```
    /// use transformer_encoder::{EncoderConfig, Precision, TransformerEncoder};
    /// let enc = TransformerEncoder::init(EncoderConfig::new(64, 8), 64, 1)?;
    /// let bf16 = enc.with_precision(Precision::Bf16)?;
    /// assert_eq!(bf16.precision(), Precision::Bf16);
    /// assert!(bf16.with_precision(Precision::F32).is_err());
    /// # Ok::<(), transformer_encoder::Error>(())
    /// ```
    pub fn with_precision(self, precision: Precision) -> Result<TransformerEncoder> {
        match (self.precision(), precision) {
            (a, b) if a == b => Ok(self),
            (Precision::F32, Precision::Int8) => self.quantize(),
            (Precision::F32, Precision::Bf16) => {
                let w = self
                    .weights()
                    .round_through("bfloat16", |v| half::bf16::from_f32(v).to_f32())?;
                let dims = w.dims();
                let l = w.into_sublayers().map(Bf16Dense);
                Ok(
                    TransformerEncoder::build(self.config.clone(), dims, l, self.kernels)?
                        .with_threads(self.threads.clone()),
                )
            }
            (from, to) => Err(Error::config(
                "precision",
                format!(
                    "{to} from a {from} layer: its float weights are not kept (build it from them)"
                ),
            )),
        }
    }

    fn from_float(
        config: EncoderConfig,
        weights: EncoderWeights,
        kernels: &'static Kernels,
    ) -> Result<TransformerEncoder> {
        let bf16 = config.compute_precision()? == Precision::Bf16;
        let weights = match config.weight_precision()? {
            WeightPrecision::F32 if !bf16 => weights,
            WeightPrecision::F32 | WeightPrecision::Bf16 => {
                weights.round_through("bfloat16", |v| half::bf16::from_f32(v).to_f32())?
            }
            WeightPrecision::F16 => {
                weights.round_through("float16", |v| half::f16::from_f32(v).to_f32())?
            }
        };
        let dims = weights.dims();
        if config.compute_precision()? == Precision::Bf16 {
            // Keras' bfloat16 policies compute with the weights cast to bf16: their rounding
            // was checked above (a weight past bf16's range is an error, not an infinity).
            let l = weights.into_sublayers().map(Bf16Dense);
            return TransformerEncoder::build(config, dims, l, kernels);
        }
        TransformerEncoder::build(config, dims, weights.into_sublayers(), kernels)
    }

    /// Pack the sublayers (of either format) for `kernels`' tier: query, key and value fused
    /// into one `[H, 3W]` product. Each tensor is freed as soon as it is packed, the largest
    /// first, so that building holds the float (or int8) weights and their packed copy at once
    /// for one tensor only, not for the whole layer.
    fn build<D: ProjectionWeights>(
        config: EncoderConfig,
        dims: WeightDims,
        l: Sublayers<D>,
        kernels: &'static Kernels,
    ) -> Result<TransformerEncoder> {
        check_config(&config, &dims)?;
        // A kernel that refuses a matrix (int8's exact sums allow at most 65,536 input rows)
        // names the tensor and the configuration size behind its rows.
        let proj = |d: D, rows: usize, cols: usize, name: &str| -> Result<Projection> {
            let kernel = d.pack(kernels, rows, cols).map_err(|e| match e {
                Error::Kernel(k) => {
                    let size = if name == Dense::Output.path() {
                        "intermediate_dim"
                    } else {
                        "hidden_dim"
                    };
                    Error::weights(
                        &format!("{name}/kernel"),
                        format!("{size} = {rows} input rows: {}", k.message),
                    )
                }
                e => e,
            })?;
            Ok(Projection {
                kernel,
                bias: d.bias().to_vec(),
            })
        };
        let at = |d: D, role: Dense| {
            let (rows, cols) = dims.matrix(role);
            proj(d, rows, cols, role.path())
        };
        let Sublayers {
            query,
            key,
            value,
            attention_output,
            self_attention_layer_norm,
            feedforward_layer_norm,
            feedforward_intermediate_dense,
            feedforward_output_dense,
        } = l;
        let intermediate = at(feedforward_intermediate_dense, Dense::Intermediate)?;
        let output = at(feedforward_output_dense, Dense::Output)?;
        let attention_output = at(attention_output, Dense::AttentionOutput)?;
        let (h, w) = dims.matrix(Dense::Query);
        let qkv = D::side_by_side(&[&query, &key, &value], h);
        drop((query, key, value));
        let attention = SelfAttention {
            qkv: proj(qkv, h, 3 * w, "self_attention_layer/query, key and value")?,
            output: attention_output,
            norm: self_attention_layer_norm,
        };
        let feed_forward = FeedForward {
            intermediate,
            output,
            norm: feedforward_layer_norm,
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

    /// The precision of the projections.
    pub fn precision(&self) -> Precision {
        match self.attention.qkv.kernel.format() {
            Precision::F32 => Precision::F32,
            Precision::Bf16 => Precision::Bf16,
            Precision::Int8 => Precision::Int8,
        }
    }

    /// The float weights in Keras layout, unpacked from the encoder's panels (the encoder keeps
    /// no second copy; this allocates): exactly the values it computes with after rounding to
    /// the storage precision; for an int8 layer, the values its int8 weights stand for
    /// (`kernel / kernel_scale`).
    pub fn weights(&self) -> EncoderWeights {
        let (_, w) = self.dims.matrix(Dense::Query);
        let plain = |p: &Projection| DenseWeights {
            kernel: p.kernel.unpack(),
            bias: p.bias.clone(),
        };
        let qkv = plain(&self.attention.qkv);
        let split = |i: usize| DenseWeights {
            kernel: columns(&qkv.kernel, 3 * w, i * w, (i + 1) * w),
            bias: qkv.bias[i * w..(i + 1) * w].to_vec(),
        };
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

    /// Keras' int8 variables of an int8 layer (`None` for a float one).
    pub fn int8_weights(&self) -> Option<Int8Weights> {
        let (_, w) = self.dims.matrix(Dense::Query);
        let int8 = |p: &Projection| -> Option<Int8Dense> {
            let (kernel, kernel_scale) = p.kernel.int8_parts()?;
            Some(Int8Dense {
                kernel,
                kernel_scale,
                bias: p.bias.clone(),
            })
        };
        let qkv = int8(&self.attention.qkv)?;
        let split = |i: usize| Int8Dense {
            kernel: columns(&qkv.kernel, 3 * w, i * w, (i + 1) * w),
            kernel_scale: qkv.kernel_scale[i * w..(i + 1) * w].to_vec(),
            bias: qkv.bias[i * w..(i + 1) * w].to_vec(),
        };
        let layers = Sublayers {
            query: split(0),
            key: split(1),
            value: split(2),
            attention_output: int8(&self.attention.output)?,
            self_attention_layer_norm: self.attention.norm.clone(),
            feedforward_layer_norm: self.feed_forward.norm.clone(),
            feedforward_intermediate_dense: int8(&self.feed_forward.intermediate)?,
            feedforward_output_dense: int8(&self.feed_forward.output)?,
        };
        Int8Weights::new(self.dims, layers).ok()
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
        let (batch, seq, hidden) = x.dims3("inputs")?;
        self.check_hidden(hidden)?;
        // dims3 checked that batch * seq * hidden values exist, so the row count fits.
        let rows = batch * seq;
        let squares = rows.checked_mul(seq).ok_or_else(|| {
            Error::shape("inputs", "a size whose scores fit in usize", "an overflow")
        })?;
        let merged = merge(
            opts.padding_mask.as_ref(),
            opts.attention_mask.as_ref(),
            batch,
            seq,
            &mut ws.mask,
        )?;
        let call = Rows {
            x: x.data,
            layout: Layout::Uniform { batch, seq },
            rows,
            squares,
            merged,
        };
        // On several threads, one team for the whole call: the helpers stay awake from one
        // kernel to the next instead of being woken a dozen times.
        self.on_threads(|par| self.run(call, opts, out, scores, ws, par))
    }

    /// Run the layer on sequences of different lengths packed end to end (SPEC section 11);
    /// returns `[total_tokens, hidden]`. Each sequence's rows are bit-identical to
    /// [`forward`](TransformerEncoder::forward) on that sequence alone (a batch of one), on
    /// every tier and thread count, whatever else the call holds; no work is spent on padding.
    /// In `opts`, a padding mask has one value per token and an attention mask holds each
    /// sequence's `[len_i, len_i]` mask end to end; training-mode dropout draws by position
    /// within each sequence.
    ///
    /// ```
    /// use transformer_encoder::{CallOptions, EncoderConfig, RaggedView, TensorView, TransformerEncoder};
    /// let enc = TransformerEncoder::init(EncoderConfig::new(32, 4), 16, 7).unwrap();
    /// let lengths = [5, 2, 9];
    /// let x: Vec<f32> = (0..16 * 16).map(|i| (i as f32 * 0.37).sin()).collect();
    /// let y = enc.forward_ragged(RaggedView::new(&x, &lengths), &CallOptions::new()).unwrap();
    /// // The second sequence alone, as a batch of one: the same bits.
    /// let alone = enc
    ///     .forward(TensorView::new(&x[5 * 16..7 * 16], &[1, 2, 16]), &CallOptions::new())
    ///     .unwrap();
    /// assert_eq!(&y[5 * 16..7 * 16], &alone[..]);
    /// ```
    pub fn forward_ragged(&self, x: RaggedView<'_>, opts: &CallOptions<'_>) -> Result<Vec<f32>> {
        let mut out = vec![0.0; x.data.len()];
        self.forward_ragged_into(x, opts, &mut out, None, &mut Workspace::new())?;
        Ok(out)
    }

    /// [`forward_ragged`](TransformerEncoder::forward_ragged) that also returns the attention
    /// probabilities: each sequence's `[heads, len_i, len_i]`, end to end.
    ///
    /// ```
    /// use transformer_encoder::{CallOptions, EncoderConfig, RaggedView, TransformerEncoder};
    /// let enc = TransformerEncoder::init(EncoderConfig::new(32, 4), 16, 7).unwrap();
    /// let lengths = [3, 5];
    /// let x = vec![0.25f32; 8 * 16];
    /// let (y, scores) = enc
    ///     .forward_ragged_with_scores(RaggedView::new(&x, &lengths), &CallOptions::new())
    ///     .unwrap();
    /// assert_eq!((y.len(), scores.len()), (8 * 16, 4 * (3 * 3 + 5 * 5)));
    /// // Each query row's probabilities sum to 1.
    /// let first_row: f32 = scores[..3].iter().sum();
    /// assert!((first_row - 1.0).abs() < 1e-6);
    /// ```
    pub fn forward_ragged_with_scores(
        &self,
        x: RaggedView<'_>,
        opts: &CallOptions<'_>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = x
            .squares()
            .and_then(|q| q.checked_mul(self.dims.num_heads))
            .ok_or_else(|| {
                Error::shape(
                    "lengths",
                    "a size whose scores fit in memory",
                    "an overflow",
                )
            })?;
        let mut out = vec![0.0; x.data.len()];
        let mut scores = vec![0.0; n];
        self.forward_ragged_into(x, opts, &mut out, Some(&mut scores), &mut Workspace::new())?;
        Ok((out, scores))
    }

    /// [`forward_ragged`](TransformerEncoder::forward_ragged) into caller-owned buffers: `out`
    /// is `[total_tokens, hidden]`, `scores` (if given) each sequence's `[heads, len_i, len_i]`
    /// end to end. With a reused workspace no call allocates after the first of its size. On
    /// error nothing is written.
    ///
    /// ```
    /// use transformer_encoder::{CallOptions, EncoderConfig, RaggedView, TransformerEncoder, Workspace};
    /// let enc = TransformerEncoder::init(EncoderConfig::new(32, 4), 16, 7).unwrap();
    /// let mut ws = Workspace::new();
    /// let mut out = vec![0.0f32; 6 * 16];
    /// for lengths in [[1usize, 5], [4, 2], [0, 6]] {
    ///     let x = vec![0.5f32; 6 * 16];
    ///     enc.forward_ragged_into(RaggedView::new(&x, &lengths), &CallOptions::new(), &mut out,
    ///         None, &mut ws).unwrap();
    /// }
    /// // Lengths that do not cover the rows are an error naming the inputs.
    /// let x = vec![0.5f32; 6 * 16];
    /// let e = enc.forward_ragged_into(RaggedView::new(&x, &[2, 2]), &CallOptions::new(),
    ///     &mut out, None, &mut ws);
    /// assert!(e.unwrap_err().to_string().contains("inputs"));
    /// ```
    pub fn forward_ragged_into(
        &self,
        x: RaggedView<'_>,
        opts: &CallOptions<'_>,
        out: &mut [f32],
        scores: Option<&mut [f32]>,
        ws: &mut Workspace,
    ) -> Result<()> {
        let h = self.dims.hidden_dim;
        let rows = x
            .tokens()
            .ok_or_else(|| Error::shape("lengths", "a total that fits in usize", "an overflow"))?;
        let squares = x.squares().ok_or_else(|| {
            Error::shape("lengths", "a size whose masks fit in usize", "an overflow")
        })?;
        let want = rows.checked_mul(h);
        if want != Some(x.data.len()) {
            return Err(Error::shape(
                "inputs",
                format!(
                    "sum(lengths) * hidden = {rows} * {h} = {} values",
                    want.map_or("an overflow".to_string(), |n| n.to_string())
                ),
                format!("{} values", x.data.len()),
            ));
        }
        let merged = merge_ragged(
            opts.padding_mask.as_ref(),
            opts.attention_mask.as_ref(),
            x.lengths,
            rows,
            squares,
            &mut ws.mask,
        )?;
        let call = Rows {
            x: x.data,
            layout: Layout::Ragged(x.lengths),
            rows,
            squares,
            merged,
        };
        self.on_threads(|par| self.run(call, opts, out, scores, ws, par))
    }

    /// The inputs' last dimension must be the weights' hidden size.
    fn check_hidden(&self, hidden: usize) -> Result<()> {
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
    fn run(
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
    fn self_attention_block(
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
    fn residual_projection(
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
struct AttentionBuffers<'a> {
    normed: &'a mut [f32],
    qkv: &'a mut [f32],
    ctx: &'a mut [f32],
    attn: &'a mut [f32],
    scratch: &'a mut AttentionScratch,
    quant: &'a mut QuantRows,
    /// Post-norm: LN1's output quantized for the feed-forward block's first product (the
    /// output projection still reads `quant` while LN1 runs block by block).
    spare: &'a mut QuantRows,
}

/// The workspace buffers of the feed-forward block.
struct FeedForwardBuffers<'a> {
    normed: &'a mut [f32],
    inter: &'a mut [f32],
    ffn: &'a mut [f32],
    quant: [&'a mut QuantRows; 2],
    /// Armed for the next layer's first product: LN2's output quantized for it.
    carry: Option<&'a mut QuantRows>,
    product: &'a mut ProductScratch,
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

/// Inverted dropout in place over rows of `width`: each element kept with probability
/// `1 - rate`, scaled by `1 / (1 - rate)`; the decision depends only on (seed, site, index
/// within its sequence), so a sequence draws the same whatever else the call holds.
fn apply_dropout(x: &mut [f32], width: usize, layout: Layout<'_>, rate: f32, seed: u64, site: u64) {
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
