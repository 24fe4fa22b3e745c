//! The synthetic encoder stack of `latency` and `concurrency`: its flags, the stack and an
//! input.

use super::{Args, Failure};
use transformer_encoder::{
    Activation, CallOptions, EncoderConfig, EncoderStack, EncoderWeights, Isa, Mask, Precision,
    Threads, TransformerEncoder,
};

/// The model flags (values), shared by both examples.
pub const FLAGS: [&str; 11] = [
    "hidden",
    "heads",
    "inter",
    "seq",
    "batch",
    "layers",
    "activation",
    "norm",
    "isa",
    "precision",
    "attention",
];

/// A stack built from the model flags, its input and padding mask (`--masked`).
pub struct Model {
    pub stack: EncoderStack,
    pub x: Vec<f32>,
    pub pad: Vec<u8>,
    pub shape: [usize; 3],
    pub layers: usize,
    pub pre: bool,
    pub activation: Activation,
    pub isa: Isa,
    pub precision: Precision,
}

impl Model {
    /// `--hidden --heads --inter --seq --batch --layers --activation --norm --isa --precision
    /// --attention` (defaults: one BERT-base layer at sequence 128, the attention's products as
    /// Keras computes them), on `threads`.
    pub fn from_args(a: &Args, threads: Threads) -> Result<Model, Failure> {
        let (hidden, heads, inter) = (
            a.num("hidden", 768)?,
            a.num("heads", 12)?,
            a.num("inter", 3072)?,
        );
        let (seq, batch, layers) = (a.num("seq", 128)?, a.num("batch", 1)?, a.num("layers", 1)?);
        let activation = match a.choice("activation", &["gelu", "relu"], "gelu")? {
            "relu" => Activation::Relu,
            _ => Activation::Gelu,
        };
        let pre = a.choice("norm", &["post", "pre"], "post")? == "pre";
        let isa = super::tier(a)?;
        let precision = super::precision(a)?;
        let cfg = EncoderConfig::new(inter, heads)
            .with_activation(activation)
            .with_normalize_first(pre)
            .with_layer_norm_epsilon(1e-5);
        let stack = EncoderStack::new(
            (0..layers)
                .map(|l| {
                    let w = EncoderWeights::init(&cfg, hidden, 100 + l as u64)?;
                    Ok(TransformerEncoder::with_isa(cfg.clone(), w, isa)?
                        .with_precision(precision)?
                        .with_threads(threads.clone()))
                })
                .collect::<Result<Vec<_>, transformer_encoder::Error>>()?,
        )?;
        // `--attention bf16`: the attention's products on bf16 tiles in every layer (an error
        // where the CPU has none).
        let stack = match a.choice("attention", &["keras", "bf16"], "keras")? {
            "bf16" => stack.with_bf16_attention()?,
            _ => stack,
        };
        let x: Vec<f32> = (0..batch * seq * hidden)
            .map(|i| transformer_encoder_kernels::rng::normal(7, 0, i as u64) as f32)
            .collect();
        let pad: Vec<u8> = (0..batch * seq)
            .map(|i| (i % seq < seq - seq / 4) as u8)
            .collect();
        Ok(Model {
            stack,
            x,
            pad,
            shape: [batch, seq, hidden],
            layers,
            pre,
            activation,
            isa,
            precision,
        })
    }

    /// The call's options: a padding mask with `--masked`.
    pub fn options(&self, masked: bool) -> CallOptions<'_> {
        let opts = CallOptions::new();
        if masked {
            opts.padding_mask(Mask::new(&self.pad, &self.shape[..2]))
        } else {
            opts
        }
    }
}
