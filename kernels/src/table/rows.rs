//! Row-wise passes: LayerNorm, activations, quantizing finished rows.

use super::*;

impl Kernels {
    /// Quantize finished output rows (`[rows, n]`) into a shaped destination.
    pub(super) fn quantize_out(&self, out: &[f32], n: usize, qo: QuantOut, par: Par) {
        let rows = out.len() / n;
        let parts = par.row_parts(out.len(), rows);
        let f = self.quant;
        let ptrs = Shared((out.as_ptr(), qo));
        let run = |part: usize| {
            let (r0, r1) = split(rows, parts, part);
            let (xp, qo) = ptrs.get();
            // SAFETY: the tier is available; rows r0..r1 of out and of the destination (shaped
            // for these rows by the caller) are in bounds and written by this part only.
            unsafe { f(xp.add(r0 * n), r1 - r0, n, &qo.skip(r0)) };
        };
        crate::team::for_parts(parts, &run);
    }

    /// Rows of length `n` of `x`: `act(row) + residual` in place (any activation; row-wise ones
    /// over the whole row), split by rows between threads.
    pub(super) fn rows_pass(
        &self,
        x: &mut [f32],
        n: usize,
        act: Activation,
        residual: Option<&[f32]>,
        par: Par,
    ) {
        let rows = x.len() / n;
        if act == Activation::Linear && residual.is_none() {
            return;
        }
        let parts = par.row_parts(x.len(), rows);
        let f = self.act_rows;
        let ptrs = Shared((
            x.as_mut_ptr(),
            residual.map_or(std::ptr::null(), |r| r.as_ptr()),
        ));
        let run = |part: usize| {
            let (r0, r1) = split(rows, parts, part);
            let (xp, rp) = ptrs.get();
            // SAFETY: the tier is available; rows r0..r1 of the [rows, n] buffers (lengths
            // checked by the callers) are in bounds and written by this part only.
            unsafe {
                f(
                    xp.add(r0 * n),
                    r1 - r0,
                    n,
                    act,
                    if rp.is_null() { rp } else { rp.add(r0 * n) },
                )
            };
        };
        crate::team::for_parts(parts, &run);
    }

    /// `e^x` in place, vectorised: relative error below 3e-7 (about 2.5 ulp) where the result is
    /// at least the smallest normal float; exactly 0 for `x < -87.33` (never a subnormal); `+inf`
    /// above 88.72; NaN for NaN.
    ///
    /// ```
    /// use transformer_encoder_kernels::Kernels;
    /// let mut x = [0.0f32, 1.0, -100.0];
    /// Kernels::best()?.exp(&mut x);
    /// assert_eq!(x[0], 1.0);
    /// assert!((x[1] - std::f32::consts::E).abs() < 1e-6);
    /// assert_eq!(x[2], 0.0);
    /// # Ok::<(), transformer_encoder_kernels::IsaError>(())
    /// ```
    pub fn exp(&self, x: &mut [f32]) {
        // SAFETY: the table's tier is available; x is valid for x.len() values.
        unsafe { (self.act)(x.as_mut_ptr(), x.len(), Activation::Exponential) }
    }

