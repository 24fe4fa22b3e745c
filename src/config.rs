//! The layer's configuration: every argument of `keras_hub.layers.TransformerEncoder`, validated,
//! read from and written to the Keras `get_config()` JSON.

use crate::error::Error;
use serde_json::{Map, Value, json};
use transformer_encoder_kernels::activation::Activation;

/// How fresh weights are drawn (a Keras initializer with its arguments). Seeded and reproducible.
///
/// ```
/// use transformer_encoder::Initializer;
/// let init = Initializer::from_keras_name("he_normal").unwrap();
/// assert_eq!(init, Initializer::HeNormal { seed: None });
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum Initializer {
    /// `limit = sqrt(6 / (fan_in + fan_out))`, uniform in `[-limit, limit]` (Keras default).
    GlorotUniform {
        /// Keras `seed` (`None` = the seed given when drawing).
        seed: Option<u64>,
    },
    /// Truncated normal, `stddev = sqrt(2 / (fan_in + fan_out))`.
    GlorotNormal {
        /// Keras `seed`.
        seed: Option<u64>,
    },
    /// Uniform, `limit = sqrt(6 / fan_in)`.
    HeUniform {
        /// Keras `seed`.
        seed: Option<u64>,
    },
    /// Truncated normal, `stddev = sqrt(2 / fan_in)`.
    HeNormal {
        /// Keras `seed`.
        seed: Option<u64>,
    },
    /// Uniform, `limit = sqrt(3 / fan_in)`.
    LecunUniform {
        /// Keras `seed`.
        seed: Option<u64>,
    },
    /// Truncated normal, `stddev = sqrt(1 / fan_in)`.
    LecunNormal {
        /// Keras `seed`.
        seed: Option<u64>,
    },
    /// Uniform in `[minval, maxval]` (Keras defaults -0.05, 0.05).
    RandomUniform {
        /// Lower bound.
        minval: f64,
        /// Upper bound.
        maxval: f64,
        /// Keras `seed`.
        seed: Option<u64>,
    },
    /// Normal (Keras defaults mean 0, stddev 0.05).
    RandomNormal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        stddev: f64,
        /// Keras `seed`.
        seed: Option<u64>,
    },
    /// Normal truncated at two standard deviations (redrawn), Keras defaults mean 0, stddev 0.05.
    TruncatedNormal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        stddev: f64,
        /// Keras `seed`.
        seed: Option<u64>,
    },
    /// All zeros (the Keras default for biases).
    Zeros,
    /// All ones.
    Ones,
}

/// The initializer names this crate accepts (Keras strings).
pub const INITIALIZER_NAMES: &[&str] = &[
    "glorot_uniform",
    "glorot_normal",
    "he_uniform",
    "he_normal",
    "lecun_uniform",
    "lecun_normal",
    "random_uniform",
    "random_normal",
    "truncated_normal",
    "zeros",
    "ones",
];

const CLASS_NAMES: &[&str] = &[
    "GlorotUniform",
    "GlorotNormal",
    "HeUniform",
    "HeNormal",
    "LecunUniform",
    "LecunNormal",
    "RandomUniform",
    "RandomNormal",
    "TruncatedNormal",
    "Zeros",
    "Ones",
];

impl Initializer {
    /// The initializer of a Keras string identifier, with Keras' default arguments.
    pub fn from_keras_name(name: &str) -> Result<Initializer, Error> {
        let i = INITIALIZER_NAMES
            .iter()
            .position(|&n| n == name)
            .or_else(|| CLASS_NAMES.iter().position(|&n| n == name))
            .ok_or_else(|| unknown_initializer(name))?;
        Ok(Initializer::default_of(i))
    }

    fn default_of(i: usize) -> Initializer {
        match i {
            0 => Initializer::GlorotUniform { seed: None },
            1 => Initializer::GlorotNormal { seed: None },
            2 => Initializer::HeUniform { seed: None },
            3 => Initializer::HeNormal { seed: None },
            4 => Initializer::LecunUniform { seed: None },
            5 => Initializer::LecunNormal { seed: None },
            6 => Initializer::RandomUniform {
                minval: -0.05,
                maxval: 0.05,
                seed: None,
            },
            7 => Initializer::RandomNormal {
                mean: 0.0,
                stddev: 0.05,
                seed: None,
            },
            8 => Initializer::TruncatedNormal {
                mean: 0.0,
                stddev: 0.05,
                seed: None,
            },
            9 => Initializer::Zeros,
            _ => Initializer::Ones,
        }
    }

