//! The layer's weights under their Keras names (SPEC section 2): loaded from and exported to
//! safetensors, or drawn fresh from the Keras initializers.
//!
//! The layer is held as named sublayers ([`Sublayers`]): four attention projections, two
//! feed-forward projections and two LayerNorms. Which Keras path names which sublayer is written
//! once, in [`Dense::path`] and [`NormRole::path`]; loading, saving, initialising, the BERT
//! loader and the encoder all go through the names.

use crate::config::{EncoderConfig, Initializer};
use crate::error::{Error, Result, dims};
use crate::store::TensorStore;
use safetensors::{Dtype, View};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use transformer_encoder_kernels::rng;

/// The sixteen weight names, in Keras' `layer.weights` order.
pub const WEIGHT_NAMES: [&str; 16] = [
    "self_attention_layer/query/kernel",
    "self_attention_layer/query/bias",
    "self_attention_layer/key/kernel",
    "self_attention_layer/key/bias",
    "self_attention_layer/value/kernel",
    "self_attention_layer/value/bias",
    "self_attention_layer/attention_output/kernel",
    "self_attention_layer/attention_output/bias",
    "self_attention_layer_norm/gamma",
    "self_attention_layer_norm/beta",
    "feedforward_layer_norm/gamma",
    "feedforward_layer_norm/beta",
    "feedforward_intermediate_dense/kernel",
    "feedforward_intermediate_dense/bias",
    "feedforward_output_dense/kernel",
    "feedforward_output_dense/bias",
];

/// The sizes that fix every weight's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WeightDims {
    /// Hidden size `H` (the input's last dimension).
    pub hidden_dim: usize,
    /// Heads `N`.
    pub num_heads: usize,
    /// Key dim `D = H / N`, floored.
    pub key_dim: usize,
    /// FFN size `F`.
    pub intermediate_dim: usize,
}

/// A size a weight axis carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sym {
    H,
    N,
    D,
    F,
    One,
}

impl WeightDims {
    fn size(&self, s: Sym) -> usize {
        match s {
            Sym::H => self.hidden_dim,
            Sym::N => self.num_heads,
            Sym::D => self.key_dim,
            Sym::F => self.intermediate_dim,
            Sym::One => 1,
        }
    }

    fn shape_of(&self, syms: &[Sym]) -> Vec<usize> {
        syms.iter().map(|&s| self.size(s)).collect()
    }

    /// The Keras shape of a weight by its name (see [`WEIGHT_NAMES`]), `None` for another name.
    ///
    /// ```
    /// use transformer_encoder::WeightDims;
    /// let d = WeightDims { hidden_dim: 48, num_heads: 5, key_dim: 9, intermediate_dim: 64 };
    /// assert_eq!(d.shape("self_attention_layer/query/kernel"), Some(vec![48, 5, 9]));
    /// assert_eq!(d.shape("feedforward_output_dense/bias"), Some(vec![48]));
    /// ```
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        Part::ALL.iter().find_map(|p| {
            p.tensors()
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| self.shape_of(s))
        })
    }

    /// `(rows, columns)` of a projection's kernel as a matrix: `[in, out]`.
    pub fn matrix(&self, d: Dense) -> (usize, usize) {
        let w = self.num_heads * self.key_dim;
        match d {
            Dense::Query | Dense::Key | Dense::Value => (self.hidden_dim, w),
            Dense::AttentionOutput => (w, self.hidden_dim),
            Dense::Intermediate => (self.hidden_dim, self.intermediate_dim),
            Dense::Output => (self.intermediate_dim, self.hidden_dim),
        }
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.hidden_dim == 0
            || self.num_heads == 0
            || self.key_dim == 0
            || self.intermediate_dim == 0
        {
            return Err(Error::weights(
                WEIGHT_NAMES[0],
                format!("every size must be >= 1, got {self:?}"),
            ));
        }
        if self.key_dim != self.hidden_dim / self.num_heads {
            return Err(Error::weights(
                WEIGHT_NAMES[0],
                format!(
                    "key_dim must be hidden_dim / num_heads (floored) = {}, got {}",
                    self.hidden_dim / self.num_heads,
                    self.key_dim
                ),
            ));
        }
        // Every tensor's element count must fit in usize.
        for p in Part::ALL {
            for (name, syms) in p.tensors() {
                syms.iter()
                    .try_fold(1usize, |a, &s| a.checked_mul(self.size(s)))
                    .ok_or_else(|| Error::weights(&name, "shape overflows usize"))?;
            }
        }
        Ok(())
    }
}

