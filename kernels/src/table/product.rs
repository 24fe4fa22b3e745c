//! The matrix products' entry points: checks, then the product with its fused finish.

use super::plan::Plan;
use super::*;

impl Kernels {
    /// `out[m, n] = act(a[m, k] · B + bias) + residual`, with `B` float32 panels packed by
    /// [`Kernels::pack`] of this tier. Element-wise activations run in the product's epilogue, on
    /// each register tile while it is in L1; the row-wise ones (`softmax`, `log_softmax`,
    /// `sparsemax`) as a row pass over the finished rows. `k == 0` gives `act(bias) + residual`.
    /// (int8 panels take quantized rows: [`Kernels::gemm_prepared`].)
    pub fn gemm(
        &self,
        a: &[f32],
        m: usize,
        b: &PackedMatrix,
        epilogue: &Epilogue<'_>,
        out: &mut [f32],
        par: Par,
    ) -> Result<(), KernelError> {
        static NONE: QuantRows = QuantRows::new();
        self.gemm_prepared(a, &NONE, m, b, epilogue, out, None, par)
    }

    /// The product of [`Kernels::gemm`] for a matrix of any format: float32 panels read `a`;
    /// int8 panels read `qa`, the same rows quantized for them (filled by the producer of `a`, or
    /// by [`Kernels::prepare`]), and dequantize in the epilogue (Keras:
    /// `float(sum) / (s_x s_w) + bias`); bf16 panels read `qa` holding the rows rounded to bf16,
    /// and sum in float32. If `q_out` is armed for the next product, the finished
    /// rows (activation and residual applied) are quantized into it while they are in cache.
    pub fn gemm_prepared(
        &self,
        a: &[f32],
        qa: &QuantRows,
        m: usize,
        b: &PackedMatrix,
        epilogue: &Epilogue<'_>,
        out: &mut [f32],
        q_out: Option<&mut QuantRows>,
        par: Par,
    ) -> Result<(), KernelError> {
        self.check_product(a, qa, m, b, epilogue, out.len())?;
        let (k, n) = (b.k, b.n);
        let q_out = self.armed_out(q_out, m, n)?;
        if m * n == 0 {
            return Ok(());
        }
        let act = epilogue.activation.unwrap_or(Activation::Linear);
        if k == 0 {
            for row in out.chunks_mut(n) {
                match epilogue.bias {
                    Some(bias) => row.copy_from_slice(bias),
                    None => row.fill(0.0),
                }
            }
            self.rows_pass(out, n, act, epilogue.residual, par);
            if let Some(qo) = q_out {
                self.quantize_out(out, n, qo, par);
            }
        } else {
            let c = out.as_mut_ptr();
            self.run_product(a, qa, m, b, epilogue, Target::Out(c), q_out, None, par);
        }
        Ok(())
    }

    /// `out = LayerNorm(a · B + bias + residual)` row by row (the post-norm sub-layer's end):
    /// the product of [`gemm_prepared`](Kernels::gemm_prepared) with `bias` into `tmp`, then
    /// [`layer_norm`](Kernels::layer_norm) of `tmp + residual` into `out` (and into `quant`, if
    /// it is armed), bit for bit those two calls. When the product runs by blocks of rows, each
    /// block is normalised as soon as it is finished, while it is in cache, instead of in a pass
    /// over all rows afterwards.
    ///
    /// ```
    /// use transformer_encoder_kernels::{Isa, Kernels, Par, QuantRows};
    /// let k = Kernels::for_isa(Isa::Portable)?;
    /// let w = k.pack(&[1.0, 0.0, 0.0, 1.0], 2, 2).unwrap(); // identity
    /// let (mut tmp, mut out) = ([0.0; 2], [0.0; 2]);
    /// let (g, b) = ([1.0, 1.0], [0.0, 0.0]);
    /// let none = QuantRows::new();
    /// k.gemm_layer_norm(&[1.0, 3.0], &none, 1, &w, None, None, (&g, &b, 0.0), &mut tmp,
    ///     &mut out, None, Par::Seq).unwrap();
    /// assert_eq!(out, [-1.0, 1.0]);
    /// # Ok::<(), transformer_encoder_kernels::IsaError>(())
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_layer_norm(
        &self,
        a: &[f32],
        qa: &QuantRows,
        m: usize,
        b: &PackedMatrix,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        (gamma, beta, eps): (&[f32], &[f32], f32),
        tmp: &mut [f32],
        out: &mut [f32],
        quant: Option<&mut QuantRows>,
        par: Par,
    ) -> Result<(), KernelError> {
        let ep = Epilogue {
            bias,
            activation: None,
            residual: None,
        };
        let (k, n) = (b.k, b.n);
        if k == 0 || n == 0 || m == 0 {
            // Nothing to fuse: the two calls (with their own checks and edge cases).
            self.gemm_prepared(a, qa, m, b, &ep, tmp, None, par)?;
            return self.layer_norm(tmp, residual, n, gamma, beta, eps, out, None, quant, par);
        }
        self.check_product(a, qa, m, b, &ep, tmp.len())?;
        let mn = m * n; // checked by check_product
        check_norm(n, mn, gamma, beta, out.len(), residual)?;
        let qo = self.armed_out(quant, m, n)?.unwrap_or(QuantOut::NONE);
        let norm = RowNorm {
            residual: residual.map_or(std::ptr::null(), |r| r.as_ptr()),
            gamma: gamma.as_ptr(),
            beta: beta.as_ptr(),
            eps,
            out: out.as_mut_ptr(),
            qo,
        };
        let c = tmp.as_mut_ptr();
        self.run_product(a, qa, m, b, &ep, Target::Out(c), None, Some(norm), par);
        Ok(())
    }

