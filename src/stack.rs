//! A stack of encoder layers run one after another with the same masks.

use crate::encoder::{CallOptions, Carry, RaggedView, TensorView, TransformerEncoder, Workspace};
use crate::error::{Error, Result};

/// One layer's call in [`EncoderStack::chain`]: `(layer, input, output, workspace)`.
type LayerCall<'a> =
    dyn Fn(&TransformerEncoder, &[f32], &mut [f32], &mut Workspace) -> Result<()> + Sync + 'a;

/// `N` encoder layers applied in order (Keras: several `TransformerEncoder`s called in a row).
///
/// ```
/// use transformer_encoder::{CallOptions, EncoderConfig, EncoderStack, TensorView, TransformerEncoder};
/// let layers = (0..3)
///     .map(|i| TransformerEncoder::init(EncoderConfig::new(32, 4), 16, i))
///     .collect::<Result<Vec<_>, _>>()
///     .unwrap();
/// let stack = EncoderStack::new(layers).unwrap();
/// let x = vec![0.1f32; 5 * 16];
/// let y = stack.forward(TensorView::new(&x, &[1, 5, 16]), &CallOptions::new()).unwrap();
/// assert_eq!(y.len(), x.len());
/// ```
#[derive(Debug)]
pub struct EncoderStack {
    layers: Vec<TransformerEncoder>,
}

/// Scratch space for [`EncoderStack::forward_into`].
#[derive(Debug, Default)]
pub struct StackWorkspace {
    layer: Workspace,
    ping: Vec<f32>,
    /// A BERT model's embeddings and its last hidden state, reused from call to call.
    #[cfg(feature = "bert")]
    pub(crate) embed: crate::bert::EmbedScratch,
    #[cfg(feature = "bert")]
    pub(crate) hidden: Vec<f32>,
}

impl StackWorkspace {
    /// An empty workspace.
    pub fn new() -> StackWorkspace {
        StackWorkspace::default()
    }
}

impl EncoderStack {
    /// A stack of at least one layer, all of the same hidden size.
    pub fn new(layers: Vec<TransformerEncoder>) -> Result<EncoderStack> {
        let first = layers
            .first()
            .ok_or_else(|| Error::config("layers", "at least one layer, got 0"))?;
        let h = first.hidden_dim();
        for (i, l) in layers.iter().enumerate() {
            if l.hidden_dim() != h {
                return Err(Error::config(
                    "layers",
                    format!(
                        "every layer with hidden size {h}, layer {i} has {}",
                        l.hidden_dim()
                    ),
                ));
            }
        }
        Ok(EncoderStack { layers })
    }

    /// Set every layer's thread setting.
    pub fn with_threads(self, threads: crate::Threads) -> EncoderStack {
        EncoderStack {
            layers: self
                .layers
                .into_iter()
                .map(|l| l.with_threads(threads.clone()))
                .collect(),
        }
    }

    /// Every layer in `precision` (Keras' `quantize("int8")` of each layer for
    /// [`Precision::Int8`](crate::Precision::Int8)).
    ///
    /// ```
    /// use transformer_encoder::{EncoderConfig, EncoderStack, Precision, TransformerEncoder};
    /// let layers = (0..2)
    ///     .map(|i| TransformerEncoder::init(EncoderConfig::new(32, 4), 16, i))
    ///     .collect::<Result<Vec<_>, _>>()?;
    /// let stack = EncoderStack::new(layers)?.with_precision(Precision::Int8)?;
    /// assert!(stack.layers().iter().all(|l| l.precision() == Precision::Int8));
    /// # Ok::<(), transformer_encoder::Error>(())
    /// ```
    pub fn with_precision(self, precision: crate::Precision) -> Result<EncoderStack> {
        Ok(EncoderStack {
            layers: self
                .layers
                .into_iter()
                .map(|l| l.with_precision(precision))
                .collect::<Result<_>>()?,
        })
    }

    /// Every layer with its attention's products on bf16 tiles
    /// ([`TransformerEncoder::with_bf16_attention`], which has an example; an error where the
    /// CPU has no bf16 tiles).
    pub fn with_bf16_attention(self) -> Result<EncoderStack> {
        Ok(EncoderStack {
            layers: self
                .layers
                .into_iter()
                .map(TransformerEncoder::with_bf16_attention)
                .collect::<Result<_>>()?,
        })
    }

    /// The layers.
    pub fn layers(&self) -> &[TransformerEncoder] {
        &self.layers
    }

    /// Run every layer; returns the last layer's output.
    pub fn forward(&self, x: TensorView<'_>, opts: &CallOptions<'_>) -> Result<Vec<f32>> {
        let mut out = vec![0.0; x.data().len()];
        self.forward_into(x, opts, &mut out, &mut StackWorkspace::new())?;
        Ok(out)
    }

