//! The kernel table: one per instruction-set tier, chosen once.

use crate::activation::Activation;
use crate::isa::{Isa, IsaError};
use crate::{KeepMask, KernelError, MaskedRows, expect_len};
use std::sync::OnceLock;

/// The kernels of one instruction-set tier. Obtained only through [`Kernels::best`] or
/// [`Kernels::for_isa`], which check that the CPU has the tier.
///
/// ```
/// use transformer_encoder_kernels::{Kernels, Isa, Epilogue};
/// let k = Kernels::for_isa(Isa::Portable).unwrap();
/// let w = k.pack(&[1.0, 2.0, 3.0, 4.0], 2, 2).unwrap(); // [[1, 2], [3, 4]]
/// let mut out = [0.0f32; 2];
/// k.gemm(&[1.0, 1.0], 1, &w, &Epilogue::default(), &mut out).unwrap();
/// assert_eq!(out, [4.0, 6.0]);
/// ```
#[derive(Debug)]
pub struct Kernels {
    isa: Isa,
}

static TABLES: [Kernels; 3] = [
    Kernels { isa: Isa::Portable },
    Kernels { isa: Isa::Avx2 },
    Kernels { isa: Isa::Avx512 },
];

impl Kernels {
    /// The table of [`Isa::detect`]: the best tier, or the one `TRANSFORMER_ENCODER_ISA` forces.
    pub fn best() -> &'static Kernels {
        static BEST: OnceLock<&'static Kernels> = OnceLock::new();
        BEST.get_or_init(|| Kernels::table(Isa::detect()))
    }

    /// The table of a given tier, or an error if this CPU lacks it.
    pub fn for_isa(isa: Isa) -> Result<&'static Kernels, IsaError> {
        isa.require().map(Kernels::table)
    }

    fn table(isa: Isa) -> &'static Kernels {
        &TABLES[isa as usize]
    }

    /// The tier of this table.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Pack a row-major `[k, n]` weight matrix (Keras' `[in, out]`) once, for [`Kernels::gemm`].
    pub fn pack(&self, w: &[f32], k: usize, n: usize) -> Result<PackedMatrix, KernelError> {
        let want = k.checked_mul(n).ok_or_else(|| KernelError {
            message: format!("weight matrix [{k}, {n}] is too large"),
        })?;
        expect_len("weight matrix", w.len(), want)?;
        Ok(PackedMatrix {
            k,
            n,
            data: w.to_vec(),
        })
    }

    /// `out[m, n] = act(a[m, k] · B + bias) + residual`, with `B` packed by [`Kernels::pack`].
    pub fn gemm(
        &self,
        a: &[f32],
        m: usize,
        b: &PackedMatrix,
        epilogue: &Epilogue<'_>,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let (k, n) = (b.k, b.n);
        expect_len("gemm input", a.len(), m * k)?;
        expect_len("gemm output", out.len(), m * n)?;
        if let Some(bias) = epilogue.bias {
            expect_len("gemm bias", bias.len(), n)?;
        }
        if let Some(r) = epilogue.residual {
            expect_len("gemm residual", r.len(), m * n)?;
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        match epilogue.bias {
            Some(bias) => {
                for row in out.chunks_mut(n) {
                    row.copy_from_slice(bias);
                }
            }
            None => out.fill(0.0),
        }
        if k > 0 {
            // SAFETY: a is [m, k] row-major (rsa = k, csa = 1), b.data is [k, n] (rsb = n, csb = 1)
            // and out is [m, n] (rsc = n, csc = 1); all three lengths were checked above, so every
            // index sgemm forms is in bounds, and out does not alias a or b (distinct borrows).
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    a.as_ptr(),
                    k as isize,
                    1,
                    b.data.as_ptr(),
                    n as isize,
                    1,
                    1.0,
                    out.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
        }
        if let Some(act) = epilogue.activation {
            self.activation(act, out, n)?;
        }
        if let Some(r) = epilogue.residual {
            for (o, r) in out.iter_mut().zip(r) {
                *o += r;
            }
        }
        Ok(())
    }

    /// Apply an activation to rows of length `n` in place.
    pub fn activation(&self, act: Activation, x: &mut [f32], n: usize) -> Result<(), KernelError> {
        if n == 0 || !x.len().is_multiple_of(n) {
            return Err(KernelError {
                message: format!(
                    "activation input has {} elements, not a multiple of the row length {n}",
                    x.len()
                ),
            });
        }
        if act == Activation::Linear {
            return Ok(());
        }
        let mut row64 = vec![0.0f64; if act.is_rowwise() { n } else { 0 }];
        for row in x.chunks_mut(n) {
            if act.is_rowwise() {
                for (d, s) in row64.iter_mut().zip(row.iter()) {
                    *d = *s as f64;
                }
                act.eval_row_f64(&mut row64);
                for (d, s) in row.iter_mut().zip(row64.iter()) {
                    *d = *s as f32;
                }
            } else {
                for v in row.iter_mut() {
                    *v = act.eval_f64(*v as f64) as f32;
                }
            }
        }
        Ok(())
    }

    /// LayerNorm over rows of length `n` of `t = x + residual`:
    /// `out = (t - mean) / sqrt(var + eps) * gamma + beta`, variance from centred values.
    pub fn layer_norm(
        &self,
        x: &[f32],
        residual: Option<&[f32]>,
        n: usize,
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        if n == 0 || !x.len().is_multiple_of(n) {
            return Err(KernelError {
                message: format!(
                    "layer norm input has {} elements, not a multiple of the row length {n}",
                    x.len()
                ),
            });
        }
        expect_len("layer norm gamma", gamma.len(), n)?;
        expect_len("layer norm beta", beta.len(), n)?;
        expect_len("layer norm output", out.len(), x.len())?;
        if let Some(r) = residual {
            expect_len("layer norm residual", r.len(), x.len())?;
        }
        let mut row = vec![0.0f64; n];
        for (i, o) in out.chunks_mut(n).enumerate() {
            for j in 0..n {
                row[j] = x[i * n + j] as f64 + residual.map_or(0.0, |r| r[i * n + j] as f64);
            }
            let mean = row.iter().sum::<f64>() / n as f64;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
            let inv = 1.0 / (var + eps as f64).sqrt();
            for j in 0..n {
                o[j] = ((row[j] - mean) * inv * gamma[j] as f64 + beta[j] as f64) as f32;
            }
        }
        Ok(())
    }

    /// Masked multi-head attention. `qkv` is `[B*S, 3*N*D]`: queries (already multiplied by
    /// `1/sqrt(D)`), keys and values side by side, head `n` at columns `n*D` of each third.
    /// Writes the context `[B*S, N*D]` and, if given, the probabilities `[B, N, S, S]`
    /// (before dropout). `dropout` is `(rate, seed)`.
    pub fn attention(
        &self,
        qkv: &[f32],
        shape: AttentionShape,
        mask: KeepMask<'_>,
        policy: MaskedRows,
        dropout: Option<(f32, u64)>,
        ctx: &mut [f32],
        mut scores: Option<&mut [f32]>,
    ) -> Result<(), KernelError> {
        let AttentionShape {
            batch,
            seq,
            heads,
            key_dim,
        } = shape;
        let w = heads * key_dim;
        let m = batch * seq;
        expect_len("qkv", qkv.len(), m * 3 * w)?;
        expect_len("attention context", ctx.len(), m * w)?;
        if let Some(s) = scores.as_deref() {
            expect_len("attention scores", s.len(), batch * heads * seq * seq)?;
        }
        mask.check(batch, seq)?;
        ctx.fill(0.0);
        let mut logits = vec![0.0f32; seq];
        let mut keep = vec![false; seq];
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..seq {
                    let qi = &qkv[(b * seq + i) * 3 * w + h * key_dim..][..key_dim];
                    let mut maxv = f32::NEG_INFINITY;
                    let mut any = false;
                    for j in 0..seq {
                        keep[j] = mask.keep(b, i, j, seq);
                        if keep[j] {
                            let kj = &qkv[(b * seq + j) * 3 * w + w + h * key_dim..][..key_dim];
                            let l: f32 = qi.iter().zip(kj).map(|(a, c)| a * c).sum();
                            logits[j] = l;
                            if !any || l > maxv {
                                maxv = l;
                            }
                            any = true;
                        }
                    }
                    let uniform = !any && policy == MaskedRows::Uniform;
                    if any {
                        let mut sum = 0.0f32;
                        for j in 0..seq {
                            logits[j] = if keep[j] {
                                (logits[j] - maxv).exp()
                            } else {
                                0.0
                            };
                            sum += logits[j];
                        }
                        let inv = 1.0 / sum;
                        logits.iter_mut().for_each(|v| *v *= inv);
                    } else {
                        let fill = if uniform { 1.0 / seq as f32 } else { 0.0 };
                        logits.iter_mut().for_each(|v| *v = fill);
                    }
                    let prow = (b * heads + h) * seq * seq + i * seq;
                    if let Some(s) = scores.as_deref_mut() {
                        s[prow..prow + seq].copy_from_slice(&logits);
                    }
                    let out = &mut ctx[(b * seq + i) * w + h * key_dim..][..key_dim];
                    for j in 0..seq {
                        if !(keep[j] || uniform) {
                            continue;
                        }
                        let mut p = logits[j];
                        if let Some((rate, seed)) = dropout {
                            p = if crate::rng::dropout_keep(seed, 0, (prow + j) as u64, rate) {
                                p / (1.0 - rate)
                            } else {
                                0.0
                            };
                        }
                        if p == 0.0 {
                            continue;
                        }
                        let vj = &qkv[(b * seq + j) * 3 * w + 2 * w + h * key_dim..][..key_dim];
                        for d in 0..key_dim {
                            out[d] += p * vj[d];
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A weight matrix packed once for [`Kernels::gemm`].
#[derive(Clone, Debug)]
pub struct PackedMatrix {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl PackedMatrix {
    /// Rows (the input size).
    pub fn k(&self) -> usize {
        self.k
    }
    /// Columns (the output size).
    pub fn n(&self) -> usize {
        self.n
    }
}

/// What [`Kernels::gemm`] does to each output element after the product.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Added to every row first (`[n]`).
    pub bias: Option<&'a [f32]>,
    /// Applied after the bias.
    pub activation: Option<Activation>,
    /// Added last (`[m, n]`).
    pub residual: Option<&'a [f32]>,
}

/// The shape of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Batch size.
    pub batch: usize,
    /// Sequence length.
    pub seq: usize,
    /// Number of heads.
    pub heads: usize,
    /// Key (and value) size per head.
    pub key_dim: usize,
}
