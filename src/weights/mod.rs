//! The layer's weights under their Keras names (SPEC section 2): loaded from and exported to
//! safetensors, or drawn fresh from the Keras initializers.
//!
//! The layer is held as named sublayers ([`Sublayers`]): four attention projections, two
//! feed-forward projections and two LayerNorms. Which Keras path names which sublayer is written
//! once, in [`Dense::path`] and [`NormRole::path`]; loading, saving, initialising, the BERT
//! loader and the encoder all go through the names.

mod file;
mod init;
mod names;

pub(crate) use file::{Loaded, TensorOut, serialize, write_file};
use init::draw;
use names::Part;
pub use names::{Dense, NormRole, WEIGHT_NAMES, WeightDims};

use crate::config::EncoderConfig;
use crate::error::{Error, Result, dims};
use crate::store::TensorStore;
use std::collections::BTreeMap;
use std::path::Path;

/// A projection's float weights: `kernel` is the Keras kernel flattened to `[in, out]`, row major;
/// `bias` is `[out]`.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseWeights {
    /// `[in, out]`, row major (Keras' layout, its einsum axes flattened).
    pub kernel: Vec<f32>,
    /// `[out]`.
    pub bias: Vec<f32>,
}

/// Float weights rounded through a narrower storage format (Keras' `bfloat16` or `float16`
/// variables, or its `mixed_bfloat16` compute), named for the errors.
#[derive(Clone, Copy)]
pub(crate) struct Rounding {
    pub(crate) format: &'static str,
    pub(crate) round: fn(f32) -> f32,
}

impl Rounding {
    pub(crate) const BF16: Rounding = Rounding {
        format: "bfloat16",
        round: |v| half::bf16::from_f32(v).to_f32(),
    };
    pub(crate) const F16: Rounding = Rounding {
        format: "float16",
        round: |v| half::f16::from_f32(v).to_f32(),
    };

    /// A finite value that the format cannot hold is an error naming the tensor.
    fn check(self, name: &str, t: &[f32]) -> Result<()> {
        match t
            .iter()
            .find(|v| v.is_finite() && !(self.round)(**v).is_finite())
        {
            Some(v) => Err(Error::weights(
                name,
                format!("value {v} overflows the {} weight storage", self.format),
            )),
            None => Ok(()),
        }
    }

    /// Tensor `name`'s values rounded (checked first).
    pub(crate) fn apply(self, name: &str, mut t: Vec<f32>) -> Result<Vec<f32>> {
        self.check(name, &t)?;
        t.iter_mut().for_each(|v| *v = (self.round)(*v));
        Ok(t)
    }
}

/// A LayerNorm's weights, `[H]` each.
#[derive(Clone, Debug, PartialEq)]
pub struct NormWeights {
    /// Scale.
    pub gamma: Vec<f32>,
    /// Offset.
    pub beta: Vec<f32>,
}

/// The layer's eight sublayers by name, each projection held as a `D` (float weights in
/// [`EncoderWeights`], Keras' int8 variables in [`Int8Weights`](crate::Int8Weights)).
#[derive(Clone, Debug, PartialEq)]
pub struct Sublayers<D> {
    /// `self_attention_layer/query`.
    pub query: D,
    /// `self_attention_layer/key`.
    pub key: D,
    /// `self_attention_layer/value`.
    pub value: D,
    /// `self_attention_layer/attention_output`.
    pub attention_output: D,
    /// `self_attention_layer_norm`.
    pub self_attention_layer_norm: NormWeights,
    /// `feedforward_layer_norm`.
    pub feedforward_layer_norm: NormWeights,
    /// `feedforward_intermediate_dense`.
    pub feedforward_intermediate_dense: D,
    /// `feedforward_output_dense`.
    pub feedforward_output_dense: D,
}