/// One of the layer's six projections (Keras `EinsumDense` / `Dense` sublayers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dense {
    /// `self_attention_layer/query`: kernel `[H, N, D]`, bias `[N, D]`.
    Query,
    /// `self_attention_layer/key`.
    Key,
    /// `self_attention_layer/value`.
    Value,
    /// `self_attention_layer/attention_output`: kernel `[N, D, H]`, bias `[H]`.
    AttentionOutput,
    /// `feedforward_intermediate_dense`: kernel `[H, F]`, bias `[F]`.
    Intermediate,
    /// `feedforward_output_dense`: kernel `[F, H]`, bias `[H]`.
    Output,
}

impl Dense {
    /// The six, in Keras' `layer.weights` order.
    pub const ALL: [Dense; 6] = [
        Dense::Query,
        Dense::Key,
        Dense::Value,
        Dense::AttentionOutput,
        Dense::Intermediate,
        Dense::Output,
    ];

    /// The sublayer's Keras path: the name-to-field mapping, written once.
    pub fn path(self) -> &'static str {
        match self {
            Dense::Query => "self_attention_layer/query",
            Dense::Key => "self_attention_layer/key",
            Dense::Value => "self_attention_layer/value",
            Dense::AttentionOutput => "self_attention_layer/attention_output",
            Dense::Intermediate => "feedforward_intermediate_dense",
            Dense::Output => "feedforward_output_dense",
        }
    }

    fn kernel_syms(self) -> &'static [Sym] {
        match self {
            Dense::Query | Dense::Key | Dense::Value => &[Sym::H, Sym::N, Sym::D],
            Dense::AttentionOutput => &[Sym::N, Sym::D, Sym::H],
            Dense::Intermediate => &[Sym::H, Sym::F],
            Dense::Output => &[Sym::F, Sym::H],
        }
    }

    fn bias_syms(self) -> &'static [Sym] {
        match self {
            Dense::Query | Dense::Key | Dense::Value => &[Sym::N, Sym::D],
            Dense::AttentionOutput | Dense::Output => &[Sym::H],
            Dense::Intermediate => &[Sym::F],
        }
    }

    /// Keras' `kernel_scale` shape after `quantize("int8")`: the output axes, with the reduced
    /// input axes kept as 1 for the einsum projections.
    pub(crate) fn scale_shape(self, d: &WeightDims) -> Vec<usize> {
        let syms: &[Sym] = match self {
            Dense::Query | Dense::Key | Dense::Value => &[Sym::One, Sym::One, Sym::N, Sym::D],
            Dense::AttentionOutput => &[Sym::One, Sym::One, Sym::H],
            Dense::Intermediate => &[Sym::F],
            Dense::Output => &[Sym::H],
        };
        d.shape_of(syms)
    }
}

/// One of the layer's two LayerNorms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormRole {
    /// `self_attention_layer_norm` (LN1).
    SelfAttention,
    /// `feedforward_layer_norm` (LN2).
    FeedForward,
}

impl NormRole {
    /// Both, in Keras' order.
    pub const ALL: [NormRole; 2] = [NormRole::SelfAttention, NormRole::FeedForward];

    /// The sublayer's Keras path.
    pub fn path(self) -> &'static str {
        match self {
            NormRole::SelfAttention => "self_attention_layer_norm",
            NormRole::FeedForward => "feedforward_layer_norm",
        }
    }
}

/// A sublayer, in Keras' `layer.weights` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Dense(Dense),
    Norm(NormRole),
}

impl Part {
    const ALL: [Part; 8] = [
        Part::Dense(Dense::Query),
        Part::Dense(Dense::Key),
        Part::Dense(Dense::Value),
        Part::Dense(Dense::AttentionOutput),
        Part::Norm(NormRole::SelfAttention),
        Part::Norm(NormRole::FeedForward),
        Part::Dense(Dense::Intermediate),
        Part::Dense(Dense::Output),
    ];

    /// The float tensors of the sublayer: (full name, symbolic shape).
    fn tensors(self) -> [(String, &'static [Sym]); 2] {
        match self {
            Part::Dense(d) => [
                (format!("{}/kernel", d.path()), d.kernel_syms()),
                (format!("{}/bias", d.path()), d.bias_syms()),
            ],
            Part::Norm(n) => [
                (format!("{}/gamma", n.path()), &[Sym::H]),
                (format!("{}/beta", n.path()), &[Sym::H]),
            ],
        }
    }
}

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

pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes)
        .map_err(|e| Error::format(&path.display().to_string(), e.to_string()))
}

