//! The feed-forward activations of Keras 3.15 (SPEC section 5), by name.
//!
//! [`Activation`] lists every name `keras.activations.get` accepts for this layer. Element-wise
//! activations are evaluated by [`Activation::eval_f64`] (the reference) and by the fast kernels;
//! the row-wise ones (`softmax`, `log_softmax`, `sparsemax`) act over the intermediate axis and
//! are evaluated by [`Activation::eval_row_f64`].

use std::fmt;

/// A feed-forward activation, named as Keras names it.
///
/// ```
/// use transformer_encoder_kernels::activation::Activation;
/// let a = Activation::from_keras_name("swish").unwrap();
/// assert_eq!(a, Activation::Silu);
/// assert_eq!(a.keras_name(), "silu");
/// assert!((Activation::Gelu.eval_f64(1.0) - 0.8413447460685429).abs() < 1e-15);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `max(x, 0)`, the Keras default.
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): exact.
    Relu,
    /// `min(max(x, 0), 6)`.
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): exact.
    Relu6,
    /// `x >= 0 ? x : 0.2 x` (Keras 3 default slope).
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 1 ulp.
    LeakyRelu,
    /// `x > 0 ? x : expm1(x)`.
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 2 ulp (1.2e-36 absolute near 0).
    Elu,
    /// `1.0507009873554805 * (x > 0 ? x : 1.6732632423543772 * expm1(x))`.
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 3 ulp (1.2e-36 absolute near 0).
    Selu,
    /// `x > 0 ? x : expm1(x)` (alpha 1).
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 2 ulp (1.2e-36 absolute near 0).
    Celu,
    /// Exact GELU, `0.5 x erfc(-x / sqrt 2)` (the Keras string `"gelu"`).
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 8 ulp (1.2e-36 absolute near 0).
    Gelu,
    /// Tanh GELU, `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))` (BERT's `gelu_approximate`).
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 16 ulp or 1e-8 absolute (the f32 rounding of its cubic argument, amplified in the negative tail).
    GeluApproximate,
    /// `x sigmoid(x)` (also `swish`).
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 5 ulp (1.2e-36 absolute near 0).
    Silu,
    /// `1 / (1 + e^-x)`.
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 4 ulp (1.2e-36 absolute near 0).
    Sigmoid,
    /// `relu6(x + 3) / 6`.
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 2 ulp.
    HardSigmoid,
    /// `x relu6(x + 3) / 6` (also `hard_swish`).
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 3 ulp.
    HardSilu,
    /// `-softplus(-x)`.
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 5 ulp (1.2e-36 absolute near 0).
    LogSigmoid,
    /// `log1p(e^-|x|) + max(x, 0)`.
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 5 ulp (1.2e-36 absolute near 0).
    Softplus,
    /// `x / (1 + |x|)`.
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 2 ulp.
    Softsign,
    /// `x tanh(softplus(x))`.
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 8 ulp (1.2e-36 absolute near 0).
    Mish,
    /// `tanh(x)`.
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 4 ulp.
    Tanh,
    /// `x - tanh(x)`.
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 4 ulp.
    TanhShrink,
    /// `clip(x, -1, 1)`.
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): exact.
    HardTanh,
    /// `|x| > 0.5 ? x : 0`.
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): exact.
    HardShrink,
    /// `x > 0.5 ? x - 0.5 : x < -0.5 ? x + 0.5 : 0`.
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): exact.
    SoftShrink,
    /// `x <= -1 ? 0 : x >= 1 ? x : (x + 1)^2 / 4`.
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 2 ulp.
    SparsePlus,
    /// `x <= -1 ? 0 : x >= 1 ? 1 : (x + 1) / 2`.
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 1 ulp.
    SparseSigmoid,
    /// `(x + sqrt(x^2 + 4)) / 2`.
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 3 ulp.
    Squareplus,
    /// `e^x`.
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 2 ulp (results below 1.2e-36 flush to 0).
    Exponential,
    /// `x`.
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): exact.
    Linear,
    /// Softmax over the intermediate axis (row-wise).
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 48 ulp (4 ulp within 8 of the row maximum).
    Softmax,
    /// Log-softmax over the intermediate axis (row-wise).
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 4 ulp or 2.4e-7 absolute.
    LogSoftmax,
    /// Sparsemax over the intermediate axis (row-wise).
    ///
    /// Kernel accuracy ([`Activation::error_bound`]): within 4 ulp of the row's largest finite value, absolute.
    Sparsemax,
}