impl<D> Sublayers<D> {
    /// The same sublayers with every projection passed through `f`.
    pub(crate) fn map<E>(self, mut f: impl FnMut(D) -> E) -> Sublayers<E> {
        Sublayers {
            query: f(self.query),
            key: f(self.key),
            value: f(self.value),
            attention_output: f(self.attention_output),
            self_attention_layer_norm: self.self_attention_layer_norm,
            feedforward_layer_norm: self.feedforward_layer_norm,
            feedforward_intermediate_dense: f(self.feedforward_intermediate_dense),
            feedforward_output_dense: f(self.feedforward_output_dense),
        }
    }

    /// A projection by role.
    pub fn dense(&self, d: Dense) -> &D {
        match d {
            Dense::Query => &self.query,
            Dense::Key => &self.key,
            Dense::Value => &self.value,
            Dense::AttentionOutput => &self.attention_output,
            Dense::Intermediate => &self.feedforward_intermediate_dense,
            Dense::Output => &self.feedforward_output_dense,
        }
    }

    /// A projection by role, mutably.
    pub fn dense_mut(&mut self, d: Dense) -> &mut D {
        match d {
            Dense::Query => &mut self.query,
            Dense::Key => &mut self.key,
            Dense::Value => &mut self.value,
            Dense::AttentionOutput => &mut self.attention_output,
            Dense::Intermediate => &mut self.feedforward_intermediate_dense,
            Dense::Output => &mut self.feedforward_output_dense,
        }
    }

    /// A LayerNorm by role.
    pub fn norm(&self, n: NormRole) -> &NormWeights {
        match n {
            NormRole::SelfAttention => &self.self_attention_layer_norm,
            NormRole::FeedForward => &self.feedforward_layer_norm,
        }
    }

    /// A LayerNorm by role, mutably.
    pub fn norm_mut(&mut self, n: NormRole) -> &mut NormWeights {
        match n {
            NormRole::SelfAttention => &mut self.self_attention_layer_norm,
            NormRole::FeedForward => &mut self.feedforward_layer_norm,
        }
    }

    /// Build every sublayer from functions of its role (in Keras' order).
    pub fn try_build<E>(
        mut dense: impl FnMut(Dense) -> std::result::Result<D, E>,
        mut norm: impl FnMut(NormRole) -> std::result::Result<NormWeights, E>,
    ) -> std::result::Result<Sublayers<D>, E> {
        Ok(Sublayers {
            query: dense(Dense::Query)?,
            key: dense(Dense::Key)?,
            value: dense(Dense::Value)?,
            attention_output: dense(Dense::AttentionOutput)?,
            self_attention_layer_norm: norm(NormRole::SelfAttention)?,
            feedforward_layer_norm: norm(NormRole::FeedForward)?,
            feedforward_intermediate_dense: dense(Dense::Intermediate)?,
            feedforward_output_dense: dense(Dense::Output)?,
        })
    }

    /// The same sublayers with every projection mapped.
    pub fn try_map<D2, E>(
        &self,
        mut f: impl FnMut(Dense, &D) -> std::result::Result<D2, E>,
    ) -> std::result::Result<Sublayers<D2>, E> {
        Sublayers::try_build(|d| f(d, self.dense(d)), |n| Ok(self.norm(n).clone()))
    }
}

/// The weights of one encoder layer, float32, in Keras layout (`[in, out]` kernels, row-major),
/// as named sublayers.
///
/// ```
/// use transformer_encoder::{EncoderConfig, EncoderWeights};
/// let cfg = EncoderConfig::new(32, 4);
/// let w = EncoderWeights::init(&cfg, 16, 7).unwrap();
/// assert_eq!(w.sublayers().query.kernel.len(), 16 * 16);
/// let bytes = w.to_safetensors("").unwrap();
/// let back = EncoderWeights::from_safetensors(&bytes, "").unwrap();
/// assert_eq!(back, w);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderWeights {
    dims: WeightDims,
    layers: Sublayers<DenseWeights>,
}