/// A safetensors file's tensors under a prefix, checked against the expected names.
pub(crate) struct Loaded<'a> {
    prefix: String,
    store: &'a TensorStore<'a>,
}

impl<'a> Loaded<'a> {
    /// Every expected name must be there; a tensor under the prefix that is not expected is an
    /// error.
    pub(crate) fn read(
        store: &'a TensorStore<'a>,
        prefix: &str,
        expected: &[String],
    ) -> Result<Loaded<'a>> {
        for name in store.names() {
            if let Some(rest) = name.strip_prefix(prefix)
                && !expected.iter().any(|e| e == rest)
            {
                return Err(Error::weights(
                    &name,
                    format!(
                        "unexpected tensor (not one of the encoder's weights under prefix `{prefix}`)"
                    ),
                ));
            }
        }
        for name in expected {
            let full = format!("{prefix}{name}");
            if store.info(&full).is_none() {
                return Err(Error::weights(&full, "missing"));
            }
        }
        Ok(Loaded {
            prefix: prefix.to_string(),
            store,
        })
    }

    fn full(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn shape(&self, name: &str) -> Option<&[usize]> {
        self.store.info(&self.full(name)).map(|t| &t.shape[..])
    }

    /// The sizes, read off every float tensor that carries each (the most common value wins, so a
    /// single mis-shaped tensor is the one named in the error).
    pub(crate) fn dims(&self) -> Result<WeightDims> {
        let vote = |sym: Sym| -> usize {
            let mut vals = Vec::new();
            for p in Part::ALL {
                for (name, syms) in p.tensors() {
                    if let Some(shape) = self.shape(&name)
                        && shape.len() == syms.len()
                    {
                        for (ax, &s) in syms.iter().enumerate() {
                            if s == sym {
                                vals.push(shape[ax]);
                            }
                        }
                    }
                }
            }
            let mut best = (0usize, 0usize);
            for &v in &vals {
                let c = vals.iter().filter(|&&x| x == v).count();
                if c > best.1 {
                    best = (v, c);
                }
            }
            best.0
        };
        let d = WeightDims {
            hidden_dim: vote(Sym::H),
            num_heads: vote(Sym::N),
            key_dim: vote(Sym::D),
            intermediate_dim: vote(Sym::F),
        };
        d.check()?;
        Ok(d)
    }

    fn check_shape(&self, name: &str, want: &[usize]) -> Result<()> {
        let full = self.full(name);
        let got = self
            .shape(name)
            .ok_or_else(|| Error::weights(&full, "missing"))?;
        if got != want {
            return Err(Error::weights(
                &full,
                format!("expected shape {}, got {}", dims(want), dims(got)),
            ));
        }
        Ok(())
    }

    /// A projection's float kernel.
    pub(crate) fn kernel(&self, d: Dense, dims: &WeightDims) -> Result<Vec<f32>> {
        self.f32(&format!("{}/kernel", d.path()), d.kernel_syms(), dims)
    }

    /// A projection's bias.
    pub(crate) fn bias(&self, d: Dense, dims: &WeightDims) -> Result<Vec<f32>> {
        self.f32(&format!("{}/bias", d.path()), d.bias_syms(), dims)
    }

    /// A LayerNorm's weights.
    pub(crate) fn norm(&self, n: NormRole, dims: &WeightDims) -> Result<NormWeights> {
        Ok(NormWeights {
            gamma: self.f32(&format!("{}/gamma", n.path()), &[Sym::H], dims)?,
            beta: self.f32(&format!("{}/beta", n.path()), &[Sym::H], dims)?,
        })
    }

    /// A float tensor of the given symbolic shape, as f32.
    fn f32(&self, name: &str, syms: &[Sym], d: &WeightDims) -> Result<Vec<f32>> {
        self.f32_shaped(name, &d.shape_of(syms))
    }

    /// A float tensor of the given shape, as f32.
    pub(crate) fn f32_shaped(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.check_shape(name, shape)?;
        let full = self.full(name);
        self.store.f32(&full, &full)
    }

    /// An int8 tensor of the given shape.
    pub(crate) fn i8_shaped(&self, name: &str, shape: &[usize]) -> Result<Vec<i8>> {
        self.check_shape(name, shape)?;
        let full = self.full(name);
        self.store.i8(&full, &full)
    }
}