    fn index(&self) -> usize {
        match self {
            Initializer::GlorotUniform { .. } => 0,
            Initializer::GlorotNormal { .. } => 1,
            Initializer::HeUniform { .. } => 2,
            Initializer::HeNormal { .. } => 3,
            Initializer::LecunUniform { .. } => 4,
            Initializer::LecunNormal { .. } => 5,
            Initializer::RandomUniform { .. } => 6,
            Initializer::RandomNormal { .. } => 7,
            Initializer::TruncatedNormal { .. } => 8,
            Initializer::Zeros => 9,
            Initializer::Ones => 10,
        }
    }

    /// The Keras string identifier (`"glorot_uniform"`, ...).
    pub fn keras_name(&self) -> &'static str {
        INITIALIZER_NAMES[self.index()]
    }

    /// The seed stored in the initializer's own config, if any.
    pub fn seed(&self) -> Option<u64> {
        match self {
            Initializer::GlorotUniform { seed }
            | Initializer::GlorotNormal { seed }
            | Initializer::HeUniform { seed }
            | Initializer::HeNormal { seed }
            | Initializer::LecunUniform { seed }
            | Initializer::LecunNormal { seed }
            | Initializer::RandomUniform { seed, .. }
            | Initializer::RandomNormal { seed, .. }
            | Initializer::TruncatedNormal { seed, .. } => *seed,
            Initializer::Zeros | Initializer::Ones => None,
        }
    }

    /// Parse a Keras serialized initializer (a string or a `{"class_name", "config"}` object).
    pub fn from_keras_json(v: &Value) -> Result<Initializer, Error> {
        match v {
            Value::String(s) => Initializer::from_keras_name(s),
            Value::Object(o) => {
                let class = o
                    .get("class_name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Error::config("initializer", "an object with `class_name`"))?;
                let mut init = Initializer::from_keras_name(class)?;
                let cfg = o.get("config").and_then(Value::as_object);
                let get = |k: &str| cfg.and_then(|c| c.get(k));
                let seed = match get("seed") {
                    None | Some(Value::Null) => None,
                    Some(s) => Some(s.as_u64().ok_or_else(|| {
                        Error::config(
                            "initializer seed",
                            format!("a non-negative integer, got {s}"),
                        )
                    })?),
                };
                let num = |k: &str, d: f64| -> Result<f64, Error> {
                    match get(k) {
                        None | Some(Value::Null) => Ok(d),
                        Some(x) => x.as_f64().ok_or_else(|| {
                            Error::config("initializer", format!("`{k}` a number, got {x}"))
                        }),
                    }
                };
                match &mut init {
                    Initializer::GlorotUniform { seed: s }
                    | Initializer::GlorotNormal { seed: s }
                    | Initializer::HeUniform { seed: s }
                    | Initializer::HeNormal { seed: s }
                    | Initializer::LecunUniform { seed: s }
                    | Initializer::LecunNormal { seed: s } => *s = seed,
                    Initializer::RandomUniform {
                        minval,
                        maxval,
                        seed: s,
                    } => {
                        *minval = num("minval", -0.05)?;
                        *maxval = num("maxval", 0.05)?;
                        *s = seed;
                    }
                    Initializer::RandomNormal {
                        mean,
                        stddev,
                        seed: s,
                    }
                    | Initializer::TruncatedNormal {
                        mean,
                        stddev,
                        seed: s,
                    } => {
                        *mean = num("mean", 0.0)?;
                        *stddev = num("stddev", 0.05)?;
                        *s = seed;
                    }
                    Initializer::Zeros | Initializer::Ones => {}
                }
                Ok(init)
            }
            other => Err(Error::config(
                "initializer",
                format!("a string or an object, got {other}"),
            )),
        }
    }

    /// The Keras serialized form, as `keras.initializers.serialize` writes it.
    pub fn to_keras_json(&self) -> Value {
        let seed = self.seed().map_or(Value::Null, |s| json!(s));
        let config = match self {
            Initializer::RandomUniform { minval, maxval, .. } => {
                json!({"seed": seed, "minval": minval, "maxval": maxval})
            }
            Initializer::RandomNormal { mean, stddev, .. }
            | Initializer::TruncatedNormal { mean, stddev, .. } => {
                json!({"seed": seed, "mean": mean, "stddev": stddev})
            }
            Initializer::Zeros | Initializer::Ones => json!({}),
            _ => json!({"seed": seed, "input_axes": null, "output_axes": null}),
        };
        json!({
            "module": "keras.initializers",
            "class_name": CLASS_NAMES[self.index()],
            "config": config,
            "registered_name": null,
        })
    }

    fn check(&self, which: &str) -> Result<(), Error> {
        let bad = match self {
            Initializer::RandomUniform { minval, maxval, .. } => {
                !(minval.is_finite() && maxval.is_finite() && minval <= maxval)
            }
            Initializer::RandomNormal { mean, stddev, .. }
            | Initializer::TruncatedNormal { mean, stddev, .. } => {
                !(mean.is_finite() && stddev.is_finite() && *stddev >= 0.0)
            }
            _ => false,
        };
        if bad {
            Err(Error::config(
                which,
                format!("finite bounds (minval <= maxval, stddev >= 0), got {self:?}"),
            ))
        } else {
            Ok(())
        }
    }
}

