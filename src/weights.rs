//! The layer's weights under their Keras names (SPEC section 2): loaded from and exported to
//! safetensors, or drawn fresh from the Keras initializers.

use crate::config::{EncoderConfig, Initializer};
use crate::error::{Error, Result, dims};
use safetensors::{Dtype, SafeTensors, View};
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

impl WeightDims {
    /// The Keras shape of weight `i` of [`WEIGHT_NAMES`].
    pub fn shape(&self, i: usize) -> Vec<usize> {
        let (h, n, d, f) = (
            self.hidden_dim,
            self.num_heads,
            self.key_dim,
            self.intermediate_dim,
        );
        match i {
            0 | 2 | 4 => vec![h, n, d],
            1 | 3 | 5 => vec![n, d],
            6 => vec![n, d, h],
            7..=11 => vec![h],
            12 => vec![h, f],
            13 => vec![f],
            14 => vec![f, h],
            _ => vec![h],
        }
    }

    fn len(&self, i: usize) -> Result<usize> {
        self.shape(i)
            .iter()
            .try_fold(1usize, |a, &b| a.checked_mul(b))
            .ok_or_else(|| Error::weights(WEIGHT_NAMES[i], "shape overflows usize"))
    }
}

/// The weights of one encoder layer, float32, in Keras layout (`[in, out]` kernels, row-major).
///
/// ```
/// use transformer_encoder::{EncoderConfig, EncoderWeights};
/// let cfg = EncoderConfig::new(32, 4);
/// let w = EncoderWeights::init(&cfg, 16, 7).unwrap();
/// let bytes = w.to_safetensors("").unwrap();
/// let back = EncoderWeights::from_safetensors(&bytes, "").unwrap();
/// assert_eq!(back, w);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderWeights {
    dims: WeightDims,
    tensors: Vec<Vec<f32>>,
}

impl EncoderWeights {
    /// Build from the sixteen tensors in [`WEIGHT_NAMES`] order, checking every length.
    pub fn from_tensors(wd: WeightDims, tensors: Vec<Vec<f32>>) -> Result<EncoderWeights> {
        if tensors.len() != WEIGHT_NAMES.len() {
            return Err(Error::shape(
                "weights",
                format!("{} tensors", WEIGHT_NAMES.len()),
                format!("{} tensors", tensors.len()),
            ));
        }
        check_dims(&wd)?;
        for (i, t) in tensors.iter().enumerate() {
            let want = wd.len(i)?;
            if t.len() != want {
                return Err(Error::weights(
                    WEIGHT_NAMES[i],
                    format!(
                        "expected shape {} ({want} values), got {} values",
                        dims(&wd.shape(i)),
                        t.len()
                    ),
                ));
            }
        }
        Ok(EncoderWeights { dims: wd, tensors })
    }

    /// The sizes.
    pub fn dims(&self) -> WeightDims {
        self.dims
    }

