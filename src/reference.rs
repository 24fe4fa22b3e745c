//! The whole layer computed naively in float64 (the oracle for the fast encoder), built from
//! the kernel crate's reference operations.

use crate::EncoderConfig;
use crate::encoder::{CallOptions, TensorView};
use crate::error::{Error, Result};
use crate::mask::merge;
use crate::weights::{Dense, EncoderWeights, NormRole};
use transformer_encoder_kernels::reference as r;
use transformer_encoder_kernels::{AttentionShape, rng};

/// The reference result: output `[B, S, H]` and probabilities `[B, N, S, S]`, in float64.
#[derive(Clone, Debug)]
pub struct ReferenceOutput {
    /// The layer output.
    pub output: Vec<f64>,
    /// The attention probabilities (before dropout).
    pub scores: Vec<f64>,
    /// One flag per token (`[B, S]`): its feed-forward input to the activation lies within
    /// [`JUMP_MARGIN`] of a jump of the activation ([`Activation::jumps`](crate::Activation::jumps)),
    /// where float32 rounding may legitimately take either side; the token's output is then not
    /// determined to float32 accuracy, and comparisons skip it. Always false for continuous
    /// activations.
    pub near_jump: Vec<bool>,
}

/// How close (absolute) to an activation's jump a float64 feed-forward input must lie for its
/// token to be flagged in [`ReferenceOutput::near_jump`]: a hundred times the float32 kernels'
/// error on those inputs in the property tests.
pub const JUMP_MARGIN: f64 = 1e-4;

/// Run the layer in float64 with the SPEC semantics. `scores_path` says whether the call asks for
/// attention scores (which selects Keras' zero-row behaviour under [`MaskedRowPolicy::Keras`](crate::MaskedRowPolicy::Keras)).
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
    let keep = merged.keep(&buf);
    let policy = opts.masked_rows.resolve(scores_path, config.dropout);
    let l = weights.sublayers();
    let f64s = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| x as f64).collect() };
    let dense = |d: Dense| (f64s(&l.dense(d).kernel), f64s(&l.dense(d).bias));
    let norm = |n: NormRole| (f64s(&l.norm(n).gamma), f64s(&l.norm(n).beta));
    let eps = config.layer_norm_epsilon;
    let rate = config.dropout as f32;
    let train = opts.training.filter(|_| rate > 0.0);
    let xin: Vec<f64> = data.iter().map(|&v| v as f64).collect();
    let pre = config.normalize_first;

    let (g1, b1) = norm(NormRole::SelfAttention);
    let (g2, b2) = norm(NormRole::FeedForward);
    let hin = if pre {
        r::layer_norm(&xin, h, &g1, &b1, eps)
    } else {
        xin.clone()
    };
    let project = |input: &[f64], d: Dense| {
        let (k, b) = dense(d);
        let (rows, cols) = weights.dims().matrix(d);
        r::linear(input, &k, &b, input.len() / rows.max(1), rows, cols)
    };
    let q = project(&hin, Dense::Query);
    let k = project(&hin, Dense::Key);
    let v = project(&hin, Dense::Value);
    let shape = AttentionShape {
        batch,
        seq,
        heads: n,
        key_dim: kd,
    };
    let (ctx, scores) = r::attention(&q, &k, &v, shape, keep, policy, train.map(|s| (rate, s)));
    let mut a = project(&ctx, Dense::AttentionOutput);
    if let Some(seed) = train {
        dropout(&mut a, seq * h, rate, seed, 1);
    }
    let mut x1: Vec<f64> = a.iter().zip(&xin).map(|(a, b)| a + b).collect();
    if !pre {
        x1 = r::layer_norm(&x1, h, &g1, &b1, eps);
    }
    let h2 = if pre {
        r::layer_norm(&x1, h, &g2, &b2, eps)
    } else {
        x1.clone()
    };
    let mut inter = project(&h2, Dense::Intermediate);
    let act = config.activation;
    let near_jump = (0..batch * seq)
        .map(|t| {
            inter
                .get(t * f..(t + 1) * f)
                .is_some_and(|row| row.iter().any(|&v| act.near_jump(v, JUMP_MARGIN)))
        })
        .collect();
    r::activation(act, &mut inter, f);
    let mut ff = project(&inter, Dense::Output);
    if let Some(seed) = train {
        dropout(&mut ff, seq * h, rate, seed, 2);
    }
    let mut y: Vec<f64> = ff.iter().zip(&x1).map(|(a, b)| a + b).collect();
    if !pre {
        y = r::layer_norm(&y, h, &g2, &b2, eps);
    }
    Ok(ReferenceOutput {
        output: y,
        scores,
        near_jump,
    })
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

/// Dropout drawn by position within each sequence of `per_seq` values.
fn dropout(x: &mut [f64], per_seq: usize, rate: f32, seed: u64, site: u64) {
    for (i, v) in x.iter_mut().enumerate() {
        *v = if rng::dropout_keep(seed, site, (i % per_seq.max(1)) as u64, rate) {
            *v / (1.0 - rate as f64)
        } else {
            0.0
        };
    }
}
