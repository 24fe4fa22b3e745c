//! Golden-file conformance (SPEC section 8): load a case made by `tools/keras_golden.py` with the
//! real KerasHub layer, run it, and measure the distance from the float64 truth.

use crate::encoder::{CallOptions, MaskedRowPolicy, TensorView, TransformerEncoder};
use crate::error::{Error, Result};
use crate::mask::Mask;
use crate::{EncoderConfig, EncoderWeights, Int8Weights, Precision};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;
use transformer_encoder_kernels::Isa;

/// One golden case, loaded.
#[derive(Clone, Debug)]
pub struct GoldenCase {
    /// The case name (metadata `case`).
    pub name: String,
    /// The layer configuration (metadata `config`).
    pub config: EncoderConfig,
    /// The weights (`weights/<name>`).
    pub weights: EncoderWeights,
    /// `[batch, seq, hidden]`.
    pub shape: [usize; 3],
    /// The input.
    pub inputs: Vec<f32>,
    /// `padding_mask [B, S]`, if the case has one.
    pub padding_mask: Option<Vec<u8>>,
    /// `attention_mask [B, S, S]`, if the case has one.
    pub attention_mask: Option<Vec<u8>>,
    /// The float64 truth of the default call.
    pub outputs_f64: Vec<f64>,
    /// The float64 truth of the scores call's output.
    pub outputs_scores_path_f64: Vec<f64>,
    /// The float64 truth of the attention probabilities `[B, N, S, S]`.
    pub attention_scores_f64: Vec<f64>,
    /// Keras' own `mixed_bfloat16` output, if present (a yardstick for half-precision error).
    pub outputs_mixed_bfloat16: Option<Vec<f32>>,
    /// Tolerance for outputs.
    pub atol_outputs: f64,
    /// Tolerance for scores.
    pub atol_scores: f64,
    /// Keras' int8 variables after `quantize("int8")` (`weights_int8/`), if the case has them.
    pub weights_int8: Option<Int8Weights>,
    /// The int8 reference: Keras' int8 arithmetic with every float part in float64.
    pub outputs_int8_f64: Option<Vec<f64>>,
    /// Tolerance of the int8 outputs.
    pub atol_int8: Option<f64>,
}

/// The measured errors of one case.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseReport {
    /// Case name.
    pub name: String,
    /// Max |crate - truth| of the default call's output.
    pub err_outputs: f64,
    /// Max |crate - truth| of the scores call's output.
    pub err_outputs_scores_path: f64,
    /// Max |crate - truth| of the attention probabilities.
    pub err_scores: f64,
    /// The output tolerance.
    pub atol_outputs: f64,
    /// The scores tolerance.
    pub atol_scores: f64,
}

impl CaseReport {
    /// Whether every error is within its tolerance (NaN fails).
    pub fn passed(&self) -> bool {
        self.err_outputs <= self.atol_outputs
            && self.err_outputs_scores_path <= self.atol_outputs
            && self.err_scores <= self.atol_scores
    }

    /// The largest error relative to its tolerance, as an absolute error of the output kind.
    pub fn max_err(&self) -> f64 {
        self.err_outputs.max(self.err_outputs_scores_path)
    }
}

fn tensor<'a>(
    st: &'a SafeTensors<'a>,
    name: &str,
) -> Result<Option<safetensors::tensor::TensorView<'a>>> {
    match st.tensor(name) {
        Ok(t) => Ok(Some(t)),
        Err(safetensors::SafeTensorError::TensorNotFound(_)) => Ok(None),
        Err(e) => Err(Error::format(name, e.to_string())),
    }
}

