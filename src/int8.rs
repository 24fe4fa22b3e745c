//! Keras' int8 mode for the layer (SPEC section 10): `model.quantize("int8")` turns every
//! projection into an int8 `kernel` with a float32 `kernel_scale` per output unit; attention,
//! softmax and LayerNorm stay float. [`Int8Weights`] holds those variables under Keras' names.

use crate::error::{Error, Result};
use crate::store::TensorStore;
use crate::weights::{
    Dense, EncoderWeights, Loaded, NormRole, Sublayers, TensorOut, WeightDims, serialize,
    write_file,
};
use std::collections::BTreeMap;
use std::path::Path;
use transformer_encoder_kernels::quant::quantize_weights;

/// A projection after `quantize("int8")`: the int8 kernel (`[in, out]`, row major, Keras'
/// layout flattened), its `kernel_scale` (one per output unit) and the float bias.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Dense {
    /// `[in, out]`, values in `-127..=127`.
    pub kernel: Vec<i8>,
    /// `[out]`: `127 / (max_in |W| + 1e-7)`.
    pub kernel_scale: Vec<f32>,
    /// `[out]`.
    pub bias: Vec<f32>,
}

/// The weights of one layer in Keras' int8 mode: the variables `model.quantize("int8")` leaves,
/// under Keras' names (`<sublayer>/kernel` int8, `<sublayer>/kernel_scale`, `<sublayer>/bias`,
/// and the LayerNorms' `gamma` / `beta`).
///
/// ```
/// use transformer_encoder::{EncoderConfig, EncoderWeights, Int8Weights};
/// let w = EncoderWeights::init(&EncoderConfig::new(32, 4), 16, 7).unwrap();
/// let q = Int8Weights::quantize(&w);
/// assert!(q.sublayers().query.kernel.iter().all(|v| (-127..=127).contains(v)));
/// let back = Int8Weights::from_safetensors(&q.to_safetensors("").unwrap(), "").unwrap();
/// assert_eq!(back, q);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Weights {
    dims: WeightDims,
    layers: Sublayers<Int8Dense>,
}

/// The smallest `kernel_scale` accepted: it stands for weights of about 1.3e8 in magnitude
/// (trained weights are below 1e3). Much smaller scales stand for weights whose products
/// overflow float32 in attention's `QKᵀ` (all-NaN outputs at 1e-15 and 1e-30, found by
/// probing), as the float model would.
const MIN_SCALE: f32 = 1e-6;
/// The largest: Keras' largest is 127 / 1e-7 = 1.27e9 (an all-zero column).
const MAX_SCALE: f32 = 1e10;

impl Int8Dense {
    /// Projection `d`'s lengths, and Keras' value range.
    fn check(&self, d: Dense, dims: &WeightDims) -> Result<()> {
        let (rows, cols) = dims.matrix(d);
        let path = d.path();
        let check = |what: &str, got: usize, want: usize| -> Result<()> {
            if got == want {
                Ok(())
            } else {
                Err(Error::weights(
                    &format!("{path}/{what}"),
                    format!("expected {want} values, got {got}"),
                ))
            }
        };
        check("kernel", self.kernel.len(), rows * cols)?;
        check("kernel_scale", self.kernel_scale.len(), cols)?;
        check("bias", self.bias.len(), cols)?;
        if self.kernel.contains(&i8::MIN) {
            return Err(Error::weights(
                &format!("{path}/kernel"),
                "holds -128, outside Keras' int8 range -127..=127",
            ));
        }
        if let Some(v) = self
            .kernel_scale
            .iter()
            .find(|v| !(MIN_SCALE..=MAX_SCALE).contains(*v))
        {
            return Err(Error::weights(
                &format!("{path}/kernel_scale"),
                format!(
                    "must be within 1e-6 to 1e10 (Keras' scales are 127 / (max |W| + 1e-7), \
                     at most 1.27e9; 1e-6 stands for weights of about 1e8), got {v:e}"
                ),
            ));
        }
        Ok(())
    }

    /// Projection `d` of a layer's int8 variables, read from `loaded` and checked.
    pub(crate) fn read(loaded: &Loaded<'_>, d: Dense, dims: &WeightDims) -> Result<Int8Dense> {
        let kshape = dims
            .shape(&format!("{}/kernel", d.path()))
            .unwrap_or_default();
        let bshape = dims
            .shape(&format!("{}/bias", d.path()))
            .unwrap_or_default();
        let sname = format!("{}/kernel_scale", d.path());
        let keras = d.scale_shape(dims);
        let short = bshape.clone();
        let kernel_scale = loaded
            .f32_shaped(&sname, &keras)
            .or_else(|_| loaded.f32_shaped(&sname, &short))?;
        let w = Int8Dense {
            kernel: loaded.i8_shaped(&format!("{}/kernel", d.path()), &kshape)?,
            kernel_scale,
            bias: loaded.f32_shaped(&format!("{}/bias", d.path()), &bshape)?,
        };
        w.check(d, dims)?;
        Ok(w)
    }
}

impl Int8Weights {
    /// Build from named sublayers, checking every length (and Keras' value range).
    pub fn new(dims: WeightDims, layers: Sublayers<Int8Dense>) -> Result<Int8Weights> {
        dims.check()?;
        for d in Dense::ALL {
            layers.dense(d).check(d, &dims)?;
        }
        for n in NormRole::ALL {
            let w = layers.norm(n);
            for (what, t) in [("gamma", &w.gamma), ("beta", &w.beta)] {
                if t.len() != dims.hidden_dim {
                    return Err(Error::weights(
                        &format!("{}/{what}", n.path()),
                        format!("expected {} values, got {}", dims.hidden_dim, t.len()),
                    ));
                }
            }
        }
        Ok(Int8Weights { dims, layers })
    }

