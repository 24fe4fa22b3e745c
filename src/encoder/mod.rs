//! The encoder layer: construction, the forward pass (SPEC section 3) and its options.

use crate::config::{EncoderConfig, WeightPrecision};
use crate::error::{Error, Result};
use crate::int8::{Int8Dense, Int8Weights};
use crate::mask::{Dims, Mask, merge, merge_ragged};
use crate::weights::{
    Dense, DenseWeights, EncoderWeights, NormWeights, Rounding, Sublayers, WeightDims,
};
use std::sync::Arc;
use transformer_encoder_kernels::team;
use transformer_encoder_kernels::{
    Activation, AttentionScratch, AttentionShape, Epilogue, Isa, KeepMask, Kernels, MaskedRows,
    PackedMatrix, Par, Precision, ProductScratch, QuantRows, RaggedShape, rng,
};

mod forward;
mod options;
mod pack;

pub(crate) use forward::Carry;
pub use forward::Workspace;
use forward::{Rows, check_config};
use options::Layout;
pub use options::{CallOptions, MaskedRowPolicy, RaggedView, TensorView, Threads};
use pack::{Bf16Dense, FeedForward, Projection, SelfAttention, columns, norm_bytes};

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

    /// The layer of `config` over the weights in a safetensors file under `prefix` (the names of
    /// [`EncoderWeights::from_safetensors`], or Keras' int8 variables of
    /// [`Int8Weights::from_safetensors`] when the file has `kernel_scale` tensors), on the default
    /// tier. Each projection is read as it is packed and freed before the next is read, so
    /// loading peaks near the packed size, not at the file's float weights beside their packed
    /// copy (`EncoderWeights::from_safetensors_file` then [`new`](TransformerEncoder::new)).
    ///
    /// ```
    /// use transformer_encoder::{EncoderConfig, EncoderWeights, TransformerEncoder};
    /// let cfg = EncoderConfig::new(128, 4);
    /// let path = std::env::temp_dir().join(format!("te-doc-{}.safetensors", std::process::id()));
    /// EncoderWeights::init(&cfg, 64, 7)?.save_safetensors(&path, "")?;
    /// let enc = TransformerEncoder::from_safetensors_file(cfg, &path, "")?;
    /// assert_eq!(enc.hidden_dim(), 64);
    /// # std::fs::remove_file(&path).ok();
    /// # Ok::<(), transformer_encoder::Error>(())
    /// ```
    pub fn from_safetensors_file(
        config: EncoderConfig,
        path: impl AsRef<std::path::Path>,
        prefix: &str,
    ) -> Result<TransformerEncoder> {
        let store = crate::store::TensorStore::open(path.as_ref())?;
        TransformerEncoder::from_store(config, &store, prefix, Kernels::best()?)
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
            (Precision::F32, Precision::Bf16) => Ok(TransformerEncoder::from_float_in(
                self.config.clone(),
                self.weights(),
                self.kernels,
                Precision::Bf16,
            )?
            .with_threads(self.threads.clone())),
            (from, to) => Err(Error::config(
                "precision",
                format!(
                    "{to} from a {from} layer: its float weights are not kept (build it from them)"
                ),
            )),
        }
    }

    /// A layer in `precision` straight from its float weights, as [`with_precision`] makes it
    /// from a float32 layer, without building that layer first (loaders use it so that a model
    /// loaded in int8 or bf16 never holds its float32 layers).
    ///
    /// [`with_precision`]: TransformerEncoder::with_precision
    pub(crate) fn from_float_in(
        config: EncoderConfig,
        weights: EncoderWeights,
        kernels: &'static Kernels,
        precision: Precision,
    ) -> Result<TransformerEncoder> {
        match precision {
            Precision::F32 => TransformerEncoder::from_float(config, weights, kernels),
            Precision::Int8 => {
                let w = Int8Weights::quantize(&weights);
                drop(weights);
                let dims = w.dims();
                TransformerEncoder::build(config, dims, w.into_sublayers(), kernels)
            }
            Precision::Bf16 => {
                let w = weights.round_through(Rounding::BF16)?;
                let dims = w.dims();
                TransformerEncoder::build(config, dims, w.into_sublayers().map(Bf16Dense), kernels)
            }
        }
    }

    /// This layer with the attention's two products (`Q·Kᵀ` and `P·V`) on bf16 operands, summed
    /// in float32 on AMX-BF16 tiles, for sequences of 64 tokens or more (masking, softmax and
    /// dropout stay float32): what a bf16 layer always does, offered to float32 and int8 layers
    /// as an option beyond Keras' semantics (Keras keeps their attention float32), faster on long
    /// sequences. An error on a CPU (or a forced tier) without bf16 tiles.
    ///
    /// ```
    /// use transformer_encoder::{EncoderConfig, Precision, TransformerEncoder};
    /// let enc = TransformerEncoder::init(EncoderConfig::new(64, 8), 64, 1)?.with_precision(Precision::Int8)?;
    /// assert!(!enc.bf16_attention());
    /// match enc.with_bf16_attention() {
    ///     Ok(e) => assert!(e.bf16_attention()),
    ///     Err(e) => assert!(e.to_string().contains("bf16_attention")),
    /// }
    /// # Ok::<(), transformer_encoder::Error>(())
    /// ```
    pub fn with_bf16_attention(mut self) -> Result<TransformerEncoder> {
        match self.kernels.with_bf16_attention() {
            Some(k) => {
                self.kernels = k;
                Ok(self)
            }
            None => Err(Error::config(
                "bf16_attention",
                format!(
                    "bf16 tiles for the attention's bf16 products (the {} tier here runs bf16 \
                     products {}: tiles need AMX-BF16, and TRANSFORMER_ENCODER_BF16 unset or \
                     `tiles`)",
                    self.kernels.isa(),
                    self.kernels.bf16_kernel().name()
                ),
            )),
        }
    }

    /// Whether every sequence of 64 tokens or more runs the attention's products on bf16 tiles
    /// in this layer whatever its precision ([`with_bf16_attention`]); a bf16 layer does so on
    /// a CPU with bf16 tiles either way.
    ///
    /// [`with_bf16_attention`]: TransformerEncoder::with_bf16_attention
    pub fn bf16_attention(&self) -> bool {
        self.kernels.bf16_attention_for_all()
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
}