    /// Apply an activation in place to rows of length `n`: every activation has a vector kernel
    /// on every tier (the row-wise ones as row kernels); no allocation. Accuracy:
    /// [`Activation::error_bound`].
    ///
    /// ```
    /// use transformer_encoder_kernels::{Activation, Kernels};
    /// let mut x = [1.0f32, 2.0, 3.0, -1.0];
    /// Kernels::for_isa(transformer_encoder_kernels::Isa::Portable)?.activation(Activation::Softmax, &mut x, 2)?;
    /// assert!((x[0] + x[1] - 1.0).abs() < 1e-6 && (x[2] + x[3] - 1.0).abs() < 1e-6);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn activation(&self, act: Activation, x: &mut [f32], n: usize) -> Result<(), KernelError> {
        if n == 0 || !x.len().is_multiple_of(n) {
            return Err(KernelError {
                message: format!(
                    "activation input has {} elements, not a multiple of the row length {n}",
                    x.len()
                ),
            });
        }
        if act.is_rowwise() {
            // SAFETY: the tier is available; x holds x.len() / n rows of n values.
            unsafe { (self.act_rows)(x.as_mut_ptr(), x.len() / n, n, act, std::ptr::null()) };
        } else {
            // SAFETY: the table's tier is available; x is valid for x.len() values.
            unsafe { (self.act)(x.as_mut_ptr(), x.len(), act) }
        }
        Ok(())
    }

    /// LayerNorm over rows of length `n` of `t = x + residual` (or `t = x`):
    /// `out = (t - mean) / sqrt(var + eps) * gamma + beta`, population variance from centred
    /// values, statistics taken on differences from the row's first element (exact even on a
    /// large offset). With `sum_out`, `t` itself is written there too (the pre-norm residual).
    /// If `quant` is armed for an int8 product, each normalised row is also quantized into it,
    /// while it is in L1.
    pub fn layer_norm(
        &self,
        x: &[f32],
        residual: Option<&[f32]>,
        n: usize,
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        out: &mut [f32],
        sum_out: Option<&mut [f32]>,
        quant: Option<&mut QuantRows>,
        par: Par,
    ) -> Result<(), KernelError> {
        if n == 0 || !x.len().is_multiple_of(n) {
            return Err(KernelError {
                message: format!(
                    "layer norm input has {} elements, not a multiple of the row length {n}",
                    x.len()
                ),
            });
        }
        check_norm(n, x.len(), gamma, beta, out.len(), residual)?;
        if let Some(s) = sum_out.as_deref() {
            expect_len("layer norm sum output", s.len(), x.len())?;
        }
        let rows = x.len() / n;
        let qo = self.armed_out(quant, rows, n)?.unwrap_or(QuantOut::NONE);
        if rows == 0 {
            return Ok(());
        }
        let f = self.norm;
        let ptrs = Shared((
            x.as_ptr(),
            residual.map_or(std::ptr::null(), |r| r.as_ptr()),
            out.as_mut_ptr(),
            sum_out.map_or(std::ptr::null_mut(), |s| s.as_mut_ptr()),
            qo,
        ));
        let parts = par.row_parts(x.len(), rows);
        let run = |part: usize| {
            let (r0, r1) = split(rows, parts, part);
            let (xp, rp, op, sp, qo) = ptrs.get();
            let off = r0 * n;
            // SAFETY: the tier is available; rows r0..r1 of every [rows, n] buffer (and of the
            // quantized rows, shaped above) are in bounds (lengths checked above) and written by
            // this part only.
            unsafe {
                f(
                    xp.add(off),
                    if rp.is_null() { rp } else { rp.add(off) },
                    r1 - r0,
                    n,
                    gamma.as_ptr(),
                    beta.as_ptr(),
                    eps,
                    op.add(off),
                    if sp.is_null() { sp } else { sp.add(off) },
                    &qo.skip(r0),
                )
            };
        };
        crate::team::for_parts(parts, &run);
        Ok(())
    }
}

/// The checks of a LayerNorm over `len` values in rows of `n`: scale and shift of `n`, output and
/// residual of `len`.
pub(super) fn check_norm(
    n: usize,
    len: usize,
    gamma: &[f32],
    beta: &[f32],
    out_len: usize,
    residual: Option<&[f32]>,
) -> Result<(), KernelError> {
    expect_len("layer norm gamma", gamma.len(), n)?;
    expect_len("layer norm beta", beta.len(), n)?;
    expect_len("layer norm output", out_len, len)?;
    if let Some(r) = residual {
        expect_len("layer norm residual", r.len(), len)?;
    }
    Ok(())
}
