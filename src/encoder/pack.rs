//! Packing a layer's weights for its tier: projections (QKV fused), norms, from float, bf16
//! or int8 sources.

use super::*;
use crate::store::TensorStore;
use crate::weights::NormRole;
use std::rc::Rc;

/// A projection ready to run: its kernel packed once for the encoder's tier (float32 or int8
/// panels), and its bias.
#[derive(Clone, Debug)]
pub(super) struct Projection {
    pub(super) kernel: PackedMatrix,
    pub(super) bias: Vec<f32>,
}

impl Projection {
    pub(super) fn bytes(&self) -> usize {
        self.kernel.bytes() + self.bias.capacity() * 4
    }
}

/// The weights of a projection in one of the formats the encoder runs: how they are packed, and
/// how several projections of the same input are fused side by side. The one place the formats
/// differ; the encoder itself only chooses the format.
pub(super) trait ProjectionWeights {
    fn bias(&self) -> &[f32];
    /// Projections of the same input side by side: their columns concatenated.
    fn side_by_side(parts: &[&Self], rows: usize) -> Self;
    fn pack(&self, k: &Kernels, rows: usize, cols: usize) -> Result<PackedMatrix>;
}

/// Row-major `[rows, c_i]` matrices side by side: `[rows, sum c_i]`.
pub(super) fn concat_columns<T: Copy>(parts: &[&[T]], rows: usize) -> Vec<T> {
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
pub(super) fn columns<T: Copy>(m: &[T], cols: usize, c0: usize, c1: usize) -> Vec<T> {
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
pub(super) struct Bf16Dense(pub(super) DenseWeights);

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

/// How `config` rounds float weights: through its storage dtype (Keras' `bfloat16` or
/// `float16` variables), or through bf16 for a bfloat16 compute policy; `None` keeps them.
fn float_rounding(config: &EncoderConfig) -> Result<Option<Rounding>> {
    let bf16 = config.compute_precision()? == Precision::Bf16;
    Ok(match config.weight_precision()? {
        WeightPrecision::F32 if !bf16 => None,
        WeightPrecision::F32 | WeightPrecision::Bf16 => Some(Rounding::BF16),
        WeightPrecision::F16 => Some(Rounding::F16),
    })
}

/// A projection read when it is packed (from a file: one tensor in memory at a time), its bias
/// read at once. Fused projections read their parts together, when the fused matrix is packed.
pub(super) struct Deferred<'a, P> {
    bias: Vec<f32>,
    read: Rc<dyn Fn() -> Result<P> + 'a>,
}

impl<'a, P> Deferred<'a, P> {
    fn new(bias: Vec<f32>, read: impl Fn() -> Result<P> + 'a) -> Self {
        Deferred {
            bias,
            read: Rc::new(read),
        }
    }
}

impl<'a, P: ProjectionWeights + 'a> ProjectionWeights for Deferred<'a, P> {
    fn bias(&self) -> &[f32] {
        &self.bias
    }
    fn side_by_side(parts: &[&Self], rows: usize) -> Self {
        let reads: Vec<_> = parts.iter().map(|p| Rc::clone(&p.read)).collect();
        let bias = parts.iter().flat_map(|p| p.bias.iter().copied()).collect();
        Deferred::new(bias, move || {
            let ps = reads.iter().map(|r| r()).collect::<Result<Vec<P>>>()?;
            let refs: Vec<&P> = ps.iter().collect();
            Ok(P::side_by_side(&refs, rows))
        })
    }
    fn pack(&self, k: &Kernels, rows: usize, cols: usize) -> Result<PackedMatrix> {
        (self.read)()?.pack(k, rows, cols)
    }
}

/// Keras' `self_attention_layer` (query, key and value fused into one product) and
/// `self_attention_layer_norm`.
#[derive(Clone, Debug)]
pub(super) struct SelfAttention {
    pub(super) qkv: Projection,
    pub(super) output: Projection,
    pub(super) norm: NormWeights,
}

/// Keras' `feedforward_intermediate_dense`, `feedforward_output_dense` and
/// `feedforward_layer_norm`.
#[derive(Clone, Debug)]
pub(super) struct FeedForward {
    pub(super) intermediate: Projection,
    pub(super) output: Projection,
    pub(super) norm: NormWeights,
}