    /// The checks of a product's operands (tier, sizes, the quantized input for int8 weights,
    /// output length `out_len`, bias and residual lengths).
    pub(super) fn check_product(
        &self,
        a: &[f32],
        qa: &QuantRows,
        m: usize,
        b: &PackedMatrix,
        epilogue: &Epilogue<'_>,
        out_len: usize,
    ) -> Result<(), KernelError> {
        let (k, n) = (b.k, b.n);
        if b.isa != self.isa {
            return Err(KernelError {
                message: format!(
                    "weights packed for tier {} used with tier {}",
                    b.isa, self.isa
                ),
            });
        }
        let mk = m.checked_mul(k).ok_or_else(|| overflow("gemm input"))?;
        let mn = m.checked_mul(n).ok_or_else(|| overflow("gemm output"))?;
        match &b.data {
            Panels::F32(_) => expect_len("gemm input", a.len(), mk)?,
            Panels::Bf16 { .. } => {
                let bf16 = qa.kind == Some(Precision::Bf16);
                if !bf16 || qa.isa != Some(self.isa) || qa.rows != m || qa.cols != k {
                    return Err(KernelError {
                        message: format!(
                            "bf16 weights [{k}, {n}] need the {m} input rows rounded to bf16 for \
                             tier {} (a QuantRows armed for the matrix and filled), got {} rows \
                             of {} prepared as {:?} for {:?}",
                            self.isa, qa.rows, qa.cols, qa.kind, qa.isa
                        ),
                    });
                }
            }
            Panels::Int8 { .. } => {
                let bf16 = qa.kind == Some(Precision::Bf16);
                if bf16 || qa.isa != Some(self.isa) || qa.rows != m || qa.cols != k {
                    return Err(KernelError {
                        message: format!(
                            "int8 weights [{k}, {n}] need the {m} input rows quantized for tier {} \
                         (a QuantRows armed for the matrix and filled), got {} rows of {} \
                         quantized for {:?}",
                            self.isa, qa.rows, qa.cols, qa.isa
                        ),
                    });
                }
            }
        }
        // The rows' layout is the tier's (one table per tier and format in a process, and
        // `qa.isa` is this tier, checked above).
        debug_assert!(
            matches!(b.data, Panels::F32(_)) || qa.tiled == self.product(b.format()).a_tiled
        );
        expect_len("gemm output", out_len, mn)?;
        if let Some(bias) = epilogue.bias {
            expect_len("gemm bias", bias.len(), n)?;
        }
        if let Some(r) = epilogue.residual {
            expect_len("gemm residual", r.len(), mn)?;
        }
        Ok(())
    }