    /// A tensor by its Keras name (see [`WEIGHT_NAMES`]).
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        WEIGHT_NAMES
            .iter()
            .position(|&n| n == name)
            .map(|i| self.tensors[i].as_slice())
    }

    /// Tensor `i` of [`WEIGHT_NAMES`].
    pub(crate) fn tensor(&self, i: usize) -> &[f32] {
        &self.tensors[i]
    }

    /// Replace every value by its nearest value in a narrower storage format (applied when the
    /// configuration's dtype stores bf16 or f16 weights). A finite value that the format cannot
    /// hold (70000 in float16) is an error naming the tensor, never a silent infinity.
    pub(crate) fn round_through(&mut self, format: &str, f: impl Fn(f32) -> f32) -> Result<()> {
        for (i, t) in self.tensors.iter().enumerate() {
            if let Some(v) = t.iter().find(|v| v.is_finite() && !f(**v).is_finite()) {
                return Err(Error::weights(
                    WEIGHT_NAMES[i],
                    format!("value {v} overflows the {format} weight storage"),
                ));
            }
        }
        for t in &mut self.tensors {
            for v in t.iter_mut() {
                *v = f(*v);
            }
        }
        Ok(())
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
        let (h, nd, f) = (
            hidden_dim,
            dims.num_heads * dims.key_dim,
            dims.intermediate_dim,
        );
        let mut tensors = Vec::with_capacity(16);
        for i in 0..WEIGHT_NAMES.len() {
            let n = dims.len(i)?;
            let shape = dims.shape(i);
            let t = match i {
                // Kernels: EinsumDense passes the true input/output axes as fans (Keras 3.15).
                0 | 2 | 4 => draw(&config.kernel_initializer, n, h, nd, seed, i),
                6 => draw(&config.kernel_initializer, n, nd, h, seed, i),
                12 => draw(&config.kernel_initializer, n, h, f, seed, i),
                14 => draw(&config.kernel_initializer, n, f, h, seed, i),
                8 | 10 => vec![1.0; n],
                9 | 11 => vec![0.0; n],
                _ => {
                    // Biases: Keras' compute_fans of the bias shape.
                    let (fi, fo) = if shape.len() == 2 {
                        (shape[0], shape[1])
                    } else {
                        (shape[0], shape[0])
                    };
                    draw(&config.bias_initializer, n, fi, fo, seed, i)
                }
            };
            tensors.push(t);
        }
        EncoderWeights::from_tensors(dims, tensors)
    }

    /// Load from a safetensors buffer. Tensors are looked up as `prefix + name` (the golden files
    /// use `prefix = "weights/"`); tensors outside the prefix are ignored, and an unknown tensor
    /// inside it is an error. f32, f64, f16 and bf16 tensors are accepted.
    pub fn from_safetensors(bytes: &[u8], prefix: &str) -> Result<EncoderWeights> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::format("safetensors", e.to_string()))?;
        for name in st.names() {
            if let Some(rest) = name.strip_prefix(prefix)
                && !WEIGHT_NAMES.contains(&rest)
            {
                return Err(Error::weights(
                    name,
                    format!(
                        "unexpected tensor (not one of the encoder's weights under prefix `{prefix}`)"
                    ),
                ));
            }
        }
        let mut loaded = Vec::with_capacity(16);
        for name in WEIGHT_NAMES {
            let full = format!("{prefix}{name}");
            let t = st
                .tensor(&full)
                .map_err(|_| Error::weights(&full, "missing"))?;
            loaded.push((
                t.shape().to_vec(),
                tensor_to_f32(&full, t.dtype(), t.data())?,
            ));
        }
        // Each size is read off every tensor that carries it and the most common value wins,
        // so a single mis-shaped tensor is the one named in the error.
        let vote = |picks: &[(usize, usize)]| -> usize {
            let vals: Vec<usize> = picks
                .iter()
                .filter_map(|&(t, ax)| loaded[t].0.get(ax).copied())
                .collect();
            let mut best = (0usize, 0usize);
            for &v in &vals {
                let c = vals.iter().filter(|&&x| x == v).count();
                if c > best.1 {
                    best = (v, c);
                }
            }
            best.0
        };
        let wd = WeightDims {
            hidden_dim: vote(&[
                (0, 0),
                (2, 0),
                (4, 0),
                (6, 2),
                (7, 0),
                (8, 0),
                (9, 0),
                (10, 0),
                (11, 0),
                (12, 0),
                (14, 1),
                (15, 0),
            ]),
            num_heads: vote(&[(0, 1), (1, 0), (2, 1), (3, 0), (4, 1), (5, 0), (6, 0)]),
            key_dim: vote(&[(0, 2), (1, 1), (2, 2), (3, 1), (4, 2), (5, 1), (6, 1)]),
            intermediate_dim: vote(&[(12, 1), (13, 0), (14, 0)]),
        };
        check_dims(&wd)?;
        let mut tensors = Vec::with_capacity(16);
        for (i, (shape, data)) in loaded.into_iter().enumerate() {
            let want = wd.shape(i);
            if shape != want {
                return Err(Error::weights(
                    &format!("{prefix}{}", WEIGHT_NAMES[i]),
                    format!("expected shape {}, got {}", dims(&want), dims(&shape)),
                ));
            }
            tensors.push(data);
        }
        EncoderWeights::from_tensors(wd, tensors)
    }

    /// Load from a safetensors file (see [`EncoderWeights::from_safetensors`]).
    pub fn from_safetensors_file(path: impl AsRef<Path>, prefix: &str) -> Result<EncoderWeights> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| Error::format(&path.display().to_string(), e.to_string()))?;
        EncoderWeights::from_safetensors(&bytes, prefix)
    }

    /// Export as a safetensors buffer (float32) with the Keras names under `prefix`.
    pub fn to_safetensors(&self, prefix: &str) -> Result<Vec<u8>> {
        let views: BTreeMap<String, F32View<'_>> = WEIGHT_NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    format!("{prefix}{n}"),
                    F32View {
                        shape: self.dims.shape(i),
                        data: &self.tensors[i],
                    },
                )
            })
            .collect();
        safetensors::serialize(views, None).map_err(|e| Error::format("safetensors", e.to_string()))
    }

    /// Export to a safetensors file.
    pub fn save_safetensors(&self, path: impl AsRef<Path>, prefix: &str) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_safetensors(prefix)?;
        std::fs::write(path, bytes)
            .map_err(|e| Error::format(&path.display().to_string(), e.to_string()))
    }
}

fn check_dims(d: &WeightDims) -> Result<()> {
    if d.hidden_dim == 0 || d.num_heads == 0 || d.key_dim == 0 || d.intermediate_dim == 0 {
        return Err(Error::weights(
            WEIGHT_NAMES[0],
            format!("every size must be >= 1, got {d:?}"),
        ));
    }
    if d.key_dim != d.hidden_dim / d.num_heads {
        return Err(Error::weights(
            WEIGHT_NAMES[0],
            format!(
                "key_dim must be hidden_dim / num_heads (floored) = {}, got {}",
                d.hidden_dim / d.num_heads,
                d.key_dim
            ),
        ));
    }
    Ok(())
}

fn tensor_to_f32(name: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f32>> {
    let conv = |w: usize, f: &dyn Fn(&[u8]) -> f32| -> Result<Vec<f32>> {
        if !data.len().is_multiple_of(w) {
            return Err(Error::weights(
                name,
                "data length is not a multiple of the dtype size",
            ));
        }
        Ok(data.chunks_exact(w).map(f).collect())
    };
    match dtype {
        Dtype::F32 => conv(4, &|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        Dtype::F64 => conv(8, &|b| {
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }),
        Dtype::F16 => conv(2, &|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        Dtype::BF16 => conv(2, &|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        other => Err(Error::weights(
            name,
            format!("dtype {other:?} is not a float type (expected F32, F64, F16 or BF16)"),
        )),
    }
}

struct F32View<'a> {
    shape: Vec<usize>,
    data: &'a [f32],
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
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
