//! Keras' int8 mode (Keras 3.15 `model.quantize("int8")`, SPEC section 10): the weight
//! quantization, done once, and the buffer of quantized activation rows the int8 products read.
//!
//! ```text
//! weights, once:  s_w[o] = 127 / (max_i |W[i, o]| + 1e-7)          (kernel_scale)
//!                 W_q = clip(round_half_even(W * s_w), -127, 127)    (kernel, int8)
//! each product:   s_x[t] = 127 / (max |x[t, :]| + 1e-7)   per row (token)
//!                 x_q = clip(round_half_even(x[t, :] * s_x[t]), -127, 127)
//!                 y[t, o] = float(sum_i x_q[i] W_q[i, o]) / (s_x[t] s_w[o]) + b[o]
//! ```
//! All in float32, as Keras computes it: the integer operands are bit for bit Keras' own.

use crate::isa::Isa;

/// The precision of a layer's products, and so the format its packed weight matrices store:
/// the one name for the idea, in the kernels and in the encoder API.
///
/// ```
/// use transformer_encoder_kernels::Precision;
/// assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
/// assert_eq!("mixed_bfloat16".parse::<Precision>().unwrap(), Precision::Bf16);
/// assert_eq!(Precision::default().name(), "fp32");
/// assert!("int4".parse::<Precision>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// float32 everywhere (the Keras float layer): float32 panels.
    #[default]
    F32,
    /// Keras' `mixed_bfloat16`: weights stored in bfloat16, every product of bf16 operands
    /// (the activations rounded to bf16 where they are produced) summed in float32; softmax,
    /// LayerNorm and residuals in float32. bf16 panels.
    Bf16,
    /// Keras' int8 mode: int8 projections with per-token activation scales; attention and
    /// LayerNorm in float32. int8 panels with a float32 scale per output column.
    Int8,
}

impl Precision {
    /// `fp32`, `bf16` or `int8`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = crate::KernelError;
    /// `fp32` (or `float32`), `bf16` (or `bfloat16`, `mixed_bfloat16`), `int8`.
    fn from_str(s: &str) -> Result<Precision, crate::KernelError> {
        match s {
            "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" | "mixed_bfloat16" => Ok(Precision::Bf16),
            "int8" => Ok(Precision::Int8),
            other => Err(crate::KernelError {
                message: format!("precision: fp32, bf16 or int8, got `{other}`"),
            }),
        }
    }
}

/// Keras' weight quantization of a row-major `[k, n]` kernel (`[in, out]`): the int8 kernel and
/// the per-column `kernel_scale`, exactly as `quantize("int8")` computes them (float32).
///
/// ```
/// use transformer_encoder_kernels::quant::quantize_weights;
/// let (q, s) = quantize_weights(&[0.5, -1.0, 0.25, 2.0], 2, 2);
/// assert_eq!(q, vec![127, -64, 63, 127]); // 0.25 * 127 / (0.5 + 1e-7) = 63.499985
/// assert_eq!(s, vec![127.0 / (0.5 + 1e-7), 127.0 / (2.0 + 1e-7)]);
/// ```
///
/// # Panics
/// If `w.len() != k * n` (a programming error: callers pass validated shapes).
pub fn quantize_weights(w: &[f32], k: usize, n: usize) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(w.len(), k * n, "quantize_weights: shape");
    let mut amax = vec![0.0f32; n];
    for row in w.chunks_exact(n.max(1)) {
        for (m, v) in amax.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    let scale: Vec<f32> = amax.iter().map(|m| 127.0f32 / (m + 1e-7f32)).collect();
    let q = w
        .chunks_exact(n.max(1))
        .flat_map(|row| {
            row.iter()
                .zip(&scale)
                .map(|(v, s)| quantize_value(*v, *s))
                .collect::<Vec<_>>()
        })
        .collect();
    (q, scale)
}

/// `clip(round_half_even(v * s), -127, 127)` (NaN gives 0).
pub fn quantize_value(v: f32, s: f32) -> i8 {
    let r = (v * s).round_ties_even();
    if r.is_nan() {
        0
    } else {
        r.clamp(-127.0, 127.0) as i8
    }
}

/// How a product reads its prepared rows (see [`QuantRows::shape`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowShape {
    pub(crate) value_bytes: usize,
    pub(crate) row_align: usize,
    pub(crate) rows_align: usize,
    pub(crate) tiled: bool,
}