    /// Run every layer and return each layer's output (`hidden_states[i]` after layer `i`).
    pub fn forward_all(&self, x: TensorView<'_>, opts: &CallOptions<'_>) -> Result<Vec<Vec<f32>>> {
        let (b, s, h) = x.shape3().ok_or_else(|| {
            Error::shape("inputs", "rank 3 [batch, seq, hidden]", x.describe_shape())
        })?;
        let mut ws = Workspace::new();
        let mut states: Vec<Vec<f32>> = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let mut out = vec![0.0; x.data().len()];
            let input = if i == 0 {
                x
            } else {
                TensorView::new(&states[i - 1], &[b, s, h])
            };
            l.forward_into(input, opts, &mut out, None, &mut ws)?;
            states.push(out);
        }
        Ok(states)
    }

    /// Run every layer into `out` with a reusable workspace (no allocation after warm-up).
    pub fn forward_into(
        &self,
        x: TensorView<'_>,
        opts: &CallOptions<'_>,
        out: &mut [f32],
        ws: &mut StackWorkspace,
    ) -> Result<()> {
        let (b, s, h) = x.shape3().ok_or_else(|| {
            Error::shape("inputs", "rank 3 [batch, seq, hidden]", x.describe_shape())
        })?;
        self.chain(x.data(), out, ws, &|l, input, o, lws| {
            l.forward_into(TensorView::new(input, &[b, s, h]), opts, o, None, lws)
        })
    }

    /// Run every layer on sequences of different lengths packed end to end (see
    /// [`TransformerEncoder::forward_ragged`]); returns `[total_tokens, hidden]`, each
    /// sequence's rows bit-identical to the stack run on that sequence alone.
    ///
    /// ```
    /// use transformer_encoder::{CallOptions, EncoderConfig, EncoderStack, RaggedView, TransformerEncoder};
    /// let layers = (0..2)
    ///     .map(|i| TransformerEncoder::init(EncoderConfig::new(32, 4), 16, i))
    ///     .collect::<Result<Vec<_>, _>>()?;
    /// let stack = EncoderStack::new(layers)?;
    /// let x = vec![0.1f32; (3 + 7) * 16];
    /// let y = stack.forward_ragged(RaggedView::new(&x, &[3, 7]), &CallOptions::new())?;
    /// assert_eq!(y.len(), x.len());
    /// # Ok::<(), transformer_encoder::Error>(())
    /// ```
    pub fn forward_ragged(&self, x: RaggedView<'_>, opts: &CallOptions<'_>) -> Result<Vec<f32>> {
        let mut out = vec![0.0; x.data().len()];
        self.forward_ragged_into(x, opts, &mut out, &mut StackWorkspace::new())?;
        Ok(out)
    }

    /// [`forward_ragged`](EncoderStack::forward_ragged) into `out` with a reusable workspace
    /// (no allocation after warm-up).
    ///
    /// ```
    /// use transformer_encoder::{
    ///     CallOptions, EncoderConfig, EncoderStack, RaggedView, StackWorkspace, TransformerEncoder,
    /// };
    /// let layers = (0..2)
    ///     .map(|i| TransformerEncoder::init(EncoderConfig::new(32, 4), 16, i))
    ///     .collect::<Result<Vec<_>, _>>()?;
    /// let stack = EncoderStack::new(layers)?;
    /// let (x, mut out) = (vec![0.1f32; 9 * 16], vec![0.0f32; 9 * 16]);
    /// let mut ws = StackWorkspace::new();
    /// stack.forward_ragged_into(RaggedView::new(&x, &[4, 5]), &CallOptions::new(), &mut out, &mut ws)?;
    /// # Ok::<(), transformer_encoder::Error>(())
    /// ```
    pub fn forward_ragged_into(
        &self,
        x: RaggedView<'_>,
        opts: &CallOptions<'_>,
        out: &mut [f32],
        ws: &mut StackWorkspace,
    ) -> Result<()> {
        let lengths = x.lengths();
        self.chain(x.data(), out, ws, &|l, input, o, lws| {
            l.forward_ragged_into(RaggedView::new(input, lengths), opts, o, None, lws)
        })
    }

    /// Run `layer` for each layer in order, from `x` to `out`, in one team of threads.
    fn chain(
        &self,
        x: &[f32],
        out: &mut [f32],
        ws: &mut StackWorkspace,
        layer: &LayerCall<'_>,
    ) -> Result<()> {
        let n = x.len();
        if out.len() != n {
            return Err(Error::shape(
                "out",
                format!("{n} values (as many as the inputs)"),
                format!("{} values", out.len()),
            ));
        }
        if ws.ping.len() < n {
            ws.ping.resize(n, 0.0);
        }
        let count = self.layers.len();
        let ping = &mut ws.ping[..n];
        let lws = &mut ws.layer;
        // All layers in one team of threads (see TransformerEncoder::on_threads); each layer's
        // own call then joins it.
        self.layers[0].on_threads(move |_| -> Result<()> {
            // Alternate between `out` and the ping buffer so the last layer writes `out`.
            // In int8, a post-norm layer's last LayerNorm also quantizes its output for the next
            // layer's first product (the rows are in L1 then), and the next layer skips that pass.
            let mut carried = false;
            for (i, l) in self.layers.iter().enumerate() {
                let to_out = (count - 1 - i).is_multiple_of(2);
                if carried {
                    lws.set_carry(Carry::In);
                }
                // (Only between layers on the same tier: the quantized rows' layout is the tier's.)
                let next = self.layers.get(i + 1).filter(|n| n.isa() == l.isa());
                let next = next.and_then(|n| n.takes_input_for());
                if let Some(next) = next.filter(|_| l.ends_with_norm()) {
                    lws.set_carry(Carry::Out(next));
                }
                let r = match (i, to_out) {
                    (0, true) => layer(l, x, out, lws),
                    (0, false) => layer(l, x, ping, lws),
                    (_, true) => layer(l, ping, out, lws),
                    (_, false) => layer(l, out, ping, lws),
                };
                carried = lws.end_carry();
                r?;
            }
            Ok(())
        })
    }
}