    /// `act(qa · B + bias) + residual` for int8 weights `B`, when only its quantized form is
    /// needed: the rows are quantized into `q_out` (armed for the next int8 product, as
    /// [`gemm_prepared`](Kernels::gemm_prepared)'s `q_out`) and the float32 output lives only in
    /// `scratch`, a block of rows per thread that stays in cache (the int8 feed-forward's
    /// intermediate activation: `[tokens, intermediate]` floats would otherwise go to memory and
    /// back). The quantized rows are bit-identical to `gemm_prepared`'s.
    ///
    /// ```
    /// use transformer_encoder_kernels::{Epilogue, Isa, Kernels, Par, ProductScratch, QuantRows};
    /// use transformer_encoder_kernels::quant::quantize_weights;
    /// let k = Kernels::for_isa(Isa::Portable)?;
    /// let (wq, ws) = quantize_weights(&[1.0, -2.0, 0.5, 4.0], 2, 2);
    /// let w = k.pack_int8(&wq, &ws, 2, 2).unwrap();
    /// let (mut qa, mut q_out) = (QuantRows::new(), QuantRows::new());
    /// qa.arm_for(&w);
    /// k.prepare(&[0.5, -1.0], 2, &mut qa, Par::Seq).unwrap();
    /// q_out.arm_for(&w); // the next product takes 2 inputs too
    /// let mut scratch = ProductScratch::new();
    /// k.gemm_quantized(&qa, 1, &w, &Epilogue::default(), &mut q_out, &mut scratch, Par::Seq)
    ///     .unwrap();
    /// assert_eq!(q_out.rows(), 1);
    /// # Ok::<(), transformer_encoder_kernels::IsaError>(())
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_quantized(
        &self,
        qa: &QuantRows,
        m: usize,
        b: &PackedMatrix,
        epilogue: &Epilogue<'_>,
        q_out: &mut QuantRows,
        scratch: &mut ProductScratch,
        par: Par,
    ) -> Result<(), KernelError> {
        let (k, n) = (b.k, b.n);
        if matches!(b.data, Panels::F32(_)) {
            return Err(KernelError {
                message: format!(
                    "gemm_quantized takes int8 or bf16 weights packed for tier {}, got {:?} \
                     weights for {}",
                    self.isa,
                    b.format(),
                    b.isa
                ),
            });
        }
        let a: &[f32] = &[];
        self.check_product(a, qa, m, b, epilogue, m.saturating_mul(n))?;
        if !q_out.is_armed() {
            return Err(KernelError {
                message: "gemm_quantized's q_out must be armed for the next product".into(),
            });
        }
        let mn = m * n; // checked by check_product
        let Some(qo) = self.armed_out(Some(q_out), m, n)? else {
            unreachable!("checked armed above")
        };
        if mn == 0 {
            return Ok(());
        }
        if k == 0 {
            let out = grow_f32(&mut scratch.buf, mn);
            for row in out.chunks_mut(n) {
                match epilogue.bias {
                    Some(bias) => row.copy_from_slice(bias),
                    None => row.fill(0.0),
                }
            }
            let act = epilogue.activation.unwrap_or(Activation::Linear);
            self.rows_pass(out, n, act, epilogue.residual, par);
            self.quantize_out(out, n, qo, par);
            return Ok(());
        }
        self.run_product(
            a,
            qa,
            m,
            b,
            epilogue,
            Target::Scratch(scratch),
            Some(qo),
            None,
            par,
        );
        Ok(())
    }