impl EncoderWeights {
    /// Build from named sublayers, checking every length against `dims`.
    pub fn new(dims: WeightDims, layers: Sublayers<DenseWeights>) -> Result<EncoderWeights> {
        dims.check()?;
        let w = EncoderWeights { dims, layers };
        for (name, t) in w.tensors() {
            let want = dims.shape(&name).unwrap_or_default();
            let n: usize = want.iter().product();
            if t.len() != n {
                return Err(Error::weights(
                    &name,
                    format!(
                        "expected shape {} ({n} values), got {} values",
                        self::dims(&want),
                        t.len()
                    ),
                ));
            }
        }
        Ok(w)
    }

    /// The sizes.
    pub fn dims(&self) -> WeightDims {
        self.dims
    }

    /// The sublayers.
    pub fn sublayers(&self) -> &Sublayers<DenseWeights> {
        &self.layers
    }

    /// The sublayers, owned (an encoder packs them one tensor at a time, freeing each).
    pub(crate) fn into_sublayers(self) -> Sublayers<DenseWeights> {
        self.layers
    }

    /// Every tensor with its Keras name, in `layer.weights` order.
    pub fn tensors(&self) -> Vec<(String, &[f32])> {
        Part::ALL
            .iter()
            .flat_map(|&p| {
                let [(k, _), (b, _)] = p.tensors();
                let (x, y) = match p {
                    Part::Dense(d) => {
                        let w = self.layers.dense(d);
                        (&w.kernel, &w.bias)
                    }
                    Part::Norm(n) => {
                        let w = self.layers.norm(n);
                        (&w.gamma, &w.beta)
                    }
                };
                [(k, x.as_slice()), (b, y.as_slice())]
            })
            .collect()
    }