fn to_f64(name: &str, t: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f64>> {
    let d = t.data();
    match t.dtype() {
        Dtype::F64 => Ok(d
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect()),
        Dtype::F32 => Ok(d
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
            .collect()),
        other => Err(Error::format(
            name,
            format!("expected F32 or F64, got {other:?}"),
        )),
    }
}

fn to_mask(name: &str, t: &safetensors::tensor::TensorView<'_>) -> Result<Vec<u8>> {
    match t.dtype() {
        Dtype::U8 | Dtype::BOOL | Dtype::I8 => Ok(t.data().to_vec()),
        Dtype::I32 => Ok(t
            .data()
            .chunks_exact(4)
            .map(|b| (i32::from_le_bytes([b[0], b[1], b[2], b[3]]) != 0) as u8)
            .collect()),
        other => Err(Error::format(
            name,
            format!("expected a U8 mask, got {other:?}"),
        )),
    }
}

impl GoldenCase {
    /// Load a golden file.
    pub fn load(path: impl AsRef<Path>) -> Result<GoldenCase> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| Error::format(&path.display().to_string(), e.to_string()))?;
        GoldenCase::from_bytes(&bytes, &path.display().to_string())
    }

    /// Load a golden case from a buffer (`what` names it in errors).
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<GoldenCase> {
        let (_, meta) =
            SafeTensors::read_metadata(bytes).map_err(|e| Error::format(what, e.to_string()))?;
        let md = meta
            .metadata()
            .clone()
            .ok_or_else(|| Error::format(what, "no metadata"))?;
        let get = |k: &str| {
            md.get(k)
                .cloned()
                .ok_or_else(|| Error::format(what, format!("metadata `{k}` is missing")))
        };
        let num = |k: &str| -> Result<f64> {
            get(k)?
                .trim()
                .parse::<f64>()
                .map_err(|e| Error::format(what, format!("metadata `{k}`: {e}")))
        };
        let config = EncoderConfig::from_keras_json_str(&get("config")?)?;
        let name = md.get("case").cloned().unwrap_or_else(|| what.to_string());
        let st = SafeTensors::deserialize(bytes).map_err(|e| Error::format(what, e.to_string()))?;
        let weights = EncoderWeights::from_safetensors(bytes, "weights/")?;
        let inputs_t = tensor(&st, "inputs")?.ok_or_else(|| Error::format(what, "no `inputs`"))?;
        let sh = inputs_t.shape();
        if sh.len() != 3 {
            return Err(Error::format(
                what,
                format!("`inputs` has rank {}, expected 3", sh.len()),
            ));
        }
        let inputs: Vec<f32> = to_f64("inputs", &inputs_t)?
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let need = |n: &str| -> Result<Vec<f64>> {
            let t = tensor(&st, n)?.ok_or_else(|| Error::format(what, format!("no `{n}`")))?;
            to_f64(n, &t)
        };
        let padding_mask = tensor(&st, "padding_mask")?
            .map(|t| to_mask("padding_mask", &t))
            .transpose()?;
        let attention_mask = tensor(&st, "attention_mask")?
            .map(|t| to_mask("attention_mask", &t))
            .transpose()?;
        let outputs_mixed_bfloat16 = tensor(&st, "outputs_mixed_bfloat16")?
            .map(|t| {
                to_f64("outputs_mixed_bfloat16", &t)
                    .map(|v| v.into_iter().map(|x| x as f32).collect())
            })
            .transpose()?;
        let has_int8 = tensor(&st, "outputs_int8_f64")?.is_some();
        let (weights_int8, outputs_int8_f64, atol_int8) = if has_int8 {
            (
                Some(Int8Weights::from_safetensors(bytes, "weights_int8/")?),
                Some(need("outputs_int8_f64")?),
                Some(num("atol_int8")?),
            )
        } else {
            (None, None, None)
        };
        Ok(GoldenCase {
            name,
            config,
            weights,
            shape: [sh[0], sh[1], sh[2]],
            inputs,
            padding_mask,
            attention_mask,
            outputs_f64: need("outputs_f64")?,
            outputs_scores_path_f64: need("outputs_scores_path_f64")?,
            attention_scores_f64: need("attention_scores_f64")?,
            outputs_mixed_bfloat16,
            atol_outputs: num("atol_outputs")?,
            atol_scores: num("atol_scores")?,
            weights_int8,
            outputs_int8_f64,
            atol_int8,
        })
    }

    /// The call options of this case (its masks) under a masked-row policy.
    pub fn options(&self, policy: MaskedRowPolicy) -> CallOptions<'_> {
        let [b, s, _] = self.shape;
        let mut o = CallOptions::new().masked_rows(policy);
        if let Some(p) = &self.padding_mask {
            o = o.padding_mask(Mask::new(p, &[b, s]));
        }
        if let Some(a) = &self.attention_mask {
            o = o.attention_mask(Mask::new(a, &[b, s, s]));
        }
        o
    }

    /// Build the encoder (on `isa`, or the default tier) and run both calls under `policy`,
    /// comparing with the truth that policy implies: Keras' own outputs for
    /// [`MaskedRowPolicy::Keras`]; the scores-path truth for `Zeros`; the default-call truth for
    /// `Uniform` (with fully masked probability rows set to 1/S).
    pub fn run(&self, policy: MaskedRowPolicy, isa: Option<Isa>) -> Result<CaseReport> {
        let enc = match isa {
            Some(i) => TransformerEncoder::with_isa(self.config.clone(), self.weights.clone(), i)?,
            None => TransformerEncoder::new(self.config.clone(), self.weights.clone())?,
        };
        let [b, s, _] = self.shape;
        let x = TensorView::new(&self.inputs, &self.shape);
        let opts = self.options(policy);
        let y = enc.forward(x, &opts)?;
        let (y2, scores) = enc.forward_with_scores(x, &opts)?;
        let (truth_default, truth_scores_call) = match policy {
            MaskedRowPolicy::Keras => (&self.outputs_f64, &self.outputs_scores_path_f64),
            MaskedRowPolicy::Zeros => {
                (&self.outputs_scores_path_f64, &self.outputs_scores_path_f64)
            }
            MaskedRowPolicy::Uniform => (&self.outputs_f64, &self.outputs_f64),
        };
        let mut truth_p = self.attention_scores_f64.clone();
        if policy == MaskedRowPolicy::Uniform {
            let n = enc.num_heads();
            for bi in 0..b {
                for i in 0..s {
                    let masked = (0..s).all(|j| !self.keeps(bi, i, j));
                    if masked {
                        for h in 0..n {
                            let row = ((bi * n + h) * s + i) * s;
                            truth_p[row..row + s]
                                .iter_mut()
                                .for_each(|v| *v = 1.0 / s as f64);
                        }
                    }
                }
            }
        }
        Ok(CaseReport {
            name: self.name.clone(),
            err_outputs: max_abs_diff(&y, truth_default),
            err_outputs_scores_path: max_abs_diff(&y2, truth_scores_call),
            err_scores: max_abs_diff(&scores, &truth_p),
            atol_outputs: self.atol_outputs,
            atol_scores: self.atol_scores,
        })
    }

    /// Run the case in `precision`: fp32 as [`GoldenCase::run`] with Keras' policy; int8 from
    /// Keras' quantized variables (`weights_int8/`), the default call compared with the int8
    /// reference `outputs_int8_f64` under `atol_int8`.
    ///
    /// bf16 (Keras' `mixed_bfloat16`) from the float weights, the default call compared with the
    /// float64 truth `outputs_f64` under 1.25x Keras' own `mixed_bfloat16` error there (SPEC
    /// section 10; `atol_outputs` holds that bound).
    pub fn run_precision(&self, precision: Precision, isa: Option<Isa>) -> Result<CaseReport> {
        match precision {
            Precision::F32 => return self.run(MaskedRowPolicy::Keras, isa),
            Precision::Bf16 => return self.run_bf16(isa),
            Precision::Int8 => {}
        }
        let (Some(w), Some(truth), Some(atol)) =
            (&self.weights_int8, &self.outputs_int8_f64, self.atol_int8)
        else {
            return Err(Error::format(
                &self.name,
                "no int8 data (weights_int8/, outputs_int8_f64, atol_int8)",
            ));
        };
        let enc = match isa {
            Some(i) => TransformerEncoder::with_isa_int8(self.config.clone(), w.clone(), i)?,
            None => TransformerEncoder::new_int8(self.config.clone(), w.clone())?,
        };
        let x = TensorView::new(&self.inputs, &self.shape);
        let y = enc.forward(x, &self.options(MaskedRowPolicy::Keras))?;
        let err = max_abs_diff(&y, truth);
        Ok(CaseReport {
            name: self.name.clone(),
            err_outputs: err,
            err_outputs_scores_path: err,
            err_scores: 0.0,
            atol_outputs: atol,
            atol_scores: 0.0,
        })
    }

    /// Keras' `mixed_bfloat16` error on this case: `max |outputs_mixed_bfloat16 - outputs_f64|`.
    pub fn keras_bf16_err(&self) -> Option<f64> {
        let mixed = self.outputs_mixed_bfloat16.as_ref()?;
        Some(max_abs_diff(mixed, &self.outputs_f64))
    }

    fn run_bf16(&self, isa: Option<Isa>) -> Result<CaseReport> {
        let Some(keras) = self.keras_bf16_err() else {
            return Err(Error::format(
                &self.name,
                "no bf16 data (outputs_mixed_bfloat16)",
            ));
        };
        let enc = match isa {
            Some(i) => TransformerEncoder::with_isa(self.config.clone(), self.weights.clone(), i)?,
            None => TransformerEncoder::new(self.config.clone(), self.weights.clone())?,
        }
        .with_precision(Precision::Bf16)?;
        let x = TensorView::new(&self.inputs, &self.shape);
        let y = enc.forward(x, &self.options(MaskedRowPolicy::Keras))?;
        let err = max_abs_diff(&y, &self.outputs_f64);
        Ok(CaseReport {
            name: self.name.clone(),
            err_outputs: err,
            err_outputs_scores_path: err,
            err_scores: 0.0,
            atol_outputs: BF16_BOUND * keras,
            atol_scores: 0.0,
        })
    }

    fn keeps(&self, b: usize, i: usize, j: usize) -> bool {
        let s = self.shape[1];
        let p = self.padding_mask.as_ref().is_none_or(|m| m[b * s + j] != 0);
        let a = self
            .attention_mask
            .as_ref()
            .is_none_or(|m| m[(b * s + i) * s + j] != 0);
        p && a
    }
}

/// How far a bf16 layer may be from the float64 truth, as a multiple of Keras' own
/// `mixed_bfloat16` error on the same case (SPEC section 10).
pub const BF16_BOUND: f64 = 1.25;

/// `max |a - b|` over two slices of the same length (NaN if any difference is NaN or the lengths
/// differ, so a short output never passes a tolerance check).
///
/// ```
/// use transformer_encoder::conformance::max_abs_diff;
/// assert_eq!(max_abs_diff(&[1.0f32, 2.0], &[1.5f64, 2.0]), 0.5);
/// assert!(max_abs_diff(&[1.0f32], &[1.0f64, 2.0]).is_nan());
/// ```
pub fn max_abs_diff<A: Copy + Into<f64>, B: Copy + Into<f64>>(a: &[A], b: &[B]) -> f64 {
    if a.len() != b.len() {
        return f64::NAN;
    }
    let mut m = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        let d = ((*x).into() - (*y).into()).abs();
        if d.is_nan() {
            return f64::NAN;
        }
        m = m.max(d);
    }
    m
}