#[cold]
fn unknown_initializer(name: &str) -> Error {
    Error::config(
        "initializer",
        format!(
            "one of {} (or their Keras class names), got `{name}`",
            INITIALIZER_NAMES.join(", ")
        ),
    )
}

/// The weight storage precision, from the Keras `dtype` policy. (The compute precision is
/// [`EncoderConfig::compute_precision`]: bf16 for the bfloat16 policies, float32 otherwise.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightPrecision {
    /// float32 weights (`"float32"`, and the `mixed_*` policies, whose variables are float32).
    F32,
    /// bfloat16 weights (the `"bfloat16"` policy).
    Bf16,
    /// float16 weights (the `"float16"` policy).
    F16,
}

/// Keras dtype policy names this crate accepts.
pub const DTYPE_POLICIES: &[&str] = &[
    "float32",
    "mixed_bfloat16",
    "mixed_float16",
    "bfloat16",
    "float16",
];

fn precision_of_policy(name: &str) -> Result<WeightPrecision, Error> {
    match name {
        "float32" | "mixed_bfloat16" | "mixed_float16" => Ok(WeightPrecision::F32),
        "bfloat16" => Ok(WeightPrecision::Bf16),
        "float16" => Ok(WeightPrecision::F16),
        _ => Err(Error::config(
            "dtype",
            format!("one of {}, got `{name}`", DTYPE_POLICIES.join(", ")),
        )),
    }
}

/// Every argument of `keras_hub.layers.TransformerEncoder`.
///
/// ```
/// use transformer_encoder::EncoderConfig;
/// let cfg = EncoderConfig::new(64, 8); // intermediate_dim, num_heads; Keras defaults otherwise
/// cfg.validate(64).unwrap();
/// assert_eq!(cfg.key_dim(64), 8);
/// let json = cfg.to_keras_json();
/// assert_eq!(EncoderConfig::from_keras_json(&json).unwrap(), cfg);
/// ```
#[derive(Clone, Debug)]
pub struct EncoderConfig {
    /// FFN hidden size (>= 1).
    pub intermediate_dim: usize,
    /// Attention heads (>= 1).
    pub num_heads: usize,
    /// Dropout rate shared by the three dropout sites, `0 <= rate < 1`; used in training only.
    pub dropout: f64,
    /// FFN activation.
    pub activation: Activation,
    /// LayerNorm epsilon (finite, > 0).
    pub layer_norm_epsilon: f64,
    /// Kernel initializer for the dense and attention layers.
    pub kernel_initializer: Initializer,
    /// Bias initializer for the dense and attention layers.
    pub bias_initializer: Initializer,
    /// `false`: post-norm (BERT); `true`: pre-norm (GPT-2), no final LayerNorm.
    pub normalize_first: bool,
    /// Keras layer name.
    pub name: String,
    /// Keras `trainable` flag (kept for the round trip; inference ignores it).
    pub trainable: bool,
    /// Keras dtype policy name (`"float32"`, `"bfloat16"`, ...): sets the weight storage precision.
    pub dtype: String,
    /// The JSON this configuration was read from, to write unchanged fields back byte for byte.
    raw: Option<Map<String, Value>>,
}