/// A tensor to write.
pub(crate) enum TensorOut<'a> {
    F32 { shape: Vec<usize>, data: &'a [f32] },
    I8 { shape: Vec<usize>, data: &'a [i8] },
}

impl View for TensorOut<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            TensorOut::F32 { .. } => Dtype::F32,
            TensorOut::I8 { .. } => Dtype::I8,
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            TensorOut::F32 { shape, .. } | TensorOut::I8 { shape, .. } => shape,
        }
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            TensorOut::F32 { data, .. } => {
                Cow::Owned(data.iter().flat_map(|v| v.to_le_bytes()).collect())
            }
            TensorOut::I8 { data, .. } => Cow::Owned(data.iter().map(|&v| v as u8).collect()),
        }
    }
    fn data_len(&self) -> usize {
        match self {
            TensorOut::F32 { data, .. } => data.len() * 4,
            TensorOut::I8 { data, .. } => data.len(),
        }
    }
}

pub(crate) fn serialize(views: BTreeMap<String, TensorOut<'_>>) -> Result<Vec<u8>> {
    safetensors::serialize(views, None).map_err(|e| Error::format("safetensors", e.to_string()))
}

/// Draw `n` values from an initializer with the given fans, reproducibly from (seed, stream).
fn draw(
    init: &Initializer,
    n: usize,
    fan_in: usize,
    fan_out: usize,
    seed: u64,
    stream: usize,
) -> Vec<f32> {
    let seed = init.seed().map_or(seed, |s| s ^ seed.rotate_left(17));
    let stream = stream as u64;
    let (fi, fo) = (fan_in.max(1) as f64, fan_out.max(1) as f64);
    let uniform = |limit: f64| -> Vec<f32> {
        (0..n as u64)
            .map(|j| ((2.0 * rng::uniform(seed, stream, j) - 1.0) * limit) as f32)
            .collect()
    };
    // Keras' truncated normal: redraw outside two standard deviations.
    let truncated = |mean: f64, stddev: f64| -> Vec<f32> {
        (0..n as u64)
            .map(|j| {
                let mut k = 0u64;
                loop {
                    let z = rng::normal(seed, stream, j.wrapping_mul(64).wrapping_add(k));
                    if z.abs() <= 2.0 || k == 63 {
                        break (mean + stddev * z.clamp(-2.0, 2.0)) as f32;
                    }
                    k += 1;
                }
            })
            .collect()
    };
    // Variance scaling with a truncated normal: the stddev is corrected for the truncation.
    const TRUNC_CORRECTION: f64 = 0.879_625_661_034_239_8;
    match *init {
        Initializer::GlorotUniform { .. } => uniform((6.0 / (fi + fo)).sqrt()),
        Initializer::HeUniform { .. } => uniform((6.0 / fi).sqrt()),
        Initializer::LecunUniform { .. } => uniform((3.0 / fi).sqrt()),
        Initializer::GlorotNormal { .. } => {
            truncated(0.0, (2.0 / (fi + fo)).sqrt() / TRUNC_CORRECTION)
        }
        Initializer::HeNormal { .. } => truncated(0.0, (2.0 / fi).sqrt() / TRUNC_CORRECTION),
        Initializer::LecunNormal { .. } => truncated(0.0, (1.0 / fi).sqrt() / TRUNC_CORRECTION),
        Initializer::RandomUniform { minval, maxval, .. } => (0..n as u64)
            .map(|j| (minval + (maxval - minval) * rng::uniform(seed, stream, j)) as f32)
            .collect(),
        Initializer::RandomNormal { mean, stddev, .. } => (0..n as u64)
            .map(|j| (mean + stddev * rng::normal(seed, stream, j)) as f32)
            .collect(),
        Initializer::TruncatedNormal { mean, stddev, .. } => truncated(mean, stddev),
        Initializer::Zeros => vec![0.0; n],
        Initializer::Ones => vec![1.0; n],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_names_are_the_sublayer_paths_in_keras_order() {
        let derived: Vec<String> = Part::ALL
            .iter()
            .flat_map(|p| p.tensors().map(|(n, _)| n))
            .collect();
        assert_eq!(derived, WEIGHT_NAMES.to_vec());
    }
}