/// Every accepted name, canonical names first, in the order of [`Activation::ALL`], then aliases.
pub const ACCEPTED_NAMES: &[&str] = &[
    "relu",
    "relu6",
    "leaky_relu",
    "elu",
    "selu",
    "celu",
    "gelu",
    "gelu_approximate",
    "silu",
    "sigmoid",
    "hard_sigmoid",
    "hard_silu",
    "log_sigmoid",
    "softplus",
    "softsign",
    "mish",
    "tanh",
    "tanh_shrink",
    "hard_tanh",
    "hard_shrink",
    "soft_shrink",
    "sparse_plus",
    "sparse_sigmoid",
    "squareplus",
    "exponential",
    "linear",
    "softmax",
    "log_softmax",
    "sparsemax",
    "swish",
    "hard_swish",
];

/// Why a name is not an activation this layer can use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActivationNameError {
    /// A Keras activation that cannot be used in this layer (`glu`, `threshold`), with the reason.
    Refused {
        /// The name given.
        name: String,
        /// Why Keras itself cannot build the layer with it.
        reason: &'static str,
    },
    /// Not a Keras activation name.
    Unknown {
        /// The name given.
        name: String,
    },
}

impl fmt::Display for ActivationNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActivationNameError::Refused { name, reason } => {
                write!(
                    f,
                    "activation `{name}` cannot be used in this layer: {reason}"
                )
            }
            ActivationNameError::Unknown { name } => write!(
                f,
                "unknown activation `{name}`; accepted names: {}",
                ACCEPTED_NAMES.join(", ")
            ),
        }
    }
}

impl std::error::Error for ActivationNameError {}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const SELU_SCALE: f64 = 1.050_700_987_355_480_5;
const SELU_ALPHA: f64 = 1.673_263_242_354_377_2;

impl Activation {
    /// Every activation, in the order of [`ACCEPTED_NAMES`].
    pub const ALL: [Activation; 29] = [
        Activation::Relu,
        Activation::Relu6,
        Activation::LeakyRelu,
        Activation::Elu,
        Activation::Selu,
        Activation::Celu,
        Activation::Gelu,
        Activation::GeluApproximate,
        Activation::Silu,
        Activation::Sigmoid,
        Activation::HardSigmoid,
        Activation::HardSilu,
        Activation::LogSigmoid,
        Activation::Softplus,
        Activation::Softsign,
        Activation::Mish,
        Activation::Tanh,
        Activation::TanhShrink,
        Activation::HardTanh,
        Activation::HardShrink,
        Activation::SoftShrink,
        Activation::SparsePlus,
        Activation::SparseSigmoid,
        Activation::Squareplus,
        Activation::Exponential,
        Activation::Linear,
        Activation::Softmax,
        Activation::LogSoftmax,
        Activation::Sparsemax,
    ];