impl EncoderConfig {
    /// A configuration with Keras' defaults: dropout 0, `relu`, epsilon 1e-5, glorot_uniform
    /// kernels, zero biases, post-norm, float32.
    pub fn new(intermediate_dim: usize, num_heads: usize) -> EncoderConfig {
        EncoderConfig {
            intermediate_dim,
            num_heads,
            dropout: 0.0,
            activation: Activation::Relu,
            layer_norm_epsilon: 1e-5,
            kernel_initializer: Initializer::GlorotUniform { seed: None },
            bias_initializer: Initializer::Zeros,
            normalize_first: false,
            name: "transformer_encoder".to_string(),
            trainable: true,
            dtype: "float32".to_string(),
            raw: None,
        }
    }

    /// Set the activation.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Set the dropout rate.
    pub fn with_dropout(mut self, rate: f64) -> Self {
        self.dropout = rate;
        self
    }

    /// Set the LayerNorm epsilon.
    pub fn with_layer_norm_epsilon(mut self, eps: f64) -> Self {
        self.layer_norm_epsilon = eps;
        self
    }

    /// Pre-norm (`true`) or post-norm (`false`).
    pub fn with_normalize_first(mut self, normalize_first: bool) -> Self {
        self.normalize_first = normalize_first;
        self
    }

    /// Set the kernel initializer.
    pub fn with_kernel_initializer(mut self, init: Initializer) -> Self {
        self.kernel_initializer = init;
        self
    }

    /// Set the bias initializer.
    pub fn with_bias_initializer(mut self, init: Initializer) -> Self {
        self.bias_initializer = init;
        self
    }

    /// Set the Keras dtype policy name.
    pub fn with_dtype(mut self, dtype: &str) -> Self {
        self.dtype = dtype.to_string();
        self
    }

    /// `hidden_dim / num_heads`, floored (0 if `num_heads` is 0).
    pub fn key_dim(&self, hidden_dim: usize) -> usize {
        hidden_dim.checked_div(self.num_heads).unwrap_or(0)
    }

    /// The weight storage precision of the dtype policy.
    pub fn weight_precision(&self) -> Result<WeightPrecision, Error> {
        precision_of_policy(&self.dtype)
    }

    /// The precision a layer built from float weights with this configuration computes in:
    /// [`Precision::Bf16`](crate::Precision::Bf16) for Keras' `"mixed_bfloat16"` and
    /// `"bfloat16"` policies (bf16 operands, float32 sums), float32 for the others.
    ///
    /// ```
    /// use transformer_encoder::{EncoderConfig, Precision};
    /// let cfg = EncoderConfig::new(64, 8).with_dtype("mixed_bfloat16");
    /// assert_eq!(cfg.compute_precision()?, Precision::Bf16);
    /// assert_eq!(EncoderConfig::new(64, 8).compute_precision()?, Precision::F32);
    /// # Ok::<(), transformer_encoder::Error>(())
    /// ```
    pub fn compute_precision(&self) -> Result<crate::Precision, Error> {
        precision_of_policy(&self.dtype)?;
        Ok(match self.dtype.as_str() {
            "mixed_bfloat16" | "bfloat16" => crate::Precision::Bf16,
            _ => crate::Precision::F32,
        })
    }

    /// Check every argument against SPEC section 1, for an input of `hidden_dim` features.
    pub fn validate(&self, hidden_dim: usize) -> Result<(), Error> {
        if self.intermediate_dim == 0 {
            return Err(Error::config("intermediate_dim", "an integer >= 1, got 0"));
        }
        if self.num_heads == 0 {
            return Err(Error::config("num_heads", "an integer >= 1, got 0"));
        }
        if !(self.dropout >= 0.0 && self.dropout < 1.0) {
            return Err(Error::config(
                "dropout",
                format!("a rate with 0 <= rate < 1, got {}", self.dropout),
            ));
        }
        if !(self.layer_norm_epsilon.is_finite() && self.layer_norm_epsilon > 0.0) {
            return Err(Error::config(
                "layer_norm_epsilon",
                format!("a finite number > 0, got {}", self.layer_norm_epsilon),
            ));
        }
        if hidden_dim == 0 {
            return Err(Error::config("hidden_dim", "an integer >= 1, got 0"));
        }
        if self.key_dim(hidden_dim) == 0 {
            return Err(Error::config(
                "num_heads",
                format!(
                    "Attention `key_dim` computed cannot be zero. The `hidden_dim` value of {hidden_dim} has to be equal to or greater than `num_heads` value of {}.",
                    self.num_heads
                ),
            ));
        }
        self.kernel_initializer.check("kernel_initializer")?;
        self.bias_initializer.check("bias_initializer")?;
        self.weight_precision()?;
        Ok(())
    }

