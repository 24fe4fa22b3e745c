//! The naive reference: every operation of the layer, written as plainly as possible and
//! accumulated in float64. It is the oracle the fast kernels are tested against.
//!
//! These are test oracles, not service entry points: they index their arguments directly and
//! panic on inconsistent lengths (the encoder-level oracle, `transformer_encoder::reference`,
//! validates its input and returns errors).

use crate::activation::Activation;
use crate::{AttentionShape, KeepMask, MaskedRows};

/// `C[m, n] = A[m, k] · B[k, n]`, row-major, f64 accumulation.
pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    assert!(
        a.len() == m * k && b.len() == k * n,
        "reference matmul shapes"
    );
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for p in 0..k {
            let av = a[i * k + p];
            for j in 0..n {
                c[i * n + j] += av * b[p * n + j];
            }
        }
    }
    c
}

/// `A·B + bias` (bias broadcast over rows).
pub fn linear(a: &[f64], w: &[f64], bias: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = matmul(a, w, m, k, n);
    for row in c.chunks_mut(n.max(1)) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
    c
}

/// LayerNorm over rows of length `n`: population variance from centred values, epsilon inside
/// the square root: `(x - mean) / sqrt(var + eps) * gamma + beta`.
pub fn layer_norm(x: &[f64], n: usize, gamma: &[f64], beta: &[f64], eps: f64) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    if n == 0 {
        return out;
    }
    for (row, o) in x.chunks(n).zip(out.chunks_mut(n)) {
        let mean = row.iter().sum::<f64>() / n as f64;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for j in 0..n {
            o[j] = (row[j] - mean) * inv * gamma[j] + beta[j];
        }
    }
    out
}

/// Masked softmax of one row. Masked keys get exactly 0 and contribute nothing; a row with no
/// kept key follows `policy` (zeros, or 1/S over every key).
pub fn masked_softmax(logits: &[f64], keep: &[bool], policy: MaskedRows) -> Vec<f64> {
    let s = logits.len();
    if !keep.iter().any(|&k| k) {
        return match policy {
            MaskedRows::Zeros => vec![0.0; s],
            MaskedRows::Uniform => vec![1.0 / s as f64; s],
        };
    }
    let m = logits
        .iter()
        .zip(keep)
        .filter(|(_, k)| **k)
        .map(|(l, _)| *l)
        .fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits
        .iter()
        .zip(keep)
        .map(|(l, k)| if *k { (l - m).exp() } else { 0.0 })
        .collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

/// Multi-head attention core. `q`, `k`, `v` are `[B*S, N*D]` row-major (head `n` is columns
/// `n*D..(n+1)*D`), `q` NOT yet scaled. Returns the context `[B*S, N*D]` and the probabilities
/// `[B, N, S, S]`. A masked key contributes nothing to a row with a kept key, whatever its value.
/// `dropout` is `(rate, seed)`: probabilities are dropped (inverted dropout, site 0) after being
/// recorded, drawn by position within the sequence (`(n * S + i) * S + j`: every batch item draws
/// the same stream).
pub fn attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    dims: AttentionShape,
    mask: KeepMask<'_>,
    policy: MaskedRows,
    dropout: Option<(f32, u64)>,
) -> (Vec<f64>, Vec<f64>) {
    let AttentionShape {
        batch,
        seq,
        heads,
        key_dim,
    } = dims;
    let w = heads * key_dim;
    let scale = 1.0 / (key_dim as f64).sqrt();
    let mut ctx = vec![0.0; batch * seq * w];
    let mut probs = vec![0.0; batch * heads * seq * seq];
    for b in 0..batch {
        for n in 0..heads {
            for i in 0..seq {
                let qi = &q[(b * seq + i) * w + n * key_dim..][..key_dim];
                let mut logits = vec![0.0; seq];
                let mut keep = vec![false; seq];
                for j in 0..seq {
                    keep[j] = mask.keep(b, i, j, seq);
                    if keep[j] {
                        let kj = &k[(b * seq + j) * w + n * key_dim..][..key_dim];
                        logits[j] = qi.iter().zip(kj).map(|(a, c)| a * c).sum::<f64>() * scale;
                    }
                }
                let p = masked_softmax(&logits, &keep, policy);
                let prow = (b * heads + n) * seq * seq + i * seq;
                probs[prow..prow + seq].copy_from_slice(&p);
                let all_masked = !keep.iter().any(|&x| x);
                for j in 0..seq {
                    let mut pj = p[j];
                    if let Some((rate, seed)) = dropout {
                        pj = if crate::rng::dropout_keep(
                            seed,
                            0,
                            (n * seq + i) as u64 * seq as u64 + j as u64,
                            rate,
                        ) {
                            pj / (1.0 - rate as f64)
                        } else {
                            0.0
                        };
                    }
                    // Masked keys are skipped (not multiplied by zero), so NaN/Inf in a masked
                    // value row cannot leak; the uniform policy weights every key by design.
                    let used = keep[j] || (all_masked && policy == MaskedRows::Uniform);
                    if !used || pj == 0.0 {
                        continue;
                    }
                    let vj = &v[(b * seq + j) * w + n * key_dim..][..key_dim];
                    let out = &mut ctx[(b * seq + i) * w + n * key_dim..][..key_dim];
                    for d in 0..key_dim {
                        out[d] += pj * vj[d];
                    }
                }
            }
        }
    }
    (ctx, probs)
}