    /// A tensor by its Keras name (see [`WEIGHT_NAMES`]).
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.tensors()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
    }

    /// Change values in place (shapes stay), tensor by tensor with its name.
    pub fn map_values(mut self, mut f: impl FnMut(&str, &mut [f32])) -> EncoderWeights {
        for d in Dense::ALL {
            let w = self.layers.dense_mut(d);
            f(&format!("{}/kernel", d.path()), &mut w.kernel);
            f(&format!("{}/bias", d.path()), &mut w.bias);
        }
        for n in NormRole::ALL {
            let w = self.layers.norm_mut(n);
            f(&format!("{}/gamma", n.path()), &mut w.gamma);
            f(&format!("{}/beta", n.path()), &mut w.beta);
        }
        self
    }

    /// Replace every value by its nearest value in a narrower storage format (applied when the
    /// configuration's dtype stores bf16 or f16 weights). A finite value that the format cannot
    /// hold (70000 in float16) is an error naming the tensor, never a silent infinity.
    pub(crate) fn round_through(self, r: Rounding) -> Result<Self> {
        for (name, t) in self.tensors() {
            r.check(&name, t)?;
        }
        Ok(self.map_values(|_, t| t.iter_mut().for_each(|v| *v = (r.round)(*v))))
    }

    /// Fresh weights from the configuration's initializers (as Keras builds the layer),
    /// reproducible from `seed`. LayerNorm gammas are ones and betas zeros, as in Keras.
    pub fn init(config: &EncoderConfig, hidden_dim: usize, seed: u64) -> Result<EncoderWeights> {
        config.validate(hidden_dim)?;
        let dims = WeightDims {
            hidden_dim,
            num_heads: config.num_heads,
            key_dim: config.key_dim(hidden_dim),
            intermediate_dim: config.intermediate_dim,
        };
        dims.check()?;
        // Each tensor draws from its own stream: its position in WEIGHT_NAMES.
        let stream = |name: &str| WEIGHT_NAMES.iter().position(|&n| n == name).unwrap_or(0);
        let layers = Sublayers::try_build(
            |d| -> Result<DenseWeights> {
                let (fan_in, fan_out) = dims.matrix(d);
                let kname = format!("{}/kernel", d.path());
                let bname = format!("{}/bias", d.path());
                let bshape = dims.shape_of(d.bias_syms());
                // Biases: Keras' compute_fans of the bias shape.
                let (bi, bo) = if bshape.len() == 2 {
                    (bshape[0], bshape[1])
                } else {
                    (bshape[0], bshape[0])
                };
                Ok(DenseWeights {
                    // Kernels: EinsumDense passes the true input/output axes as fans (Keras 3.15).
                    kernel: draw(
                        &config.kernel_initializer,
                        fan_in * fan_out,
                        fan_in,
                        fan_out,
                        seed,
                        stream(&kname),
                    ),
                    bias: draw(
                        &config.bias_initializer,
                        bshape.iter().product(),
                        bi,
                        bo,
                        seed,
                        stream(&bname),
                    ),
                })
            },
            |_| {
                Ok(NormWeights {
                    gamma: vec![1.0; hidden_dim],
                    beta: vec![0.0; hidden_dim],
                })
            },
        )?;
        EncoderWeights::new(dims, layers)
    }

    /// Load from a safetensors buffer. Tensors are looked up as `prefix + name` (the golden files
    /// use `prefix = "weights/"`); tensors outside the prefix are ignored, and an unknown tensor
    /// inside it is an error. f32, f64, f16 and bf16 tensors are accepted.
    pub fn from_safetensors(bytes: &[u8], prefix: &str) -> Result<EncoderWeights> {
        EncoderWeights::from_store(&TensorStore::from_bytes(bytes)?, prefix)
    }

    /// Load from a safetensors file (see [`EncoderWeights::from_safetensors`]), one tensor at a
    /// time: the file is never held in memory beside the weights.
    pub fn from_safetensors_file(path: impl AsRef<Path>, prefix: &str) -> Result<EncoderWeights> {
        EncoderWeights::from_store(&TensorStore::open(path.as_ref())?, prefix)
    }

    pub(crate) fn from_store(store: &TensorStore<'_>, prefix: &str) -> Result<EncoderWeights> {
        let (loaded, dims) = EncoderWeights::reader(store, prefix)?;
        let layers = Sublayers::try_build(
            |d| -> Result<DenseWeights> {
                Ok(DenseWeights {
                    kernel: loaded.kernel(d, &dims)?,
                    bias: loaded.bias(d, &dims)?,
                })
            },
            |n| loaded.norm(n, &dims),
        )?;
        EncoderWeights::new(dims, layers)
    }

    /// The float weights of a layer in `store` under `prefix` (every name there, none unknown),
    /// and their sizes: tensors are read when asked for.
    pub(crate) fn reader<'a>(
        store: &'a TensorStore<'a>,
        prefix: &str,
    ) -> Result<(Loaded<'a>, WeightDims)> {
        let names: Vec<String> = WEIGHT_NAMES.iter().map(|n| n.to_string()).collect();
        let loaded = Loaded::read(store, prefix, &names)?;
        let dims = loaded.dims()?;
        Ok((loaded, dims))
    }

    /// Export as a safetensors buffer (float32) with the Keras names under `prefix`.
    pub fn to_safetensors(&self, prefix: &str) -> Result<Vec<u8>> {
        let views: BTreeMap<String, TensorOut<'_>> = self
            .tensors()
            .into_iter()
            .map(|(n, t)| {
                (
                    format!("{prefix}{n}"),
                    TensorOut::F32 {
                        shape: self.dims.shape(&n).unwrap_or_default(),
                        data: t,
                    },
                )
            })
            .collect();
        serialize(views)
    }

    /// Export to a safetensors file.
    pub fn save_safetensors(&self, path: impl AsRef<Path>, prefix: &str) -> Result<()> {
        write_file(path.as_ref(), &self.to_safetensors(prefix)?)
    }
}