    /// The canonical Keras name (what `get_config()` writes).
    ///
    /// ```
    /// use transformer_encoder_kernels::activation::Activation;
    /// assert_eq!(Activation::HardSilu.keras_name(), "hard_silu");
    /// ```
    pub fn keras_name(self) -> &'static str {
        let i = Activation::ALL.iter().position(|&a| a == self).unwrap_or(0);
        ACCEPTED_NAMES[i]
    }

    /// Parse a Keras activation name (aliases `swish` and `hard_swish` included; `None`/empty
    /// is not accepted here, the configuration maps a JSON `null` to `linear` as Keras does).
    ///
    /// ```
    /// use transformer_encoder_kernels::activation::Activation;
    /// assert!(Activation::from_keras_name("glu").is_err());
    /// assert_eq!(Activation::from_keras_name("gelu").unwrap(), Activation::Gelu);
    /// ```
    pub fn from_keras_name(name: &str) -> Result<Activation, ActivationNameError> {
        match name {
            "swish" => return Ok(Activation::Silu),
            "hard_swish" => return Ok(Activation::HardSilu),
            "glu" => {
                return Err(ActivationNameError::Refused {
                    name: name.to_string(),
                    reason: "glu halves the intermediate width, so the output dense layer cannot be built",
                });
            }
            "threshold" => {
                return Err(ActivationNameError::Refused {
                    name: name.to_string(),
                    reason: "threshold needs `threshold` and `default_value` arguments a name cannot carry",
                });
            }
            _ => {}
        }
        ACCEPTED_NAMES[..Activation::ALL.len()]
            .iter()
            .position(|&n| n == name)
            .map(|i| Activation::ALL[i])
            .ok_or_else(|| ActivationNameError::Unknown {
                name: name.to_string(),
            })
    }

    /// The inputs where this activation jumps (`hard_shrink` at ±0.5; none for the others).
    /// A float32 computation whose exact input lies within its rounding error of a jump may land
    /// on either side, so a float32 result differs there from a float64 oracle by the jump (0.5)
    /// however exact the kernels are: comparisons must allow both sides near these points
    /// ([`Activation::near_jump`]).
    ///
    /// ```
    /// use transformer_encoder_kernels::activation::Activation;
    /// assert_eq!(Activation::HardShrink.jumps(), &[-0.5, 0.5]);
    /// assert!(Activation::Relu.jumps().is_empty());
    /// ```
    pub fn jumps(self) -> &'static [f64] {
        match self {
            Activation::HardShrink => &[-0.5, 0.5],
            _ => &[],
        }
    }

    /// True when `x` lies within `margin` of one of [`Activation::jumps`].
    ///
    /// ```
    /// use transformer_encoder_kernels::activation::Activation;
    /// assert!(Activation::HardShrink.near_jump(0.50001, 1e-4));
    /// assert!(!Activation::HardShrink.near_jump(0.6, 1e-4));
    /// assert!(!Activation::Gelu.near_jump(0.5, 1e-4));
    /// ```
    pub fn near_jump(self, x: f64, margin: f64) -> bool {
        self.jumps().iter().any(|j| (x - j).abs() <= margin)
    }

    /// True for the activations that act on a whole row of the intermediate axis.
    pub fn is_rowwise(self) -> bool {
        matches!(
            self,
            Activation::Softmax | Activation::LogSoftmax | Activation::Sparsemax
        )
    }

    /// The element-wise activation in float64, straight from the SPEC formula: the oracle.
    /// Row-wise activations return `x` unchanged here; use [`Activation::eval_row_f64`].
    pub fn eval_f64(self, x: f64) -> f64 {
        let relu6 = |v: f64| v.clamp(0.0, 6.0);
        let softplus = |v: f64| (-v.abs()).exp().ln_1p() + v.max(0.0);
        match self {
            // NaN stays NaN (f64::max would drop it).
            Activation::Relu => {
                if x.is_nan() {
                    x
                } else {
                    x.max(0.0)
                }
            }
            Activation::Relu6 => relu6(x),
            Activation::LeakyRelu => {
                if x >= 0.0 {
                    x
                } else {
                    0.2 * x
                }
            }
            Activation::Elu | Activation::Celu => {
                if x > 0.0 {
                    x
                } else {
                    x.exp_m1()
                }
            }
            Activation::Selu => SELU_SCALE * if x > 0.0 { x } else { SELU_ALPHA * x.exp_m1() },
            Activation::Gelu => 0.5 * x * erfc_f64(-x * std::f64::consts::FRAC_1_SQRT_2),
            // 0.5 x (1 + tanh(u)) = x / (1 + e^(-2u)) exactly; the second form keeps its
            // relative accuracy in the far negative tail, where 1 + tanh(u) cancels to 0.
            Activation::GeluApproximate => {
                let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
                if u >= -300.0 {
                    x / (1.0 + (-2.0 * u).exp())
                } else {
                    0.5 * x * (1.0 + u.tanh())
                }
            }
            Activation::Silu => x * sigmoid_f64(x),
            Activation::Sigmoid => sigmoid_f64(x),
            Activation::HardSigmoid => relu6(x + 3.0) / 6.0,
            Activation::HardSilu => x * relu6(x + 3.0) / 6.0,
            Activation::LogSigmoid => -softplus(-x),
            Activation::Softplus => softplus(x),
            Activation::Softsign => x / (1.0 + x.abs()),
            Activation::Mish => x * softplus(x).tanh(),
            Activation::Tanh => x.tanh(),
            // x - tanh x cancels in float64 too below |x| = 0.1: its Taylor series there.
            Activation::TanhShrink if x.abs() < 0.1 => {
                let z = x * x;
                let c = [
                    1.0 / 3.0,
                    -2.0 / 15.0,
                    17.0 / 315.0,
                    -62.0 / 2835.0,
                    1382.0 / 155_925.0,
                    -21844.0 / 6_081_075.0,
                    929_569.0 / 638_512_875.0,
                ];
                x * z * c.iter().rev().fold(0.0, |acc, &ci| acc * z + ci)
            }
            Activation::TanhShrink => x - x.tanh(),
            Activation::HardTanh => x.clamp(-1.0, 1.0),
            Activation::HardShrink => {
                if x.abs() > 0.5 {
                    x
                } else {
                    0.0
                }
            }
            Activation::SoftShrink => {
                if x > 0.5 {
                    x - 0.5
                } else if x < -0.5 {
                    x + 0.5
                } else {
                    0.0
                }
            }
            Activation::SparsePlus => {
                if x <= -1.0 {
                    0.0
                } else if x >= 1.0 {
                    x
                } else {
                    (x + 1.0) * (x + 1.0) / 4.0
                }
            }
            Activation::SparseSigmoid => {
                if x <= -1.0 {
                    0.0
                } else if x >= 1.0 {
                    1.0
                } else {
                    (x + 1.0) / 2.0
                }
            }
            // (x + sqrt(x^2 + 4)) / 2 cancels for large negative x: 2 / (sqrt(x^2 + 4) - x)
            // there (Keras' -inf + inf = NaN kept at -inf).
            Activation::Squareplus => {
                let h = if x.abs() > 1e150 {
                    x.abs()
                } else {
                    (x * x + 4.0).sqrt()
                };
                if x == f64::NEG_INFINITY {
                    f64::NAN
                } else if x < 0.0 {
                    2.0 / (h - x)
                } else {
                    (x + h) / 2.0
                }
            }
            Activation::Exponential => x.exp(),
            Activation::Linear | Activation::Softmax | Activation::LogSoftmax => x,
            Activation::Sparsemax => x,
        }
    }

    /// Apply the activation to one row of the intermediate axis in float64 (row-wise activations
    /// use the whole row; element-wise ones map each element).
    pub fn eval_row_f64(self, row: &mut [f64]) {
        match self {
            Activation::Softmax | Activation::LogSoftmax => {
                if row.is_empty() {
                    return;
                }
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = row.iter().map(|&v| (v - m).exp()).sum();
                for v in row.iter_mut() {
                    *v = if self == Activation::Softmax {
                        (*v - m).exp() / s
                    } else {
                        *v - m - s.ln()
                    };
                }
            }
            Activation::Sparsemax => sparsemax_f64(row),
            _ => {
                for v in row.iter_mut() {
                    *v = self.eval_f64(*v);
                }
            }
        }
    }
}

