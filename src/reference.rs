//! The whole layer computed naively in float64 (the oracle for the fast encoder), built from
//! the kernel crate's reference operations.

use crate::EncoderConfig;
use crate::encoder::{CallOptions, MaskedRowPolicy, TensorView};
use crate::error::{Error, Result};
use crate::mask::{Merged, merge};
use crate::weights::EncoderWeights;
use transformer_encoder_kernels::reference as r;
use transformer_encoder_kernels::{AttentionShape, KeepMask, MaskedRows, rng};

/// The reference result: output `[B, S, H]` and probabilities `[B, N, S, S]`, in float64.
#[derive(Clone, Debug)]
pub struct ReferenceOutput {
    /// The layer output.
    pub output: Vec<f64>,
    /// The attention probabilities (before dropout).
    pub scores: Vec<f64>,
}

/// Run the layer in float64 with the SPEC semantics. `scores_path` says whether the call asks for
/// attention scores (which selects Keras' zero-row behaviour under [`MaskedRowPolicy::Keras`]).
///
/// ```
/// use transformer_encoder::{reference, CallOptions, EncoderConfig, EncoderWeights, TensorView};
/// let cfg = EncoderConfig::new(8, 2);
/// let w = EncoderWeights::init(&cfg, 4, 1).unwrap();
/// let x = [0.1f32; 12];
/// let r = reference::forward(&cfg, &w, TensorView::new(&x, &[1, 3, 4]), &CallOptions::new(), false).unwrap();
/// assert_eq!(r.output.len(), 12);
/// ```
pub fn forward(
    config: &EncoderConfig,
    weights: &EncoderWeights,
    x: TensorView<'_>,
    opts: &CallOptions<'_>,
    scores_path: bool,
) -> Result<ReferenceOutput> {
    let d = weights.dims();
    config.validate(d.hidden_dim)?;
    let data = x.data();
    let (h, n, kd, f) = (d.hidden_dim, d.num_heads, d.key_dim, d.intermediate_dim);
    if h == 0 || !data.len().is_multiple_of(h) {
        return Err(Error::shape(
            "inputs",
            format!("a multiple of {h} values"),
            format!("{}", data.len()),
        ));
    }
    // The shape is taken from the view through the public forward's checks.
    let (batch, seq) = infer(x, h)?;
    let mut buf = Vec::new();
    let merged = merge(
        opts.padding_mask.as_ref(),
        opts.attention_mask.as_ref(),
        batch,
        seq,
        &mut buf,
    )?;
    let keep = match merged {
        Merged::None => KeepMask::All,
        Merged::Keys => KeepMask::Keys(&buf),
        Merged::Full => KeepMask::Full(&buf),
    };
    let policy = match opts.masked_rows {
        MaskedRowPolicy::Zeros => MaskedRows::Zeros,
        MaskedRowPolicy::Uniform => MaskedRows::Uniform,
        MaskedRowPolicy::Keras => {
            if scores_path || config.dropout > 0.0 {
                MaskedRows::Zeros
            } else {
                MaskedRows::Uniform
            }
        }
    };
    let w64 = |i: usize| -> Vec<f64> { weights.tensor(i).iter().map(|&v| v as f64).collect() };
    let m = batch * seq;
    let w = n * kd;
    let eps = config.layer_norm_epsilon;
    let rate = config.dropout as f32;
    let train = opts.training.filter(|_| rate > 0.0);
    let xin: Vec<f64> = data.iter().map(|&v| v as f64).collect();
    let pre = config.normalize_first;

    let hin = if pre {
        r::layer_norm(&xin, h, &w64(8), &w64(9), eps)
    } else {
        xin.clone()
    };
    let q = r::linear(&hin, &w64(0), &w64(1), m, h, w);
    let k = r::linear(&hin, &w64(2), &w64(3), m, h, w);
    let v = r::linear(&hin, &w64(4), &w64(5), m, h, w);
    let shape = AttentionShape {
        batch,
        seq,
        heads: n,
        key_dim: kd,
    };
    let (ctx, scores) = r::attention(&q, &k, &v, shape, keep, policy, train.map(|s| (rate, s)));
    let mut a = r::linear(&ctx, &w64(6), &w64(7), m, w, h);
    if let Some(seed) = train {
        dropout(&mut a, rate, seed, 1);
    }
    let mut x1: Vec<f64> = a.iter().zip(&xin).map(|(a, b)| a + b).collect();
    if !pre {
        x1 = r::layer_norm(&x1, h, &w64(8), &w64(9), eps);
    }
    let h2 = if pre {
        r::layer_norm(&x1, h, &w64(10), &w64(11), eps)
    } else {
        x1.clone()
    };
    let mut inter = r::linear(&h2, &w64(12), &w64(13), m, h, f);
    r::activation(config.activation, &mut inter, f);
    let mut ff = r::linear(&inter, &w64(14), &w64(15), m, f, h);
    if let Some(seed) = train {
        dropout(&mut ff, rate, seed, 2);
    }
    let mut y: Vec<f64> = ff.iter().zip(&x1).map(|(a, b)| a + b).collect();
    if !pre {
        y = r::layer_norm(&y, h, &w64(10), &w64(11), eps);
    }
    Ok(ReferenceOutput { output: y, scores })
}

fn infer(x: TensorView<'_>, h: usize) -> Result<(usize, usize)> {
    let sh = x.shape3();
    match sh {
        Some((b, s, hh)) if hh == h && b * s * h == x.data().len() => Ok((b, s)),
        _ => Err(Error::shape(
            "inputs",
            format!("[batch, seq, {h}]"),
            "another shape",
        )),
    }
}

fn dropout(x: &mut [f64], rate: f32, seed: u64, site: u64) {
    for (i, v) in x.iter_mut().enumerate() {
        *v = if rng::dropout_keep(seed, site, i as u64, rate) {
            *v / (1.0 - rate as f64)
        } else {
            0.0
        };
    }
}