/// Ragged attention (SPEC section 11), by definition: each sequence of `lengths` alone, through
/// [`attention`] with a batch of one, with its own slice of the mask (`Keys`: its rows' flags;
/// `Full`: its `[len, len]` block). Returns the context `[T, N*D]` and every sequence's
/// `[N, len, len]` probabilities end to end.
pub fn attention_ragged(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    lengths: &[usize],
    heads: usize,
    key_dim: usize,
    mask: KeepMask<'_>,
    policy: MaskedRows,
    dropout: Option<(f32, u64)>,
) -> (Vec<f64>, Vec<f64>) {
    let w = heads * key_dim;
    let (mut ctx, mut probs) = (Vec::new(), Vec::new());
    let (mut start, mut square) = (0, 0);
    for &len in lengths {
        let rows = start * w..(start + len) * w;
        let m = match mask {
            KeepMask::All => KeepMask::All,
            KeepMask::Keys(f) => KeepMask::Keys(&f[start..start + len]),
            KeepMask::Full(f) => KeepMask::Full(&f[square..square + len * len]),
        };
        let shape = AttentionShape {
            batch: 1,
            seq: len,
            heads,
            key_dim,
        };
        let (c, p) = attention(
            &q[rows.clone()],
            &k[rows.clone()],
            &v[rows],
            shape,
            m,
            policy,
            dropout,
        );
        ctx.extend(c);
        probs.extend(p);
        start += len;
        square += len * len;
    }
    (ctx, probs)
}

/// Apply an activation to rows of length `n` in f64.
pub fn activation(act: Activation, x: &mut [f64], n: usize) {
    if n == 0 {
        return;
    }
    for row in x.chunks_mut(n) {
        act.eval_row_f64(row);
    }
}

/// Keras' per-row int8 quantization in float32 (`abs_max_quantize`): the quantized rows and each
/// row's scale `s = 127 / (max |x| + 1e-7)`. A row holding NaN or an infinity gives zeros and a
/// NaN scale (its outputs are NaN).
pub fn quantize_rows(x: &[f32], cols: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(x.len());
    let mut scales = Vec::new();
    for row in x.chunks(cols.max(1)) {
        if row.iter().any(|v| !v.is_finite()) {
            q.extend(std::iter::repeat_n(0i8, row.len()));
            scales.push(f32::NAN);
            continue;
        }
        let amax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let s = 127.0f32 / (amax + 1e-7f32);
        q.extend(row.iter().map(|&v| crate::quant::quantize_value(v, s)));
        scales.push(s);
    }
    (q, scales)
}

/// `C[m, n] = A[m, k] · B[k, n]` over int8 operands, exactly (int64 sums, which fit in int32
/// for the sizes the kernels accept).
pub fn matmul_i32(a: &[i8], b: &[i8], m: usize, k: usize, n: usize) -> Vec<i32> {
    assert!(
        a.len() == m * k && b.len() == k * n,
        "reference matmul_i32 shapes"
    );
    let mut c = vec![0i64; m * n];
    for i in 0..m {
        for p in 0..k {
            let av = a[i * k + p] as i64;
            for j in 0..n {
                c[i * n + j] += av * b[p * n + j] as i64;
            }
        }
    }
    c.into_iter().map(|v| v as i32).collect()
}