/// How far a kernel's float32 result may be from the exact value `t` (Keras' own float64 value,
/// rounded to f32): `|y - t| <= max(ulps * ulp(t), abs)`, where `ulp(t)` is the spacing of f32
/// values at `t` (for `sparsemax`, at the row's largest finite magnitude). `abs` covers results so small that the kernels flush them to zero (their
/// `e^x` never returns a subnormal). NaN and infinities must match exactly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ErrorBound {
    /// Units in the last place of f32.
    pub ulps: f32,
    /// The absolute error allowed near zero.
    pub abs: f32,
}

impl ErrorBound {
    /// The largest error allowed for a result whose exact value is `exact`:
    /// `max(ulps * ulp32(exact), abs)`.
    ///
    /// ```
    /// use transformer_encoder_kernels::ErrorBound;
    /// let b = ErrorBound { ulps: 2.0, abs: 0.0 };
    /// assert_eq!(b.allowed(1.0), 2.0 * f32::EPSILON as f64);
    /// ```
    pub fn allowed(self, exact: f64) -> f64 {
        (self.ulps as f64 * ulp32(exact)).max(self.abs as f64)
    }

    /// Does `got` meet the bound around `exact` (plus `slack` for the error of `exact` itself)?
    /// NaN must meet NaN, and a value that rounds to an infinity in f32 the same infinity.
    pub fn admits(self, got: f32, exact: f64, slack: f64) -> bool {
        let t = exact as f32;
        if t.is_nan() {
            return got.is_nan();
        }
        if t.is_infinite() {
            return got == t;
        }
        (got as f64 - exact).abs() <= self.allowed(exact) + slack
    }
}

