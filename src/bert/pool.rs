//! The poolings sentence-transformers uses: token states to one vector per sentence.

use crate::error::{Error, Result};

/// How token states become one sentence vector (sentence-transformers' pooling modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the real tokens (attention mask 1).
    Mean,
    /// The first token (`[CLS]`).
    Cls,
    /// Element-wise maximum over the real tokens.
    Max,
}

/// Pool `hidden [B, S, H]` to `[B, H]` under `attention_mask [B, S]`, optionally L2-normalised.
///
/// ```
/// use transformer_encoder::{pool, Pooling};
/// let h = [1.0f32, 2.0, 3.0, 4.0, 100.0, 100.0]; // B = 1, S = 3, H = 2
/// let v = pool(&h, &[1, 1, 0], 1, 3, 2, Pooling::Mean, false).unwrap();
/// assert_eq!(v, vec![2.0, 3.0]);
/// ```
pub fn pool(
    hidden: &[f32],
    attention_mask: &[u8],
    batch: usize,
    seq: usize,
    h: usize,
    pooling: Pooling,
    normalize: bool,
) -> Result<Vec<f32>> {
    if hidden.len() != batch * seq * h {
        return Err(Error::shape(
            "hidden",
            format!("{} values ([{batch}, {seq}, {h}])", batch * seq * h),
            format!("{}", hidden.len()),
        ));
    }
    if attention_mask.len() != batch * seq {
        return Err(Error::shape(
            "attention_mask",
            format!("{} values ([{batch}, {seq}])", batch * seq),
            format!("{}", attention_mask.len()),
        ));
    }
    let mut out = vec![0.0f32; batch * h];
    for (b, o) in out.chunks_mut(h.max(1)).enumerate().take(batch) {
        let tok = |s: usize| &hidden[(b * seq + s) * h..(b * seq + s + 1) * h];
        let real = (0..seq)
            .filter(|&s| attention_mask[b * seq + s] != 0)
            .map(tok);
        pool_one(o, real, (seq > 0).then(|| tok(0)), pooling, normalize);
    }
    Ok(out)
}

/// Pool the hidden states `[T, H]` of sequences of `lengths` packed end to end (every token
/// real) to `[lengths.len(), H]`, optionally L2-normalised: each sequence's vector is what
/// [`pool`] gives for it alone.
///
/// ```
/// use transformer_encoder::{pool_ragged, Pooling};
/// let h = [1.0f32, 2.0, 3.0, 4.0, 10.0, 20.0]; // two sequences: 2 tokens, 1 token; H = 2
/// let v = pool_ragged(&h, &[2, 1], 2, Pooling::Mean, false).unwrap();
/// assert_eq!(v, vec![2.0, 3.0, 10.0, 20.0]);
/// ```
pub fn pool_ragged(
    hidden: &[f32],
    lengths: &[usize],
    h: usize,
    pooling: Pooling,
    normalize: bool,
) -> Result<Vec<f32>> {
    let total = lengths.iter().try_fold(0usize, |t, &l| t.checked_add(l));
    if total.and_then(|t| t.checked_mul(h)) != Some(hidden.len()) {
        return Err(Error::shape(
            "hidden",
            format!("sum(lengths) * {h} values"),
            format!("{}", hidden.len()),
        ));
    }
    let mut out = vec![0.0f32; lengths.len() * h];
    let mut start = 0;
    for (o, &len) in out.chunks_mut(h.max(1)).zip(lengths) {
        let rows = &hidden[start * h..(start + len) * h];
        let toks = rows.chunks(h.max(1)).take(len);
        pool_one(
            o,
            toks,
            rows.get(..h).filter(|_| len > 0),
            pooling,
            normalize,
        );
        start += len;
    }
    Ok(out)
}

/// One sentence vector from its real tokens' states (`first`: the `[CLS]` state).
fn pool_one<'a>(
    o: &mut [f32],
    real: impl Iterator<Item = &'a [f32]>,
    first: Option<&[f32]>,
    pooling: Pooling,
    normalize: bool,
) {
    let h = o.len();
    match pooling {
        Pooling::Cls => {
            if let Some(t) = first {
                o.copy_from_slice(t);
            }
        }
        Pooling::Mean => {
            let mut acc = vec![0.0f64; h];
            let mut count = 0usize;
            for t in real {
                count += 1;
                for (a, v) in acc.iter_mut().zip(t) {
                    *a += *v as f64;
                }
            }
            // sentence-transformers clamps the token count at 1e-9.
            let c = (count as f64).max(1e-9);
            for (x, a) in o.iter_mut().zip(&acc) {
                *x = (a / c) as f32;
            }
        }
        Pooling::Max => {
            let mut any = false;
            o.fill(f32::NEG_INFINITY);
            for t in real {
                any = true;
                for (x, v) in o.iter_mut().zip(t) {
                    *x = x.max(*v);
                }
            }
            if !any {
                o.fill(0.0);
            }
        }
    }
    if normalize {
        let norm = o
            .iter()
            .map(|v| (*v as f64) * (*v as f64))
            .sum::<f64>()
            .sqrt();
        // torch.nn.functional.normalize divides by max(norm, 1e-12).
        let d = norm.max(1e-12);
        for x in o.iter_mut() {
            *x = (*x as f64 / d) as f32;
        }
    }
}
