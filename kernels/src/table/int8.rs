//! Keras' int8 format: packing its variables into panels, quantizing activation rows for
//! them, and the raw int32 sums.

use super::*;

impl Kernels {
    /// Do the int8 kernels of `isa` store activations as `q + 128`?
    pub(crate) fn int8_offset(isa: Isa) -> bool {
        Kernels::table(isa).qoffset
    }

    /// Pack Keras' int8 variables of a `[k, n]` projection once, for the int8 products of this
    /// tier: `kernel` row-major `[k, n]` in `-127..=127` (Keras' clip), `scale` its
    /// `kernel_scale`, one positive finite value per column. The panels take a quarter of the
    /// float bytes, plus per column `1 / scale` and (for the VNNI tiers) `128 * column sum`.
    /// `k` is at most 65,536, where the int32 sums stay exact.
    ///
    /// ```
    /// use transformer_encoder_kernels::{Isa, Kernels, quant::quantize_weights};
    /// let w = [0.5f32, -1.0, 0.25, 2.0]; // [2, 2]
    /// let (q, s) = quantize_weights(&w, 2, 2);
    /// let p = Kernels::for_isa(Isa::Portable)?.pack_int8(&q, &s, 2, 2)?;
    /// assert_eq!(p.int8_parts(), Some((q, s)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pack_int8(
        &self,
        kernel: &[i8],
        scale: &[f32],
        k: usize,
        n: usize,
    ) -> Result<PackedMatrix, KernelError> {
        let want = k.checked_mul(n).ok_or_else(|| KernelError {
            message: format!("int8 weight matrix [{k}, {n}] is too large"),
        })?;
        expect_len("int8 kernel", kernel.len(), want)?;
        expect_len("kernel_scale", scale.len(), n)?;
        if k > MAX_INT8_K {
            return Err(KernelError {
                message: format!(
                    "int8 kernel has {k} input rows; at most {MAX_INT8_K} keep the int32 sums exact"
                ),
            });
        }
        if let Some(i) = kernel.iter().position(|&v| v == i8::MIN) {
            return Err(KernelError {
                message: format!(
                    "int8 kernel value -128 at index {i}: Keras' quantization clips to -127..=127"
                ),
            });
        }
        if let Some(v) = scale.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            return Err(KernelError {
                message: format!("kernel_scale must be finite and positive, got {v}"),
            });
        }
        let (nr, layout) = (self.int8.nr, self.int8.layout);
        let panels = n.div_ceil(nr);
        let kg = k.next_multiple_of(self.int8.k_align) / 4;
        let np = panels * nr;
        let mut data = Aligned::<i8>::zeroed(panels * kg * nr * 4);
        let mut comp = Aligned::<i32>::zeroed(np);
        let (d, cs) = (data.as_mut_slice(), comp.as_mut_slice());
        for p in 0..panels {
            for c in 0..nr.min(n - p * nr) {
                let col = p * nr + c;
                let mut sum = 0i32;
                for r in 0..k {
                    let v = kernel[r * n + col];
                    sum += v as i32;
                    d[layout.offset(p, r, c, nr, kg, 4)] = v;
                }
                cs[col] = if self.qoffset { 128 * sum } else { 0 };
            }
        }
        let mut inv_scale = Aligned::<f32>::zeroed(np);
        for (d, s) in inv_scale.as_mut_slice().iter_mut().zip(scale) {
            *d = 1.0 / s;
        }
        Ok(PackedMatrix {
            k,
            n,
            nr,
            isa: self.isa,
            data: Panels::Int8 {
                panels: data,
                kg,
                layout,
                comp,
                inv_scale,
                scale: scale.to_vec(),
            },
        })
    }

    /// Quantize rows of `cols` values (Keras' per-row int8 quantization) into `q`, in this tier's
    /// layout, whatever `q` is armed for.
    pub fn quantize_rows(
        &self,
        x: &[f32],
        cols: usize,
        q: &mut QuantRows,
        par: Par,
    ) -> Result<(), KernelError> {
        let rows = row_count(x, cols, "quantize")?;
        q.shape(self.isa, self.row_shape(Precision::Int8), rows, cols)
            .ok_or_else(|| overflow("quantized rows"))?;
        // The rows hold int8 now, whatever the buffer was armed for (a buffer armed for bf16
        // is re-armed for int8: a bf16 product must not read them).
        if q.kind.is_some() {
            q.kind = Some(Precision::Int8);
        }
        let qo = self.quant_out(q);
        let f = self.quant;
        let parts = par.row_parts(x.len(), rows);
        let ptrs = Shared((x.as_ptr(), qo));
        let run = |part: usize| {
            let (r0, r1) = split(rows, parts, part);
            let (xp, qo) = ptrs.get();
            // SAFETY: the tier is available; rows r0..r1 of x ([rows, cols]) and of the quantized
            // rows (shaped above) are in bounds and written by this part only.
            unsafe { f(xp.add(r0 * cols), r1 - r0, cols, &qo.skip(r0)) };
        };
        crate::team::for_parts(parts, &run);
        Ok(())
    }

    /// Prepare `x` in `q` for the matrix `q` is armed for (the input of a product nobody
    /// produced in this call, such as the layer's own input): quantized for int8, rounded for
    /// bf16; nothing if `q` is not armed.
    pub fn prepare(
        &self,
        x: &[f32],
        cols: usize,
        q: &mut QuantRows,
        par: Par,
    ) -> Result<(), KernelError> {
        match q.kind {
            Some(Precision::Int8) => self.quantize_rows(x, cols, q, par),
            Some(_) => {
                let rows = row_count(x, cols, "prepare")?;
                let qo = self
                    .armed_out(Some(q), rows, cols)?
                    .unwrap_or(QuantOut::NONE);
                self.quantize_out(x, cols, qo, par);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// How rows prepared for `format` are laid out: bytes per value, values a row is padded
    /// to, rows the row count is padded to (as the format's product reads them).
    pub(super) fn row_shape(&self, format: Precision) -> RowShape {
        let p = self.product(format);
        RowShape {
            value_bytes: p.a_bytes,
            row_align: p.k_align,
            rows_align: p.rows_align,
            tiled: p.a_tiled,
        }
    }

    /// The raw destination of quantized rows (shaped), with this tier's byte layout.
    pub(super) fn quant_out(&self, q: &mut QuantRows) -> QuantOut {
        QuantOut {
            bytes: q.bytes.as_mut_ptr(),
            stride: q.stride,
            scale: q.scale.as_mut_ptr(),
            inv_scale: q.inv_scale.as_mut_ptr(),
            offset: self.qoffset,
            bf16: q.kind == Some(Precision::Bf16),
            wide: q.value_bytes == 4,
            tiled: q.tiled,
            row0: 0,
        }
    }

    /// `q`, shaped for `rows` rows of `cols` if it is armed (`None` if not).
    pub(super) fn armed_out(
        &self,
        q: Option<&mut QuantRows>,
        rows: usize,
        cols: usize,
    ) -> Result<Option<QuantOut>, KernelError> {
        match q {
            Some(q) if q.is_armed() => {
                let shape = self.row_shape(q.kind.unwrap_or(Precision::Int8));
                q.shape(self.isa, shape, rows, cols)
                    .ok_or_else(|| overflow("quantized rows"))?;
                Ok(Some(self.quant_out(q)))
            }
            _ => Ok(None),
        }
    }

    /// The int32 sums of an int8 product, `out[m, n] = sum_k q_a[i, k] w_q[k, j]`, exactly (the
    /// integer part Keras computes; for tests and integer pipelines).
    pub fn gemm_int8_sums(
        &self,
        qa: &QuantRows,
        b: &PackedMatrix,
        out: &mut [i32],
        par: Par,
    ) -> Result<(), KernelError> {
        let Panels::Int8 { .. } = &b.data else {
            return Err(KernelError {
                message: "gemm_int8_sums takes int8 weights".into(),
            });
        };
        let (m, k, n) = (qa.rows, b.k, b.n);
        let int8 = qa.kind != Some(Precision::Bf16);
        if b.isa != self.isa || !int8 || qa.isa != Some(self.isa) || qa.cols != k {
            return Err(KernelError {
                message: format!(
                    "int8 sums: weights [{k}, {n}] for tier {}, rows of {} prepared as {:?} for \
                     {:?}, table {}",
                    b.isa, qa.cols, qa.kind, qa.isa, self.isa
                ),
            });
        }
        let mn = m.checked_mul(n).ok_or_else(|| overflow("gemm output"))?;
        expect_len("int8 sums output", out.len(), mn)?;
        if mn == 0 {
            return Ok(());
        }
        if k == 0 {
            out.fill(0);
            return Ok(());
        }
        let mut call = self.call(&[], qa, m, b, Epi::NONE);
        call.args.epi.ldr = n;
        call.args.deq.raw = true;
        let plan = self.plan_call(&call, b, par);
        let c = COut {
            base: out.as_mut_ptr() as *mut f32,
            per_part: 0,
            blocked: false,
        };
        self.run_packed(&call, c, plan, None);
        Ok(())
    }
}

/// The rows of `cols` values `x` holds, or an error if it holds no whole number of them.
fn row_count(x: &[f32], cols: usize, what: &str) -> Result<usize, KernelError> {
    if cols == 0 || !x.len().is_multiple_of(cols) {
        return Err(KernelError {
            message: format!(
                "rows to {what} have {} elements, not a multiple of the row length {cols}",
                x.len()
            ),
        });
    }
    Ok(x.len() / cols)
}

/// The largest `k` of an int8 product: `255 * 127 * k` stays below 2^31.
pub(super) const MAX_INT8_K: usize = 65_536;