/// The spacing of float32 values at `|t|` (the smallest subnormal at 0 or beyond the range).
///
/// ```
/// assert_eq!(transformer_encoder_kernels::activation::ulp32(1.0), f32::EPSILON as f64);
/// ```
pub fn ulp32(t: f64) -> f64 {
    let a = (t as f32).abs();
    if a == 0.0 || !a.is_finite() {
        return f32::from_bits(1) as f64;
    }
    (f32::from_bits(a.to_bits() + 1) - a) as f64
}

impl Activation {
    /// The accuracy every tier's kernel holds for this activation (tested on every tier against
    /// Keras' values on 6,077 inputs, and against the float64 definition on random rows).
    ///
    /// ```
    /// use transformer_encoder_kernels::activation::Activation;
    /// assert_eq!(Activation::Relu.error_bound().ulps, 0.0);
    /// assert!(Activation::Gelu.error_bound().ulps <= 8.0);
    /// ```
    pub fn error_bound(self) -> ErrorBound {
        let b = |ulps: f32, abs: f32| ErrorBound { ulps, abs };
        // Results below this flush to zero (the vector e^x returns no subnormal; x e^x at the
        // flush point is 1.03e-36).
        const FLUSH: f32 = 1.2e-36;
        match self {
            Activation::Relu
            | Activation::Relu6
            | Activation::HardTanh
            | Activation::HardShrink
            | Activation::SoftShrink
            | Activation::Linear => b(0.0, 0.0),
            Activation::LeakyRelu | Activation::SparseSigmoid => b(1.0, 0.0),
            Activation::HardSigmoid | Activation::Softsign | Activation::SparsePlus => b(2.0, 0.0),
            Activation::HardSilu | Activation::Squareplus => b(3.0, 0.0),
            Activation::Elu | Activation::Celu | Activation::Exponential => b(2.0, FLUSH),
            Activation::Selu => b(3.0, FLUSH),
            Activation::Tanh | Activation::TanhShrink => b(4.0, 0.0),
            Activation::Sigmoid => b(4.0, FLUSH),
            Activation::Silu | Activation::Softplus | Activation::LogSigmoid => b(5.0, FLUSH),
            Activation::Gelu | Activation::Mish => b(8.0, FLUSH),
            // Below x = -1, u is rounded to f32 and e^(2u) amplifies that by |2u|: the relative
            // error grows in the tail (16 ulp at x = -3), the absolute one stays below 1e-8.
            Activation::GeluApproximate => b(16.0, 1e-8),
            // The rounding of x - max is amplified by |x - max| (up to 87 before e^(x - max)
            // flushes): about 4 ulp for entries within 8 of the row's maximum, 48 at most.
            Activation::Softmax => b(48.0, FLUSH),
            // x - max - ln(sum): absolute error of ln(sum) near the maximum (2 ulp of 1).
            Activation::LogSoftmax => b(4.0, 2.4e-7),
            // x - tau: here `ulps` are those of the row's largest finite |x| (the result is a
            // difference), absolute.
            Activation::Sparsemax => b(4.0, 0.0),
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keras_name())
    }
}