    /// Read a Keras `get_config()` JSON (a string).
    pub fn from_keras_json_str(s: &str) -> Result<EncoderConfig, Error> {
        let v: Value = serde_json::from_str(s)
            .map_err(|e| Error::config("config", format!("valid JSON ({e})")))?;
        EncoderConfig::from_keras_json(&v)
    }

    /// Read a Keras `get_config()` JSON value. Missing optional keys take Keras' defaults;
    /// `intermediate_dim` and `num_heads` are required. Values are checked with
    /// [`EncoderConfig::validate`] when the encoder is built (the hidden size is needed).
    pub fn from_keras_json(v: &Value) -> Result<EncoderConfig, Error> {
        let o = v
            .as_object()
            .ok_or_else(|| Error::config("config", format!("a JSON object, got {v}")))?;
        let uint = |k: &'static str| -> Result<usize, Error> {
            let x = o
                .get(k)
                .ok_or_else(|| Error::config(k, "present in the config (required)"))?;
            match x.as_u64() {
                Some(u) => usize::try_from(u).map_err(|_| {
                    Error::config(k, format!("an integer that fits in usize, got {x}"))
                }),
                None => Err(Error::config(k, format!("a non-negative integer, got {x}"))),
            }
        };
        let mut cfg = EncoderConfig::new(uint("intermediate_dim")?, uint("num_heads")?);
        if let Some(x) = o.get("dropout") {
            cfg.dropout = x
                .as_f64()
                .ok_or_else(|| Error::config("dropout", format!("a number, got {x}")))?;
        }
        if let Some(x) = o.get("activation") {
            cfg.activation = activation_from_json(x)?;
        }
        if let Some(x) = o.get("layer_norm_epsilon") {
            cfg.layer_norm_epsilon = x
                .as_f64()
                .ok_or_else(|| Error::config("layer_norm_epsilon", format!("a number, got {x}")))?;
        }
        if let Some(x) = o.get("kernel_initializer") {
            cfg.kernel_initializer = Initializer::from_keras_json(x)?;
        }
        if let Some(x) = o.get("bias_initializer") {
            cfg.bias_initializer = Initializer::from_keras_json(x)?;
        }
        if let Some(x) = o.get("normalize_first") {
            cfg.normalize_first = x
                .as_bool()
                .ok_or_else(|| Error::config("normalize_first", format!("a boolean, got {x}")))?;
        }
        if let Some(x) = o.get("name") {
            cfg.name = x
                .as_str()
                .ok_or_else(|| Error::config("name", format!("a string, got {x}")))?
                .to_string();
        }
        if let Some(x) = o.get("trainable") {
            cfg.trainable = x
                .as_bool()
                .ok_or_else(|| Error::config("trainable", format!("a boolean, got {x}")))?;
        }
        if let Some(x) = o.get("dtype") {
            cfg.dtype = dtype_from_json(x)?;
            precision_of_policy(&cfg.dtype)?;
        }
        cfg.raw = Some(o.clone());
        Ok(cfg)
    }

    /// Write the Keras `get_config()` JSON. A configuration read by
    /// [`EncoderConfig::from_keras_json`] and not changed writes the same JSON back; changed
    /// fields are written as Keras writes them (`"swish"` becomes `"silu"`).
    pub fn to_keras_json(&self) -> Value {
        let raw = self.raw.as_ref();
        // Keep the original spelling of a field whose meaning did not change.
        let keep = |k: &str, same: &dyn Fn(&Value) -> bool, fresh: Value| -> Value {
            match raw.and_then(|r| r.get(k)) {
                Some(old) if same(old) => old.clone(),
                _ => fresh,
            }
        };
        let dropout_fresh = if self.dropout == 0.0 {
            json!(0)
        } else {
            json!(self.dropout)
        };
        let activation_fresh = match self.activation {
            Activation::GeluApproximate => json!({
                "module": "builtins", "class_name": "function",
                "config": "keras_hub>gelu_approximate", "registered_name": "function"
            }),
            a => json!(a.keras_name()),
        };
        let mut m = Map::new();
        m.insert(
            "name".into(),
            keep(
                "name",
                &|v| v.as_str() == Some(&self.name),
                json!(self.name),
            ),
        );
        m.insert(
            "trainable".into(),
            keep(
                "trainable",
                &|v| v.as_bool() == Some(self.trainable),
                json!(self.trainable),
            ),
        );
        m.insert(
            "dtype".into(),
            keep(
                "dtype",
                &|v| dtype_from_json(v).ok().as_deref() == Some(self.dtype.as_str()),
                json!({"module": "keras", "class_name": "DTypePolicy",
                       "config": {"name": self.dtype}, "registered_name": null}),
            ),
        );
        m.insert("intermediate_dim".into(), json!(self.intermediate_dim));
        m.insert("num_heads".into(), json!(self.num_heads));
        m.insert(
            "dropout".into(),
            keep(
                "dropout",
                &|v| v.as_f64() == Some(self.dropout),
                dropout_fresh,
            ),
        );
        m.insert(
            "activation".into(),
            keep(
                "activation",
                &|v| {
                    // Aliases are written canonically; other spellings of the same one are kept.
                    activation_from_json(v).ok() == Some(self.activation)
                        && v.as_str() != Some("swish")
                        && v.as_str() != Some("hard_swish")
                },
                activation_fresh,
            ),
        );
        m.insert(
            "layer_norm_epsilon".into(),
            keep(
                "layer_norm_epsilon",
                &|v| v.as_f64() == Some(self.layer_norm_epsilon),
                json!(self.layer_norm_epsilon),
            ),
        );
        m.insert(
            "kernel_initializer".into(),
            keep(
                "kernel_initializer",
                &|v| {
                    Initializer::from_keras_json(v).ok().as_ref() == Some(&self.kernel_initializer)
                },
                self.kernel_initializer.to_keras_json(),
            ),
        );
        m.insert(
            "bias_initializer".into(),
            keep(
                "bias_initializer",
                &|v| Initializer::from_keras_json(v).ok().as_ref() == Some(&self.bias_initializer),
                self.bias_initializer.to_keras_json(),
            ),
        );
        m.insert("normalize_first".into(), json!(self.normalize_first));
        // Keys this crate does not interpret (newer Keras versions) are carried through.
        if let Some(r) = raw {
            for (k, v) in r {
                if !m.contains_key(k) {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
        Value::Object(m)
    }
}

/// Two configurations are equal when every argument is (the remembered source JSON is ignored).
impl PartialEq for EncoderConfig {
    fn eq(&self, o: &EncoderConfig) -> bool {
        self.intermediate_dim == o.intermediate_dim
            && self.num_heads == o.num_heads
            && self.dropout == o.dropout
            && self.activation == o.activation
            && self.layer_norm_epsilon == o.layer_norm_epsilon
            && self.kernel_initializer == o.kernel_initializer
            && self.bias_initializer == o.bias_initializer
            && self.normalize_first == o.normalize_first
            && self.name == o.name
            && self.trainable == o.trainable
            && self.dtype == o.dtype
    }
}

fn activation_from_json(v: &Value) -> Result<Activation, Error> {
    let name = match v {
        Value::Null => return Ok(Activation::Linear),
        Value::String(s) => s.as_str(),
        // {"module": "builtins", "class_name": "function", "config": "keras_hub>gelu_approximate"}
        Value::Object(o) => o
            .get("config")
            .and_then(Value::as_str)
            .map(|s| s.rsplit('>').next().unwrap_or(s))
            .ok_or_else(|| {
                Error::config(
                    "activation",
                    format!("a name or a serialized function, got {v}"),
                )
            })?,
        other => {
            return Err(Error::config(
                "activation",
                format!("a name or a serialized function, got {other}"),
            ));
        }
    };
    Activation::from_keras_name(name).map_err(|e| Error::config("activation", e.to_string()))
}

fn dtype_from_json(v: &Value) -> Result<String, Error> {
    match v {
        Value::Null => Ok("float32".to_string()),
        Value::String(s) => Ok(s.clone()),
        Value::Object(o) => o
            .get("config")
            .and_then(|c| c.get("name"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| Error::config("dtype", format!("a dtype policy, got {v}"))),
        other => Err(Error::config(
            "dtype",
            format!("a dtype policy, got {other}"),
        )),
    }
}