    /// The product of checked operands with `k >= 1` and `m * n >= 1`, into `target`, finished
    /// row-wise (row-wise activation, then quantizing into `q_out`) as rows complete.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_product(
        &self,
        a: &[f32],
        qa: &QuantRows,
        m: usize,
        b: &PackedMatrix,
        epilogue: &Epilogue<'_>,
        target: Target<'_>,
        q_out: Option<QuantOut>,
        norm: Option<RowNorm>,
        par: Par,
    ) {
        let n = b.n;
        let act = epilogue.activation.unwrap_or(Activation::Linear);
        let rowwise = act.is_rowwise();
        let bias = epilogue.bias.map_or(std::ptr::null(), |b| b.as_ptr());
        let residual = match epilogue.residual {
            Some(r) if !rowwise => r.as_ptr(),
            _ => std::ptr::null(),
        };
        let fused = if rowwise { Activation::Linear } else { act };
        let epi = Epi {
            bias,
            residual,
            ldr: n,
            act: fused,
        };
        let call = self.call(a, qa, m, b, epi);
        let plan = self.plan_call(&call, b, par);
        let c = match target {
            Target::Out(p) => COut {
                base: p,
                per_part: 0,
                blocked: false,
            },
            Target::Scratch(s) => {
                let per_part = plan.part_rows() * n;
                let buf = grow_f32(&mut s.buf, plan.buffers() * per_part);
                COut {
                    base: buf.as_mut_ptr(),
                    per_part,
                    blocked: plan.block.is_some(),
                }
            }
        };
        // The row-wise rest of the epilogue, on rows as soon as they are finished: a row-wise
        // activation (with the residual after it), then quantizing the rows for the next int8
        // product.
        let (act_rows, quant, norm_rows) = (self.act_rows, self.quant, self.norm);
        let rp = match epilogue.residual {
            Some(r) if rowwise => r.as_ptr(),
            _ => std::ptr::null(),
        };
        let fin_ptrs = Shared((c, rp, q_out, norm));
        let finish_rows = move |part: usize, r0: usize, r1: usize| {
            let (c, rp, qo, norm) = fin_ptrs.get();
            // SAFETY: the tier is available; rows r0..r1 of the output (at `c.at`), of the
            // residual ([m, n], checked by the caller) and of the quantized destination (armed
            // for m rows of n) are in bounds, finished by the product, and handed to one caller
            // only.
            unsafe {
                let op = c.at(part, r0, n);
                if rowwise {
                    let r = if rp.is_null() { rp } else { rp.add(r0 * n) };
                    act_rows(op, r1 - r0, n, act, r);
                }
                if let Some(qo) = qo {
                    quant(op, r1 - r0, n, &qo.skip(r0));
                }
                if let Some(nm) = norm {
                    // Rows r0..r1 of the LayerNorm's residual and output ([m, n], checked by
                    // gemm_layer_norm) and of its quantized destination (shaped for m rows).
                    let res = if nm.residual.is_null() {
                        nm.residual
                    } else {
                        nm.residual.add(r0 * n)
                    };
                    let (g, bt, eps) = (nm.gamma, nm.beta, nm.eps);
                    let o = nm.out.add(r0 * n);
                    let nq = nm.qo.skip(r0);
                    norm_rows(
                        op,
                        res,
                        r1 - r0,
                        n,
                        g,
                        bt,
                        eps,
                        o,
                        std::ptr::null_mut(),
                        &nq,
                    );
                }
            }
        };
        let finish: Option<&(dyn Fn(usize, usize, usize) + Sync)> =
            (rowwise || q_out.is_some() || norm.is_some()).then_some(&finish_rows);
        self.run_packed(&call, c, plan, finish);
    }

    /// The call of a product over `b`: its format's kernel, operands and arguments for all `m`
    /// rows (`a` for float32 weights, `qa` for the others) and the row count from which it
    /// runs by row blocks. The one place a weight format picks its kernel and operands.
    pub(super) fn call<'k>(
        &'k self,
        a: &[f32],
        qa: &QuantRows,
        m: usize,
        b: &PackedMatrix,
        epi: Epi,
    ) -> Call<'k> {
        let mut args = ProductArgs {
            lda: qa.stride,
            m,
            steps: b.k,
            n: b.n,
            ldc: b.n,
            p0: 0,
            p1: 0,
            epi,
            deq: Dequant::NONE,
            blocks: self.fp32_blocks(),
            ahead: crate::blocks::int8_ahead(),
            pass: self.int8_pass(),
        };
        let (kernel, a, packed, tall_rows) = match &b.data {
            Panels::F32(data) => {
                args.lda = 4 * b.k;
                let (a, packed) = (a.as_ptr().cast(), data.as_ptr().cast());
                (self.f32_product(), a, packed, TALL_ROWS_F32)
            }
            Panels::Int8 {
                panels,
                kg,
                comp,
                inv_scale,
                ..
            } => {
                args.steps = *kg;
                args.deq = Dequant {
                    comp: comp.as_ptr(),
                    wscale: inv_scale.as_ptr(),
                    xscale: qa.inv_scale.as_ptr(),
                    raw: false,
                };
                let (a, packed) = (qa.bytes.as_ptr(), panels.as_ptr().cast());
                (&self.int8, a, packed, TALL_ROWS_INT8)
            }
            Panels::Bf16 { panels, kp, .. } => {
                args.steps = *kp;
                let (a, packed) = (qa.bytes.as_ptr(), panels.as_ptr().cast());
                (&self.bf16, a, packed, TALL_ROWS_F32)
            }
        };
        Call {
            kernel,
            a,
            packed,
            args,
            tall_rows,
        }
    }

    /// The plan of `call` (threads, row blocks or panels) under `par`.
    pub(super) fn plan_call(&self, call: &Call<'_>, b: &PackedMatrix, par: Par) -> Plan {
        let (k, args) = (call.kernel, &call.args);
        self.plan_product(
            args.m,
            args.steps,
            args.n,
            k,
            args.lda,
            b.bytes(),
            call.tall_rows,
            par,
        )
    }
}

/// One product call, as [`Kernels::call`] builds it: the kernel, `A`'s row 0 and the packed
/// panels (in the format's types), the arguments for all rows, and the row count from which
/// it runs by row blocks.
pub(super) struct Call<'k> {
    pub(super) kernel: &'k ProductKernel,
    pub(super) a: *const u8,
    pub(super) packed: *const u8,
    pub(super) args: ProductArgs,
    pub(super) tall_rows: usize,
}

/// A LayerNorm finishing a product's rows (see [`Kernels::gemm_layer_norm`]): its residual
/// (or null), scale and shift, and where it writes (`out`, `[m, n]`, and the quantized rows).
#[derive(Clone, Copy)]
pub(super) struct RowNorm {
    pub(super) residual: *const f32,
    pub(super) gamma: *const f32,
    pub(super) beta: *const f32,
    pub(super) eps: f32,
    pub(super) out: *mut f32,
    pub(super) qo: QuantOut,
}

/// Where a product writes its output: the caller's `[m, n]` buffer, or scratch space.
pub(super) enum Target<'a> {
    Out(*mut f32),
    Scratch(&'a mut ProductScratch),
}