fn sigmoid_f64(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Sparsemax (Martins & Astudillo 2016) of one row, in place.
fn sparsemax_f64(row: &mut [f64]) {
    if row.is_empty() {
        return;
    }
    // NaN or +inf anywhere, or no finite entry: no simplex point is defined.
    if row.iter().any(|v| v.is_nan() || *v == f64::INFINITY) || row.iter().all(|v| !v.is_finite()) {
        row.iter_mut().for_each(|v| *v = f64::NAN);
        return;
    }
    let mut z: Vec<f64> = row.to_vec();
    z.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
    let mut cum = 0.0;
    let mut k = 0usize;
    let mut cum_k = 0.0;
    for (i, &zi) in z.iter().enumerate() {
        cum += zi;
        if 1.0 + (i as f64 + 1.0) * zi > cum {
            k = i + 1;
            cum_k = cum;
        }
    }
    let tau = (cum_k - 1.0) / k.max(1) as f64;
    for v in row.iter_mut() {
        *v = (*v - tau).max(0.0);
    }
}

/// Complementary error function in float64, accurate to about 1e-15 relative over the whole line
/// (the reference; the fast kernels have their own f32 approximation).
///
/// For `|x| < 2.5` it uses the all-positive series `erf(x) = 2/sqrt(pi) e^{-x^2} sum 2^n x^{2n+1} /
/// (2n+1)!!`; beyond it, the continued fraction of `erfc` (Laplace), evaluated bottom-up.
pub fn erfc_f64(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let ax = x.abs();
    if ax < 2.5 {
        let x2 = ax * ax;
        let mut term = ax;
        let mut sum = ax;
        let mut n = 0.0;
        // Terms shrink geometrically once n > x^2; 200 terms are far more than |x| < 2.5 needs.
        while n < 200.0 {
            n += 1.0;
            term *= 2.0 * x2 / (2.0 * n + 1.0);
            sum += term;
            if term <= sum * 1e-17 {
                break;
            }
        }
        let erf = std::f64::consts::FRAC_2_SQRT_PI * (-x2).exp() * sum;
        if x >= 0.0 { 1.0 - erf } else { 1.0 + erf }
    } else {
        // erfc(a) = e^{-a^2}/sqrt(pi) * 1/(a + (1/2)/(a + 1/(a + (3/2)/(a + 2/(a + ...)))))
        let mut f = ax;
        let mut k = 60.0;
        while k > 0.0 {
            f = ax + (k / 2.0) / f;
            k -= 1.0;
        }
        let tail = (-ax * ax).exp() / (f * std::f64::consts::PI.sqrt());
        if x >= 0.0 { tail } else { 2.0 - tail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Activation::ALL {
            assert_eq!(Activation::from_keras_name(a.keras_name()).unwrap(), a);
        }
        assert_eq!(
            Activation::from_keras_name("hard_swish").unwrap(),
            Activation::HardSilu
        );
        let e = Activation::from_keras_name("foo").unwrap_err().to_string();
        assert!(e.contains("foo") && e.contains("gelu_approximate"), "{e}");
        assert!(matches!(
            Activation::from_keras_name("threshold"),
            Err(ActivationNameError::Refused { .. })
        ));
    }

    #[test]
    fn erfc_known_values() {
        // Values from the closed forms / high-precision tables.
        let cases = [
            (0.0, 1.0),
            (0.5, 0.4795001221869534),
            (1.0, 0.15729920705028513),
            (2.0, 0.004677734981047266),
            (2.5, 0.000_406_952_017_444_959),
            (3.0, 2.209049699858544e-05),
            (5.0, 1.537_459_794_428_035e-12),
            (10.0, 2.088487583762545e-45),
            (-1.0, 1.8427007929497148),
        ];
        for (x, want) in cases {
            let got = erfc_f64(x);
            assert!(
                ((got - want) / want).abs() < 1e-13,
                "erfc({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn gelu_tail_is_accurate() {
        // gelu(-6) = -6 * 0.5 * erfc(6/sqrt2) = -5.9201e-9
        let g = Activation::Gelu.eval_f64(-6.0);
        assert!((g - (-5.919_525_870_226_207e-9)).abs() < 1e-20, "{g}");
    }

    #[test]
    fn rowwise() {
        let mut r = vec![1.0, 2.0, 3.0];
        Activation::Softmax.eval_row_f64(&mut r);
        assert!((r.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        let mut s = vec![0.1, 1.5, 0.2];
        Activation::Sparsemax.eval_row_f64(&mut s);
        assert_eq!(s, vec![0.0, 1.0, 0.0]);
        let mut t = vec![0.5, 0.5];
        Activation::Sparsemax.eval_row_f64(&mut t);
        assert_eq!(t, vec![0.5, 0.5]);
    }
}