pub(super) fn norm_bytes(n: &NormWeights) -> usize {
    (n.gamma.capacity() + n.beta.capacity()) * 4
}

impl TransformerEncoder {
    pub(super) fn from_float(
        config: EncoderConfig,
        weights: EncoderWeights,
        kernels: &'static Kernels,
    ) -> Result<TransformerEncoder> {
        let weights = match float_rounding(&config)? {
            Some(r) => weights.round_through(r)?,
            None => weights,
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

    /// The layer of `config` over the weights in `store` under `prefix` (Keras' int8 variables
    /// if there are `kernel_scale` tensors, else float ones, rounded as
    /// [`from_float`](TransformerEncoder::from_float) rounds them), each projection read as it is
    /// packed and freed before the next is read.
    pub(super) fn from_store(
        config: EncoderConfig,
        store: &TensorStore<'_>,
        prefix: &str,
        kernels: &'static Kernels,
    ) -> Result<TransformerEncoder> {
        let int8 = store
            .names()
            .iter()
            .any(|n| n.starts_with(prefix) && n.ends_with("/kernel_scale"));
        if int8 {
            let (loaded, dims) = Int8Weights::reader(store, prefix)?;
            let loaded = &loaded;
            let l = Sublayers::try_build(
                |d| -> Result<Deferred<'_, Int8Dense>> {
                    let bias = loaded.bias(d, &dims)?;
                    Ok(Deferred::new(bias, move || {
                        Int8Dense::read(loaded, d, &dims)
                    }))
                },
                |n| loaded.norm(n, &dims),
            )?;
            return TransformerEncoder::build(config, dims, l, kernels);
        }
        let (loaded, dims) = EncoderWeights::reader(store, prefix)?;
        let loaded = &loaded;
        let round = float_rounding(&config)?;
        let fix = move |name: String, t: Vec<f32>| match round {
            Some(r) => r.apply(&name, t),
            None => Ok(t),
        };
        let norm = |n: NormRole| -> Result<NormWeights> {
            let w = loaded.norm(n, &dims)?;
            Ok(NormWeights {
                gamma: fix(format!("{}/gamma", n.path()), w.gamma)?,
                beta: fix(format!("{}/beta", n.path()), w.beta)?,
            })
        };
        let bias = |d: Dense| fix(format!("{}/bias", d.path()), loaded.bias(d, &dims)?);
        let kernel = move |d: Dense| -> Result<DenseWeights> {
            let k = fix(format!("{}/kernel", d.path()), loaded.kernel(d, &dims)?)?;
            // (The bias travels in the deferred projection, read once.)
            Ok(DenseWeights {
                kernel: k,
                bias: Vec::new(),
            })
        };
        if config.compute_precision()? == Precision::Bf16 {
            let l = Sublayers::try_build(
                |d| Ok(Deferred::new(bias(d)?, move || kernel(d).map(Bf16Dense))),
                norm,
            )?;
            return TransformerEncoder::build(config, dims, l, kernels);
        }
        let l = Sublayers::try_build(|d| Ok(Deferred::new(bias(d)?, move || kernel(d))), norm)?;
        TransformerEncoder::build(config, dims, l, kernels)
    }

    /// Pack the sublayers (of either format) for `kernels`' tier: query, key and value fused
    /// into one `[H, 3W]` product. Each tensor is freed as soon as it is packed, the largest
    /// first, so that building holds the float (or int8) weights and their packed copy at once
    /// for one tensor only, not for the whole layer.
    pub(super) fn build<D: ProjectionWeights>(
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
        // The smallest last: a deferred projection (read from a file as it is packed) holds
        // its float copy beside everything packed before it.
        let intermediate = at(feedforward_intermediate_dense, Dense::Intermediate)?;
        let output = at(feedforward_output_dense, Dense::Output)?;
        let (h, w) = dims.matrix(Dense::Query);
        let qkv = D::side_by_side(&[&query, &key, &value], h);
        drop((query, key, value));
        let qkv = proj(qkv, h, 3 * w, "self_attention_layer/query, key and value")?;
        let attention = SelfAttention {
            qkv,
            output: at(attention_output, Dense::AttentionOutput)?,
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
}