/// Rows of activations prepared for a product of int8 or bf16 weights: for int8, Keras'
/// per-row scales and the rows as bytes in the layout of one tier's int8 kernels; for bf16, the
/// rows rounded to bfloat16 (to nearest, ties to even; padded to whole pairs). A workspace
/// buffer: it grows to the largest call and is then reused without allocating.
///
/// Producers of a product's input (LayerNorm, attention, a product with an activation) fill it
/// while the rows are in cache when it has been [armed](QuantRows::arm_for) for an int8 or bf16
/// matrix; for a float32 matrix it stays empty and nothing is spent on it.
#[derive(Clone, Debug)]
pub struct QuantRows {
    pub(crate) bytes: crate::aligned::Aligned<u8>,
    pub(crate) scale: Vec<f32>,
    pub(crate) inv_scale: Vec<f32>,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) stride: usize,
    /// Bytes of one value (1 for int8; 2 for bf16, or 4 for bf16 values kept as float32).
    pub(crate) value_bytes: usize,
    /// The rows in tile order (`ops::quant::row_offset`), as the AMX products read them.
    pub(crate) tiled: bool,
    pub(crate) isa: Option<Isa>,
    /// The format the rows are prepared for (`None`: none wanted, float32 weights).
    pub(crate) kind: Option<Precision>,
}

impl Default for QuantRows {
    fn default() -> QuantRows {
        QuantRows::new()
    }
}

impl QuantRows {
    /// An empty buffer.
    pub const fn new() -> QuantRows {
        QuantRows {
            bytes: crate::aligned::Aligned::new(),
            scale: Vec::new(),
            inv_scale: Vec::new(),
            rows: 0,
            cols: 0,
            stride: 0,
            value_bytes: 1,
            tiled: false,
            isa: None,
            kind: None,
        }
    }

    /// Prepare to hold the input of `b`: quantized rows are wanted when `b` is int8, bf16 rows
    /// when it is bf16. Clears what the buffer held.
    pub fn arm_for(&mut self, b: &crate::PackedMatrix) {
        self.kind = (b.format() != Precision::F32).then_some(b.format());
        self.isa = Some(b.isa());
        self.rows = 0;
        self.cols = 0;
    }

    /// Will producers quantize (or round to bf16) into this buffer?
    pub fn is_armed(&self) -> bool {
        self.kind.is_some()
    }

    /// The format the rows are prepared for, if armed.
    pub fn format(&self) -> Option<Precision> {
        self.kind
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row (before padding).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `i`'s quantized values (`-127..=127`) and its Keras scale `s_x`, or `None` past the
    /// rows held. (Decoded from the tier's byte layout; for tests and inspection.)
    pub fn row(&self, i: usize) -> Option<(Vec<i8>, f32)> {
        if i >= self.rows || self.kind == Some(Precision::Bf16) {
            return None;
        }
        let offset = self.isa.is_some_and(crate::Kernels::int8_offset);
        let q = self
            .row_bytes(i, self.cols)
            .map(|v| {
                if offset {
                    (v as i16 - 128) as i8
                } else {
                    v as i8
                }
            })
            .collect();
        Some((q, self.scale[i]))
    }

    /// Row `i` rounded to bfloat16 (the bits of each value), or `None` past the rows held or
    /// if the rows are not bf16. (For tests and inspection.)
    pub fn bf16_row(&self, i: usize) -> Option<Vec<u16>> {
        if i >= self.rows || self.kind != Some(Precision::Bf16) {
            return None;
        }
        let w = self.value_bytes;
        let b: Vec<u8> = self.row_bytes(i, w * self.cols).collect();
        // A value kept as float32 holds the bf16 in its top half.
        Some(
            b.chunks_exact(w)
                .map(|p| u16::from_ne_bytes([p[w - 2], p[w - 1]]))
                .collect(),
        )
    }

    /// The first `len` bytes of row `i`, in order, wherever the layout keeps them.
    fn row_bytes(&self, i: usize, len: usize) -> impl Iterator<Item = u8> + '_ {
        let (start, cs) = crate::ops::quant::row_offset(i, self.stride, self.tiled);
        let bytes = self.bytes.as_slice();
        let c = crate::ops::quant::CHUNK;
        (0..len).map(move |j| bytes[start + j / c * cs + j % c])
    }

    /// Size the buffer for `rows` rows of `cols` values for tier `isa`, whose kernels read rows
    /// of `value_bytes` per value padded to `row_align` values, the row count padded to
    /// `rows_align`, in tile order if `tiled` (grows, never shrinks; padding rows are readable
    /// memory).
    pub(crate) fn shape(
        &mut self,
        isa: Isa,
        RowShape {
            value_bytes,
            row_align,
            rows_align,
            tiled,
        }: RowShape,
        rows: usize,
        cols: usize,
    ) -> Option<()> {
        let stride = cols
            .checked_next_multiple_of(row_align)?
            .checked_mul(value_bytes)?;
        let n = rows
            .checked_next_multiple_of(rows_align)?
            .checked_mul(stride)?;
        self.bytes.grow(n);
        if self.inv_scale.len() < rows {
            self.inv_scale.resize(rows, 0.0);
            self.scale.resize(rows, 0.0);
        }
        self.isa = Some(isa);
        self.rows = rows;
        self.cols = cols;
        self.stride = stride;
        self.value_bytes = value_bytes;
        self.tiled = tiled;
        Some(())
    }

    /// The bytes this buffer holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.bytes.bytes() + 4 * (self.scale.capacity() + self.inv_scale.capacity())
    }
}