    /// What Keras' `quantize("int8")` makes of float weights: every projection's kernel
    /// quantized per output unit (float32 arithmetic, round half to even, clip to +-127); biases
    /// and LayerNorms unchanged.
    pub fn quantize(w: &EncoderWeights) -> Int8Weights {
        let dims = w.dims();
        let layers = w
            .sublayers()
            .try_map(|d, s| -> std::result::Result<Int8Dense, ()> {
                let (rows, cols) = dims.matrix(d);
                let (kernel, kernel_scale) = quantize_weights(&s.kernel, rows, cols);
                Ok(Int8Dense {
                    kernel,
                    kernel_scale,
                    bias: s.bias.clone(),
                })
            })
            .unwrap_or_else(|()| unreachable!("quantizing cannot fail"));
        Int8Weights { dims, layers }
    }

    /// The sizes.
    pub fn dims(&self) -> WeightDims {
        self.dims
    }

    /// The sublayers.
    pub fn sublayers(&self) -> &Sublayers<Int8Dense> {
        &self.layers
    }

    /// The sublayers, owned (an encoder packs them one tensor at a time, freeing each).
    pub(crate) fn into_sublayers(self) -> Sublayers<Int8Dense> {
        self.layers
    }

    /// The float weights the int8 ones stand for: `kernel / kernel_scale` per output unit.
    pub fn dequantize(&self) -> Result<EncoderWeights> {
        let layers = self.layers.try_map(|d, s| -> Result<_> {
            let cols = self.dims.matrix(d).1;
            Ok(crate::DenseWeights {
                kernel: s
                    .kernel
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| v as f32 / s.kernel_scale[i % cols])
                    .collect(),
                bias: s.bias.clone(),
            })
        })?;
        EncoderWeights::new(self.dims, layers)
    }

    /// Load Keras' quantized variables from a safetensors buffer, looked up as `prefix + name`
    /// (the golden files use `weights_int8/`); an unknown tensor under the prefix is an error,
    /// and so is a missing or mis-shaped one (named). `kernel_scale` may have Keras' shape (the
    /// output axes, with the reduced input axes kept as 1) or just the output axes.
    pub fn from_safetensors(bytes: &[u8], prefix: &str) -> Result<Int8Weights> {
        Int8Weights::from_store(&TensorStore::from_bytes(bytes)?, prefix)
    }

    /// Load from a safetensors file (see [`Int8Weights::from_safetensors`]), one tensor at a
    /// time: the file is never held in memory beside the weights.
    pub fn from_safetensors_file(path: impl AsRef<Path>, prefix: &str) -> Result<Int8Weights> {
        Int8Weights::from_store(&TensorStore::open(path.as_ref())?, prefix)
    }

    pub(crate) fn from_store(store: &TensorStore<'_>, prefix: &str) -> Result<Int8Weights> {
        let (loaded, dims) = Int8Weights::reader(store, prefix)?;
        let layers = Sublayers::try_build(
            |d| Int8Dense::read(&loaded, d, &dims),
            |n| loaded.norm(n, &dims),
        )?;
        Int8Weights::new(dims, layers)
    }

    /// Keras' int8 variables of a layer in `store` under `prefix` (every name there, none
    /// unknown), and their sizes: tensors are read when asked for.
    pub(crate) fn reader<'a>(
        store: &'a TensorStore<'a>,
        prefix: &str,
    ) -> Result<(Loaded<'a>, WeightDims)> {
        let mut names = Vec::new();
        for d in Dense::ALL {
            for t in ["kernel", "kernel_scale", "bias"] {
                names.push(format!("{}/{t}", d.path()));
            }
        }
        for n in NormRole::ALL {
            names.push(format!("{}/gamma", n.path()));
            names.push(format!("{}/beta", n.path()));
        }
        let loaded = Loaded::read(store, prefix, &names)?;
        let dims = loaded.dims()?;
        Ok((loaded, dims))
    }

    /// Export under Keras' names and shapes (int8 `kernel`, float32 `kernel_scale` with Keras'
    /// shape, float32 biases and norms), below `prefix`.
    pub fn to_safetensors(&self, prefix: &str) -> Result<Vec<u8>> {
        let d = &self.dims;
        let mut views: BTreeMap<String, TensorOut<'_>> = BTreeMap::new();
        for role in Dense::ALL {
            let s = self.layers.dense(role);
            let p = role.path();
            let shape = |n: &str| d.shape(&format!("{p}/{n}")).unwrap_or_default();
            views.insert(
                format!("{prefix}{p}/kernel"),
                TensorOut::I8 {
                    shape: shape("kernel"),
                    data: &s.kernel,
                },
            );
            views.insert(
                format!("{prefix}{p}/kernel_scale"),
                TensorOut::F32 {
                    shape: role.scale_shape(d),
                    data: &s.kernel_scale,
                },
            );
            views.insert(
                format!("{prefix}{p}/bias"),
                TensorOut::F32 {
                    shape: shape("bias"),
                    data: &s.bias,
                },
            );
        }
        for n in NormRole::ALL {
            let w = self.layers.norm(n);
            for (what, t) in [("gamma", &w.gamma), ("beta", &w.beta)] {
                views.insert(
                    format!("{prefix}{}/{what}", n.path()),
                    TensorOut::F32 {
                        shape: vec![d.hidden_dim],
                        data: t,
                    },
                );
            }
        }
        serialize(views)
    }

    /// Export to a safetensors file.
    pub fn save_safetensors(&self, path: impl AsRef<Path>, prefix: &str) -> Result<()> {
        write_file(path.as_ref(), &self.to_safetensors(prefix)?)
    }
}
