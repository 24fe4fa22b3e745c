//! The kernel table: the one dispatch point. One table per instruction-set tier, chosen once.

use crate::activation::Activation;
use crate::aligned::Aligned;
use crate::arch::{ActFn, AttnFn, GemmFn, NormFn, QGemmFn, QuantFn, QuantOut, RowActFn};
use crate::isa::{Isa, IsaError};
use crate::ops::attention::{AttnArgs, SeqSpan, scratch_len};
use crate::ops::gemm::Epi;
use crate::ops::qgemm::QEpi;
use crate::quant::{QuantRows, WeightFormat};
use crate::{KeepMask, KernelError, MaskedRows, expect_len};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How a kernel call may use threads. Results are bit-identical for every choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Par {
    /// On the calling thread only, without touching rayon.
    Seq,
    /// Split into about this many parts run by rayon in the current context (the caller's
    /// pool inside `ThreadPool::install`, else the global pool).
    Threads(usize),
}

impl Par {
    fn parts(self) -> usize {
        match self {
            Par::Seq => 1,
            Par::Threads(n) => n.max(1),
        }
    }
}

/// The kernels of one instruction-set tier. Obtained only through [`Kernels::best`] or
/// [`Kernels::for_isa`], which check that the CPU has the tier: holding a `&Kernels` proves its
/// instructions can run.
///
/// ```
/// use transformer_encoder_kernels::{Epilogue, Isa, Kernels, Par};
/// let k = Kernels::for_isa(Isa::Portable)?;
/// let w = k.pack(&[1.0, 2.0, 3.0, 4.0], 2, 2).unwrap(); // [[1, 2], [3, 4]]
/// let mut out = [0.0f32; 2];
/// k.gemm(&[1.0, 1.0], 1, &w, &Epilogue::default(), &mut out, Par::Seq).unwrap();
/// assert_eq!(out, [4.0, 6.0]);
/// # Ok::<(), transformer_encoder_kernels::IsaError>(())
/// ```
#[derive(Debug)]
pub struct Kernels {
    isa: Isa,
    mr: usize,
    nr: usize,
    gemm: GemmFn,
    norm: NormFn,
    attn: AttnFn,
    act: ActFn,
    act_rows: RowActFn,
    quant: QuantFn,
    /// The int8 products: register tile, panel width, whether activations carry `+128`.
    qgemm: QGemmFn,
    qmr: usize,
    qnr: usize,
    qoffset: bool,
    qlayout: Int8Layout,
}

/// How the int8 weight panels (and the quantized rows feeding them) are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Int8Layout {
    /// Panel of `nr` columns: `k/4` groups, each `nr` columns x 4 bytes (the vector kernels);
    /// rows padded to a multiple of 4 bytes.
    Groups,
    /// Panel of 32 columns: per 64-wide step of `k`, two 16 x 64-byte tiles (columns 0..16, then
    /// 16..32); rows padded to 64 bytes, the row count to 32 (AMX).
    AmxTiles,
}

impl Int8Layout {
    /// Bytes a quantized row is padded to.
    pub(crate) fn row_align(self) -> usize {
        match self {
            Int8Layout::Groups => 4,
            Int8Layout::AmxTiles => 64,
        }
    }
    /// Rows the quantized rows are padded to (the tiles read whole blocks).
    pub(crate) fn rows_align(self) -> usize {
        match self {
            Int8Layout::Groups => 1,
            Int8Layout::AmxTiles => 32,
        }
    }
    /// The byte of inner row `r`, column `c` (`c < nr`) of panel `p`, with `kg` groups per panel.
    fn offset(self, p: usize, r: usize, c: usize, nr: usize, kg: usize) -> usize {
        let (g, b) = (r / 4, r % 4);
        match self {
            Int8Layout::Groups => ((p * kg + g) * nr + c) * 4 + b,
            Int8Layout::AmxTiles => {
                p * kg * nr * 4
                    + (g / 16) * 16 * nr * 4
                    + (c / 16) * 1024
                    + (g % 16) * 64
                    + (c % 16) * 4
                    + b
            }
        }
    }
}

macro_rules! table {
    ($isa:expr, $m:path, $q:path) => {{
        use $m as t;
        use $q as q;
        Kernels {
            isa: $isa,
            mr: t::MR,
            nr: t::NR,
            gemm: t::gemm,
            norm: t::layer_norm,
            attn: t::attention,
            act: t::activation,
            act_rows: t::activation_rows,
            quant: t::quantize,
            qgemm: q::qgemm,
            qmr: q::MR,
            qnr: q::NR,
            qoffset: q::OFFSET,
            qlayout: q::LAYOUT,
        }
    }};
}

// One table per tier: the float kernels of its float tier, the int8 products of its own
// dot-product instructions.
static PORTABLE: Kernels = table!(
    Isa::Portable,
    crate::arch::portable,
    crate::arch::q_portable
);
#[cfg(target_arch = "x86_64")]
static AVX2: Kernels = table!(Isa::Avx2, crate::arch::avx2, crate::arch::q_avx2);
#[cfg(target_arch = "x86_64")]
static AVX2_VNNI: Kernels = table!(Isa::Avx2Vnni, crate::arch::avx2, crate::arch::q_avx2vnni);
#[cfg(target_arch = "x86_64")]
static AVX512: Kernels = table!(Isa::Avx512, crate::arch::avx512, crate::arch::q_avx512);
#[cfg(target_arch = "x86_64")]
static AVX512_VNNI: Kernels = table!(
    Isa::Avx512Vnni,
    crate::arch::avx512,
    crate::arch::q_avx512vnni
);
#[cfg(target_arch = "x86_64")]
static AVX512_AMX: Kernels = table!(Isa::Avx512Amx, crate::arch::avx512, crate::arch::q_amx);

/// A product below this many multiply-adds runs on one thread (its split would cost more than
/// it saves).
const PAR_MIN_FMAS: usize = 1 << 20;
/// A row-wise pass (LayerNorm, quantizing, a product's finish) below this many values runs on
/// one thread. A job on a team costs about 0.35 µs (`cargo bench --bench team`), a few
/// thousand values' worth of work.
const PAR_MIN_VALUES: usize = 1 << 12;
/// Attention below this many multiply-adds runs on one thread (a 16-token query's 12 heads are
/// about 10^5).
const PAR_MIN_ATTENTION: usize = 1 << 15;

/// Raw pointers shared by the parts of one parallel kernel call, which write disjoint regions.
#[derive(Clone, Copy)]
struct Shared<T>(T);
// SAFETY: only used to hand raw pointers to the parts of one kernel call, each of which writes
// a region no other part touches, while the caller's borrows keep the buffers alive.
unsafe impl<T> Send for Shared<T> {}
// SAFETY: as above; the parts only read through shared pointers or write disjoint regions.
unsafe impl<T> Sync for Shared<T> {}

impl<T: Copy> Shared<T> {
    /// The pointers (a method, so closures capture the whole wrapper, not its field).
    fn get(&self) -> T {
        self.0
    }
}

impl Kernels {
    /// The table of [`Isa::detect`]: the best tier, or the one `TRANSFORMER_ENCODER_ISA` forces
    /// (an error, naming the variable and this CPU's tiers, if it names no tier or one this CPU
    /// lacks).
    pub fn best() -> Result<&'static Kernels, IsaError> {
        static BEST: OnceLock<Result<&'static Kernels, IsaError>> = OnceLock::new();
        BEST.get_or_init(|| Isa::detect().map(Kernels::table))
            .clone()
    }

    /// The table of a given tier, or an error if this CPU lacks it.
    pub fn for_isa(isa: Isa) -> Result<&'static Kernels, IsaError> {
        isa.require().map(Kernels::table)
    }

    fn table(isa: Isa) -> &'static Kernels {
        match isa {
            Isa::Portable => &PORTABLE,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => &AVX2,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Vnni => &AVX2_VNNI,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => &AVX512,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => &AVX512_VNNI,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Amx => &AVX512_AMX,
            #[cfg(not(target_arch = "x86_64"))]
            _ => &PORTABLE,
        }
    }

    /// The tier of this table.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The register tile (`rows x columns`) of this tier's matrix products over `format`.
    pub fn tile(&self, format: WeightFormat) -> (usize, usize) {
        match format {
            WeightFormat::F32 => (self.mr, self.nr),
            WeightFormat::Int8 => (self.qmr, self.qnr),
        }
    }

    /// Do the int8 kernels of `isa` store activations as `q + 128`?
    pub(crate) fn int8_offset(isa: Isa) -> bool {
        Kernels::table(isa).qoffset
    }

    /// Pack a row-major `[k, n]` float weight matrix (Keras' `[in, out]`) once, into this tier's
    /// panel layout, for [`Kernels::gemm`].
    pub fn pack(&self, w: &[f32], k: usize, n: usize) -> Result<PackedMatrix, KernelError> {
        let want = k.checked_mul(n).ok_or_else(|| KernelError {
            message: format!("weight matrix [{k}, {n}] is too large"),
        })?;
        expect_len("weight matrix", w.len(), want)?;
        let nr = self.nr;
        let panels = n.div_ceil(nr);
        let mut data = Aligned::<f32>::zeroed(panels * k * nr);
        let d = data.as_mut_slice();
        for p in 0..panels {
            let cols = nr.min(n - p * nr);
            for r in 0..k {
                let dst = &mut d[(p * k + r) * nr..][..cols];
                dst.copy_from_slice(&w[r * n + p * nr..][..cols]);
            }
        }
        Ok(PackedMatrix {
            k,
            n,
            nr,
            isa: self.isa,
            data: Panels::F32(data),
        })
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
        let (nr, layout) = (self.qnr, self.qlayout);
        let panels = n.div_ceil(nr);
        let kg = k.next_multiple_of(layout.row_align()) / 4;
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
                    d[layout.offset(p, r, c, nr, kg)] = v;
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
        if cols == 0 || !x.len().is_multiple_of(cols) {
            return Err(KernelError {
                message: format!(
                    "rows to quantize have {} elements, not a multiple of the row length {cols}",
                    x.len()
                ),
            });
        }
        let rows = x.len() / cols;
        q.shape(self.isa, self.qlayout, rows, cols)
            .ok_or_else(|| overflow("quantized rows"))?;
        let qo = self.quant_out(q);
        let f = self.quant;
        let parts = if x.len() < PAR_MIN_VALUES {
            1
        } else {
            par.parts().min(rows)
        };
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

    /// Quantize `x` into `q` if `q` is armed for an int8 matrix (the input of a product nobody
    /// produced in this call, such as the layer's own input); nothing otherwise.
    pub fn prepare(
        &self,
        x: &[f32],
        cols: usize,
        q: &mut QuantRows,
        par: Par,
    ) -> Result<(), KernelError> {
        if q.is_armed() {
            self.quantize_rows(x, cols, q, par)
        } else {
            Ok(())
        }
    }

    /// The raw destination of quantized rows (shaped), with this tier's byte layout.
    fn quant_out(&self, q: &mut QuantRows) -> QuantOut {
        QuantOut {
            bytes: q.bytes.as_mut_ptr(),
            stride: q.stride,
            scale: q.scale.as_mut_ptr(),
            inv_scale: q.inv_scale.as_mut_ptr(),
            offset: self.qoffset,
        }
    }

    /// `q`, shaped for `rows` rows of `cols` if it is armed (`None` if not).
    fn armed_out(
        &self,
        q: Option<&mut QuantRows>,
        rows: usize,
        cols: usize,
    ) -> Result<Option<QuantOut>, KernelError> {
        match q {
            Some(q) if q.is_armed() => {
                q.shape(self.isa, self.qlayout, rows, cols)
                    .ok_or_else(|| overflow("quantized rows"))?;
                Ok(Some(self.quant_out(q)))
            }
            _ => Ok(None),
        }
    }

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

    /// The product of [`Kernels::gemm`] for a matrix of either format: float32 panels read `a`;
    /// int8 panels read `qa`, the same rows quantized for them (filled by the producer of `a`, or
    /// by [`Kernels::prepare`]), and dequantize in the epilogue (Keras:
    /// `float(sum) / (s_x s_w) + bias`). If `q_out` is armed for the next product, the finished
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
    fn check_product(
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
            Panels::Int8 { .. } => {
                if qa.isa != Some(self.isa) || qa.rows != m || qa.cols != k {
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
        if !matches!(b.data, Panels::Int8 { .. }) || b.isa != self.isa {
            return Err(KernelError {
                message: format!(
                    "gemm_quantized takes int8 weights packed for tier {}, got {:?} weights for {}",
                    self.isa,
                    b.format(),
                    b.isa
                ),
            });
        }
        if qa.isa != Some(self.isa) || qa.rows != m || qa.cols != k {
            return Err(KernelError {
                message: format!(
                    "int8 weights [{k}, {n}] need the {m} input rows quantized for tier {}, got {} \
                     rows of {} quantized for {:?}",
                    self.isa, qa.rows, qa.cols, qa.isa
                ),
            });
        }
        if !q_out.is_armed() {
            return Err(KernelError {
                message: "gemm_quantized's q_out must be armed for the next product".into(),
            });
        }
        let mn = m.checked_mul(n).ok_or_else(|| overflow("gemm output"))?;
        if let Some(bias) = epilogue.bias {
            expect_len("gemm bias", bias.len(), n)?;
        }
        if let Some(r) = epilogue.residual {
            expect_len("gemm residual", r.len(), mn)?;
        }
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
        let a: &[f32] = &[];
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
    fn run_product(
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
        let (k, n) = (b.k, b.n);
        let act = epilogue.activation.unwrap_or(Activation::Linear);
        let rowwise = act.is_rowwise();
        let bias = epilogue.bias.map_or(std::ptr::null(), |b| b.as_ptr());
        let residual = match epilogue.residual {
            Some(r) if !rowwise => r.as_ptr(),
            _ => std::ptr::null(),
        };
        let fused = if rowwise { Activation::Linear } else { act };
        let plan = match &b.data {
            Panels::F32(_) => {
                let (mr, nr) = (self.mr, self.nr);
                self.plan_product(m, k, n, mr, nr, 4 * k, b.bytes(), TALL_ROWS_F32, par)
            }
            Panels::Int8 { kg, .. } => self.plan_product(
                m,
                *kg,
                n,
                self.qmr,
                self.qnr,
                qa.stride,
                b.bytes(),
                TALL_ROWS_INT8,
                par,
            ),
        };
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
        match &b.data {
            Panels::F32(data) => {
                let epi = Epi {
                    bias,
                    residual,
                    ldr: n,
                    act: fused,
                };
                let f = self.gemm;
                let ptrs = Shared((a.as_ptr(), data.as_ptr(), c, epi));
                let run = |part: usize, r0: usize, r1: usize, p0: usize, p1: usize| {
                    let (ap, bp, c, mut epi) = ptrs.get();
                    // SAFETY: the table's tier is available (tables are only handed out for
                    // available tiers); a is [m, k], the packed weights hold ceil(n / nr)
                    // panels of k * nr, the output rows r0..r1 at `c.at` have n columns, bias
                    // [n] and residual [m, n] were checked by the caller; rows r0..r1 and
                    // panels p0..p1 are in range, and parts write disjoint rows or columns.
                    unsafe {
                        if !epi.residual.is_null() {
                            epi.residual = epi.residual.add(r0 * n);
                        }
                        let cp = c.at(part, r0, n);
                        f(ap.add(r0 * k), k, r1 - r0, k, bp, n, cp, n, p0, p1, &epi)
                    };
                };
                self.run_plan(plan, run, finish);
            }
            Panels::Int8 {
                panels,
                kg,
                comp,
                inv_scale,
                ..
            } => {
                let epi = QEpi {
                    bias,
                    residual,
                    ldr: n,
                    act: fused,
                    comp: comp.as_ptr(),
                    wscale: inv_scale.as_ptr(),
                    xscale: qa.inv_scale.as_ptr(),
                    raw: false,
                };
                self.run_int8(qa, *kg, panels.as_ptr(), n, c, epi, plan, finish);
            }
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
        let Panels::Int8 {
            panels,
            kg,
            comp,
            inv_scale,
            ..
        } = &b.data
        else {
            return Err(KernelError {
                message: "gemm_int8_sums takes int8 weights".into(),
            });
        };
        let (m, k, n) = (qa.rows, b.k, b.n);
        if b.isa != self.isa || qa.isa != Some(self.isa) || qa.cols != k {
            return Err(KernelError {
                message: format!(
                    "int8 sums: weights [{k}, {n}] for tier {}, rows of {} quantized for {:?},                      table {}",
                    b.isa, qa.cols, qa.isa, self.isa
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
        let epi = QEpi {
            bias: std::ptr::null(),
            residual: std::ptr::null(),
            ldr: n,
            act: Activation::Linear,
            comp: comp.as_ptr(),
            // Not read for raw sums, but offset like the others: a valid pointer.
            wscale: inv_scale.as_ptr(),
            xscale: qa.inv_scale.as_ptr(),
            raw: true,
        };
        let plan = self.plan_product(
            m,
            *kg,
            n,
            self.qmr,
            self.qnr,
            qa.stride,
            b.bytes(),
            TALL_ROWS_INT8,
            par,
        );
        let c = COut {
            base: out.as_mut_ptr() as *mut f32,
            per_part: 0,
            blocked: false,
        };
        self.run_int8(qa, *kg, panels.as_ptr(), n, c, epi, plan, None);
        Ok(())
    }

    /// Run the int8 product over the parts of `plan` (validated by the callers: `qa` holds `m`
    /// rows of `k`, the output rows at `c` have `n` elements of 4 bytes).
    #[allow(clippy::too_many_arguments)]
    fn run_int8(
        &self,
        qa: &QuantRows,
        kg: usize,
        panels: *const i8,
        n: usize,
        c: COut,
        epi: QEpi,
        plan: Plan,
        finish: Option<&(dyn Fn(usize, usize, usize) + Sync)>,
    ) {
        let stride = qa.stride;
        let f = self.qgemm;
        let ptrs = Shared((qa.bytes.as_ptr(), panels, c, epi));
        let run = |part: usize, r0: usize, r1: usize, p0: usize, p1: usize| {
            let (ap, bp, c, mut epi) = ptrs.get();
            // SAFETY: the tier is available; qa holds m rows of `stride >= 4 kg` bytes and m
            // scales; the panels hold ceil(n / qnr) panels of kg * qnr * 4 bytes, comp and
            // inv_scale ceil(n / qnr) * qnr values; the output rows r0..r1 at `c.at` have n
            // columns (f32 or i32); bias [n] and residual [m, n] were checked by the caller;
            // rows r0..r1 and panels p0..p1 are in range, and parts write disjoint rows or
            // columns.
            unsafe {
                if !epi.residual.is_null() {
                    epi.residual = epi.residual.add(r0 * n);
                }
                epi.xscale = epi.xscale.add(r0);
                let cp = c.at(part, r0, n);
                f(
                    ap.add(r0 * stride),
                    stride,
                    r1 - r0,
                    kg,
                    bp,
                    n,
                    cp,
                    n,
                    p0,
                    p1,
                    &epi,
                )
            };
        };
        self.run_plan(plan, run, finish);
    }

    /// How to split a product of `m` rows, `k` inner steps and `n` columns (panels of `nr`)
    /// between threads (`row_bytes`: the bytes of one row of A, `b_bytes`: the packed weights').
    ///
    /// * By row blocks, when A is tall (many rows: a ragged batch, a large batch) and the weights
    ///   fit in L2 (each block streams them all), or A is taller than B is wide on several
    ///   threads: blocks of rows whose A and output stay in L2, claimed in
    ///   order by whichever thread is free; each block streams every weight panel past its rows
    ///   and is finished at once, while its output is in cache.
    /// * Else by column panels (each part reads only its share of the weights and all of A), a
    ///   few parts per thread to even out uneven costs; the row-wise finish then runs over all
    ///   rows, split between threads.
    #[allow(clippy::too_many_arguments)]
    fn plan_product(
        &self,
        m: usize,
        k: usize,
        n: usize,
        mr: usize,
        nr: usize,
        row_bytes: usize,
        b_bytes: usize,
        tall_rows: usize,
        par: Par,
    ) -> Plan {
        let panels = n.div_ceil(nr);
        let work = m.saturating_mul(k).saturating_mul(n);
        let threads = match par {
            Par::Threads(t) if work >= PAR_MIN_FMAS => t.max(1),
            _ => 1,
        };
        // Measured on the Xeon: int8 MiniLM weights (0.6 MB) over 4,352 rows twice as fast in
        // blocks on one thread; float32 BERT-base weights (7 MB) over 1,024 rows slower (62-69
        // ms against 67-71 ms for the layer at batch 8, interleaved runs).
        let tall = m >= tall_rows && b_bytes <= 4 * L2_BYTES;
        if tall || (threads > 1 && m >= 2 * crate::ops::gemm::MC && m > n) {
            // A block of A in a quarter of L2 and its output in half of it, whole tiles of
            // rows, and at least two blocks per thread.
            let fit = (L2_BYTES / 4 / row_bytes.max(1)).min(L2_BYTES / 2 / (4 * n).max(1));
            let per_thread = m.div_ceil(2 * threads).div_ceil(mr) * mr;
            let mb = (fit.clamp(2 * mr, 512) / mr * mr).min(per_thread).max(mr);
            let blocks = m.div_ceil(mb);
            Plan {
                m,
                panels,
                block: Some(mb),
                parts: threads.min(blocks),
                finish_parts: 1,
            }
        } else {
            Plan {
                m,
                panels,
                block: None,
                parts: if threads == 1 {
                    1
                } else {
                    (threads * 3).min(panels)
                },
                finish_parts: if m * n < PAR_MIN_VALUES {
                    1
                } else {
                    par.parts().min(m)
                },
            }
        }
    }

    /// Run a planned product: `f(part, r0, r1, p0, p1)` on each part, then
    /// `finish(part, r0, r1)` on finished rows (the row-wise rest of the epilogue). With row
    /// blocks, `part` is the thread's part (a part runs on one thread at a time); with column
    /// panels every `finish` call has part 0. Every output element is computed the same way
    /// whatever the split.
    fn run_plan(
        &self,
        plan: Plan,
        f: impl Fn(usize, usize, usize, usize, usize) + Sync,
        finish: Option<&(dyn Fn(usize, usize, usize) + Sync)>,
    ) {
        let (m, panels) = (plan.m, plan.panels);
        match plan.block {
            Some(mb) => {
                let blocks = m.div_ceil(mb);
                let next = AtomicUsize::new(0);
                let run = |part: usize| {
                    loop {
                        let u = next.fetch_add(1, Ordering::Relaxed);
                        if u >= blocks {
                            break;
                        }
                        let (r0, r1) = (u * mb, ((u + 1) * mb).min(m));
                        f(part, r0, r1, 0, panels);
                        if let Some(fin) = finish {
                            fin(part, r0, r1);
                        }
                    }
                };
                crate::team::for_parts(plan.parts, &run);
            }
            None => {
                let parts = plan.parts;
                let run = |part: usize| {
                    let (p0, p1) = split(panels, parts, part);
                    f(part, 0, m, p0, p1);
                };
                crate::team::for_parts(parts, &run);
                if let Some(fin) = finish {
                    let fp = plan.finish_parts;
                    let run = |part: usize| {
                        let (r0, r1) = split(m, fp, part);
                        fin(0, r0, r1);
                    };
                    crate::team::for_parts(fp, &run);
                }
            }
        }
    }

    /// Quantize finished output rows (`[rows, n]`) into a shaped destination.
    fn quantize_out(&self, out: &[f32], n: usize, qo: QuantOut, par: Par) {
        let rows = out.len() / n;
        let parts = if out.len() < PAR_MIN_VALUES {
            1
        } else {
            par.parts().min(rows)
        };
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
    fn rows_pass(
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
        let parts = if x.len() < PAR_MIN_VALUES {
            1
        } else {
            par.parts().min(rows)
        };
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
        let parts = if x.len() < PAR_MIN_VALUES {
            1
        } else {
            par.parts().min(rows)
        };
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

    /// Masked multi-head attention. `qkv` is `[B*S, 3*N*D]`: queries, keys and values side by
    /// side (as the projections give them), head `n` at columns `n*D` of each third; the logits
    /// are scaled by Keras' `1/sqrt(D)` inside the softmax.
    /// Writes the context `[B*S, N*D]` and, if given, the probabilities `[B, N, S, S]` (before
    /// dropout). `dropout` is `(rate, seed)`, drawn by position within each sequence (every
    /// batch item draws the same stream, as a batch-1 call on it would). `scratch` is reused
    /// between calls. If `quant` is armed for an int8 product, the context rows are quantized
    /// into it as soon as every head has written them.
    ///
    /// A uniform batch is the ragged case of equal lengths: this is
    /// [`attention_ragged`](Kernels::attention_ragged) with `B` lengths of `S`.
    pub fn attention(
        &self,
        qkv: &[f32],
        shape: AttentionShape,
        mask: KeepMask<'_>,
        policy: MaskedRows,
        dropout: Option<(f32, u64)>,
        ctx: &mut [f32],
        scores: Option<&mut [f32]>,
        scratch: &mut AttentionScratch,
        quant: Option<&mut QuantRows>,
        par: Par,
    ) -> Result<(), KernelError> {
        let AttentionShape {
            batch,
            seq,
            heads,
            key_dim,
        } = shape;
        let rows = batch
            .checked_mul(seq)
            .ok_or_else(|| overflow("attention rows"))?;
        let squares = rows
            .checked_mul(seq)
            .ok_or_else(|| overflow("attention scores"))?;
        let totals = Totals {
            rows,
            squares,
            longest: seq,
        };
        let call = AttnCall {
            qkv,
            heads,
            key_dim,
            mask,
            policy,
            dropout,
        };
        let Some(q_out) = self.check_attention(&call, totals, ctx, scores.as_deref(), quant)?
        else {
            return Ok(());
        };
        scratch.spans.clear();
        scratch.spans.extend((0..batch).map(|b| SeqSpan {
            start: b * seq,
            len: seq,
            square: b * seq * seq,
        }));
        scratch.order.clear();
        scratch.order.extend(0..batch);
        self.run_attention(&call, totals, ctx, scores, scratch, q_out, par);
        Ok(())
    }

    /// Masked multi-head attention over sequences of different lengths packed end to end
    /// (`../SPEC.md` section 11): `qkv` is `[T, 3*N*D]` and the context `[T, N*D]` for
    /// `T = sum(lengths)` rows. A [`KeepMask::Keys`] mask has `T` flags, a [`KeepMask::Full`]
    /// mask holds each sequence's `[len_i, len_i]` block end to end, and the scores each
    /// sequence's `[N, len_i, len_i]` end to end. Each sequence's results are bit-identical to
    /// a call on that sequence alone, whatever else the call holds and however many threads run.
    ///
    /// The (sequence, head) units are handed out longest first to whichever thread is free, so
    /// one long sequence among short ones does not leave a thread idle; the scratch space
    /// grows with the longest sequence only.
    ///
    /// ```
    /// use transformer_encoder_kernels::{
    ///     AttentionScratch, Isa, KeepMask, Kernels, MaskedRows, Par, RaggedShape,
    /// };
    /// let k = Kernels::for_isa(Isa::Portable)?;
    /// let lengths = [2, 1]; // two sequences, 3 rows; 1 head of size 2
    /// let qkv: Vec<f32> = (0..3 * 6).map(|i| i as f32 / 10.0).collect();
    /// let mut ctx = vec![0.0; 3 * 2];
    /// let shape = RaggedShape { lengths: &lengths, heads: 1, key_dim: 2 };
    /// let mut scratch = AttentionScratch::new();
    /// k.attention_ragged(&qkv, shape, KeepMask::All, MaskedRows::Zeros, None, &mut ctx, None,
    ///     &mut scratch, None, Par::Seq).unwrap();
    /// // A sequence of one token attends to itself: its context is its value.
    /// assert_eq!(&ctx[4..], &qkv[2 * 6 + 4..]);
    /// # Ok::<(), transformer_encoder_kernels::IsaError>(())
    /// ```
    pub fn attention_ragged(
        &self,
        qkv: &[f32],
        shape: RaggedShape<'_>,
        mask: KeepMask<'_>,
        policy: MaskedRows,
        dropout: Option<(f32, u64)>,
        ctx: &mut [f32],
        scores: Option<&mut [f32]>,
        scratch: &mut AttentionScratch,
        quant: Option<&mut QuantRows>,
        par: Par,
    ) -> Result<(), KernelError> {
        let RaggedShape {
            lengths,
            heads,
            key_dim,
        } = shape;
        let mut totals = Totals {
            rows: 0,
            squares: 0,
            longest: 0,
        };
        for &len in lengths {
            totals.rows = totals
                .rows
                .checked_add(len)
                .ok_or_else(|| overflow("attention rows"))?;
            totals.squares = len
                .checked_mul(len)
                .and_then(|q| q.checked_add(totals.squares))
                .ok_or_else(|| overflow("attention scores"))?;
            totals.longest = totals.longest.max(len);
        }
        let call = AttnCall {
            qkv,
            heads,
            key_dim,
            mask,
            policy,
            dropout,
        };
        let Some(q_out) = self.check_attention(&call, totals, ctx, scores.as_deref(), quant)?
        else {
            return Ok(());
        };
        let (mut start, mut square) = (0, 0);
        scratch.spans.clear();
        for &len in lengths {
            scratch.spans.push(SeqSpan { start, len, square });
            start += len;
            square += len * len;
        }
        // Longest first (empty sequences have no work and are left out).
        scratch.order.clear();
        scratch
            .order
            .extend((0..lengths.len()).filter(|&i| lengths[i] > 0));
        scratch
            .order
            .sort_unstable_by_key(|&i| std::cmp::Reverse(lengths[i]));
        self.run_attention(&call, totals, ctx, scores, scratch, q_out, par);
        Ok(())
    }

    /// Check an attention call's sizes; `None` when there is nothing to compute, else the
    /// armed quantized output (if any).
    fn check_attention(
        &self,
        call: &AttnCall<'_>,
        totals: Totals,
        ctx: &[f32],
        scores: Option<&[f32]>,
        quant: Option<&mut QuantRows>,
    ) -> Result<Option<Option<QuantOut>>, KernelError> {
        let (heads, key_dim) = (call.heads, call.key_dim);
        if heads == 0 || key_dim == 0 {
            return Err(KernelError {
                message: format!(
                    "attention needs heads >= 1 and key_dim >= 1, got {heads} and {key_dim}"
                ),
            });
        }
        let w = heads
            .checked_mul(key_dim)
            .ok_or_else(|| overflow("attention width"))?;
        let m = totals.rows;
        let want_qkv = m
            .checked_mul(3)
            .and_then(|v| v.checked_mul(w))
            .ok_or_else(|| overflow("qkv"))?;
        expect_len("qkv", call.qkv.len(), want_qkv)?;
        let want_ctx = m
            .checked_mul(w)
            .ok_or_else(|| overflow("attention context"))?;
        expect_len("attention context", ctx.len(), want_ctx)?;
        let nscores = totals
            .squares
            .checked_mul(heads)
            .ok_or_else(|| overflow("attention scores"))?;
        if let Some(s) = scores {
            expect_len("attention scores", s.len(), nscores)?;
        }
        match call.mask {
            KeepMask::All => {}
            KeepMask::Keys(k) => expect_len("key mask", k.len(), m)?,
            KeepMask::Full(f) => expect_len("attention mask", f.len(), totals.squares)?,
        }
        if let Some((rate, _)) = call.dropout
            && !(0.0..1.0).contains(&rate)
        {
            return Err(KernelError {
                message: format!("dropout rate must be in [0, 1), got {rate}"),
            });
        }
        let q_out = self.armed_out(quant, m, w)?;
        Ok((m > 0).then_some(q_out))
    }

    /// Run a checked attention call over the spans and order in `scratch`.
    fn run_attention(
        &self,
        call: &AttnCall<'_>,
        totals: Totals,
        ctx: &mut [f32],
        scores: Option<&mut [f32]>,
        scratch: &mut AttentionScratch,
        q_out: Option<QuantOut>,
        par: Par,
    ) {
        let (heads, key_dim) = (call.heads, call.key_dim);
        let w = heads * key_dim;
        let AttentionScratch {
            slots,
            spans,
            order,
        } = scratch;
        let units = order.len() * heads;
        // Work in multiply-adds: about len^2 * D per (sequence, head), twice.
        let work = totals.squares.saturating_mul(w);
        let parts = if work < PAR_MIN_ATTENTION {
            1
        } else {
            par.parts().min(units)
        };
        let len = scratch_len(totals.longest, key_dim, self.mr, self.nr);
        if slots.len() < parts {
            slots.resize_with(parts, Vec::new);
        }
        for s in slots.iter_mut().take(parts) {
            if s.len() < len {
                s.resize(len, 0.0);
            }
        }
        let args = AttnArgs {
            qkv: call.qkv.as_ptr(),
            spans,
            heads,
            key_dim,
            mask: call.mask,
            policy: call.policy,
            dropout: call.dropout,
            ctx: ctx.as_mut_ptr(),
            scores: scores.map_or(std::ptr::null_mut(), |s| s.as_mut_ptr()),
        };
        let (f, quant) = (self.attn, self.quant);
        // Many sequences: a thread claims a whole sequence (every head), so its context rows
        // are complete in that thread's cache and are quantized there for the output projection.
        // Few (a long passage alone): (sequence, head) units, so every thread has work, and the
        // context is quantized in a pass after.
        let whole = parts == 1 || order.len() >= 4 * parts;
        let claims = if whole { order.len() } else { units };
        let fused = if whole { q_out } else { None };
        let next = AtomicUsize::new(0);
        let order: &[usize] = order;
        let shared = Shared((&args, slots.as_mut_ptr(), fused));
        let run = |part: usize| {
            let (args, slots, fused) = shared.get();
            // SAFETY: part `part` alone uses scratch slot `part` (of the `parts` sized above
            // to `len` floats, enough for the longest sequence).
            let slot = unsafe { &mut (&mut *slots.add(part))[..len] };
            loop {
                // Claims in order (longest sequences first), each taken by exactly one thread.
                let u = next.fetch_add(1, Ordering::Relaxed);
                if u >= claims {
                    break;
                }
                let (seq, h0, h1) = if whole {
                    (order[u], 0, heads)
                } else {
                    (order[u / heads], u % heads, u % heads + 1)
                };
                for head in h0..h1 {
                    // SAFETY: the tier is available; buffer lengths and the mask were checked
                    // against the spans; each unit is claimed once, and distinct (sequence,
                    // head) units write disjoint ctx columns and score blocks.
                    unsafe { f(args, seq, head, slot) };
                }
                let span = args.spans[seq];
                if let Some(qo) = fused.filter(|_| span.len > 0) {
                    // SAFETY: this thread wrote every column of the sequence's ctx rows above
                    // (no other thread touches them); the destination is shaped for all the
                    // call's rows, and these rows are this claim's alone.
                    unsafe {
                        quant(
                            args.ctx.add(span.start * w),
                            span.len,
                            w,
                            &qo.skip(span.start),
                        )
                    };
                }
            }
        };
        crate::team::for_parts(parts, &run);
        if let Some(qo) = q_out.filter(|_| !whole) {
            self.quantize_out(ctx, w, qo, par);
        }
    }
}

/// The checks of a LayerNorm over `len` values in rows of `n`: scale and shift of `n`, output and
/// residual of `len`.
fn check_norm(
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

/// A LayerNorm finishing a product's rows (see [`Kernels::gemm_layer_norm`]): its residual
/// (or null), scale and shift, and where it writes (`out`, `[m, n]`, and the quantized rows).
#[derive(Clone, Copy)]
struct RowNorm {
    residual: *const f32,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    out: *mut f32,
    qo: QuantOut,
}

/// The operands of an attention call that the uniform and ragged entries share.
struct AttnCall<'a> {
    qkv: &'a [f32],
    heads: usize,
    key_dim: usize,
    mask: KeepMask<'a>,
    policy: MaskedRows,
    dropout: Option<(f32, u64)>,
}

/// Sizes of an attention call: rows, `sum len^2`, the longest sequence.
#[derive(Clone, Copy)]
struct Totals {
    rows: usize,
    squares: usize,
    longest: usize,
}

/// Where a product writes its output: the caller's `[m, n]` buffer, or scratch space.
enum Target<'a> {
    Out(*mut f32),
    Scratch(&'a mut ProductScratch),
}

/// The output rows of a product's parts: one `[m, n]` buffer (row `r` at `r * n`), or a block
/// buffer per part (`per_part` floats apart; a block's first row at its start).
#[derive(Clone, Copy)]
struct COut {
    base: *mut f32,
    per_part: usize,
    blocked: bool,
}

impl COut {
    /// Where part `part` writes row `r0` (the first row of its current rows).
    ///
    /// # Safety
    /// The row is within the buffer the plan sized.
    #[inline]
    unsafe fn at(&self, part: usize, r0: usize, n: usize) -> *mut f32 {
        // SAFETY: the caller's contract.
        unsafe {
            if self.blocked {
                self.base.add(part * self.per_part)
            } else {
                self.base.add(r0 * n)
            }
        }
    }
}

/// Scratch space for [`Kernels::gemm_quantized`]: the float32 output blocks of its threads,
/// grown on first use and then reused (see that method for an example).
#[derive(Debug, Default)]
pub struct ProductScratch {
    buf: Vec<f32>,
}

impl ProductScratch {
    /// Empty scratch space.
    pub fn new() -> ProductScratch {
        ProductScratch::default()
    }
}

/// `v` grown to at least `n` values; its first `n`.
fn grow_f32(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// A product's split between threads ([`Kernels::plan_product`]).
#[derive(Clone, Copy, Debug)]
struct Plan {
    m: usize,
    panels: usize,
    /// Rows per block when split by row blocks; `None`: by column panels.
    block: Option<usize>,
    parts: usize,
    /// Parts of the row-wise finish after a split by column panels.
    finish_parts: usize,
}

impl Plan {
    /// Rows of output one part holds at a time: a block, or every row.
    fn part_rows(&self) -> usize {
        self.block.unwrap_or(self.m)
    }

    /// Output buffers the parts need when each writes its own: one per part for row blocks,
    /// one shared (disjoint columns) for column panels.
    fn buffers(&self) -> usize {
        if self.block.is_some() { self.parts } else { 1 }
    }
}

/// From this many rows a product runs by row blocks whatever the thread count (A and the output
/// no longer fit in L2 otherwise). In int8 the output is larger than A fourfold and the weights
/// are a quarter of float32's, so blocks pay off sooner (measured on the Xeon, interleaved runs of
/// the embedding workloads: 256 rows against 1,024, the corpus in int8 105 / 101 / 110 ms against
/// 116 / 110 / 117, 32 queries 7.2 / 6.5 / 6.6 against 7.4 / 7.1 / 7.6; in float32 256 was
/// slower, 364-407 against 345-382).
const TALL_ROWS_F32: usize = 1024;
const TALL_ROWS_INT8: usize = 256;

/// The L2 size the row blocks are sized for (per core; 1-2 MiB on the CPUs of the field).
const L2_BYTES: usize = 1 << 20;

/// The largest `k` of an int8 product: `255 * 127 * k` stays below 2^31.
const MAX_INT8_K: usize = 65_536;

/// Part `i` of `0..total` split into `parts` nearly equal contiguous ranges.
fn split(total: usize, parts: usize, i: usize) -> (usize, usize) {
    (total * i / parts, total * (i + 1) / parts)
}

#[cold]
fn overflow(what: &str) -> KernelError {
    KernelError {
        message: format!("`{what}` size overflows usize"),
    }
}

/// Per-thread scratch space for [`Kernels::attention`] and [`Kernels::attention_ragged`], grown
/// on first use and then reused (sized by the longest sequence, not by the call).
#[derive(Debug, Default)]
pub struct AttentionScratch {
    slots: Vec<Vec<f32>>,
    /// Where each sequence of the call lies.
    spans: Vec<SeqSpan>,
    /// The sequences with work, longest first.
    order: Vec<usize>,
}

impl AttentionScratch {
    /// Empty scratch space.
    pub fn new() -> AttentionScratch {
        AttentionScratch::default()
    }
}

/// A weight matrix packed once, in the panel layout of one tier, for [`Kernels::gemm_prepared`]:
/// float32 panels ([`Kernels::pack`]) or Keras' int8 ([`Kernels::pack_int8`]). It knows its
/// format; the products dispatch on it.
#[derive(Clone, Debug)]
pub struct PackedMatrix {
    k: usize,
    n: usize,
    nr: usize,
    isa: Isa,
    data: Panels,
}

/// The panels of each format.
#[derive(Clone, Debug)]
enum Panels {
    /// `ceil(n / nr)` panels of `k * nr` floats.
    F32(Aligned<f32>),
    /// `ceil(n / nr)` panels of `kg = ceil(k / 4)` groups of `nr` columns x 4 bytes; per column
    /// (padded to whole panels) the offset compensation and `1 / scale`; `scale` itself (`[n]`).
    Int8 {
        panels: Aligned<i8>,
        kg: usize,
        layout: Int8Layout,
        comp: Aligned<i32>,
        inv_scale: Aligned<f32>,
        scale: Vec<f32>,
    },
}

impl PackedMatrix {
    /// Rows (the input size).
    pub fn k(&self) -> usize {
        self.k
    }
    /// Columns (the output size).
    pub fn n(&self) -> usize {
        self.n
    }
    /// The panel width.
    pub fn panel_width(&self) -> usize {
        self.nr
    }
    /// The tier whose layout this is.
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// How the values are stored.
    pub fn format(&self) -> WeightFormat {
        match self.data {
            Panels::F32(_) => WeightFormat::F32,
            Panels::Int8 { .. } => WeightFormat::Int8,
        }
    }

    /// The bytes the packed data holds (its heap allocations).
    pub fn bytes(&self) -> usize {
        match &self.data {
            Panels::F32(d) => d.bytes(),
            Panels::Int8 {
                panels,
                comp,
                inv_scale,
                scale,
                ..
            } => panels.bytes() + comp.bytes() + inv_scale.bytes() + 4 * scale.capacity(),
        }
    }

    /// The matrix back in row-major `[k, n]` layout: exactly the values packed for float32
    /// panels; `W_q / s_w` (the values the int8 product stands for) for int8 panels.
    ///
    /// ```
    /// use transformer_encoder_kernels::{Isa, Kernels};
    /// let w: Vec<f32> = (0..15).map(|v| v as f32).collect();
    /// let p = Kernels::for_isa(Isa::Portable)?.pack(&w, 3, 5)?;
    /// assert_eq!(p.unpack(), w);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unpack(&self) -> Vec<f32> {
        let (k, n, nr) = (self.k, self.n, self.nr);
        match &self.data {
            Panels::F32(data) => {
                let data = data.as_slice();
                let mut w = vec![0.0f32; k * n];
                for p in 0..n.div_ceil(nr) {
                    let cols = nr.min(n - p * nr);
                    for r in 0..k {
                        w[r * n + p * nr..][..cols]
                            .copy_from_slice(&data[(p * k + r) * nr..][..cols]);
                    }
                }
                w
            }
            Panels::Int8 { scale, .. } => {
                let (q, _) = self.int8_parts().unwrap_or_default();
                q.iter()
                    .enumerate()
                    .map(|(i, &v)| v as f32 / scale[i % n])
                    .collect()
            }
        }
    }

    /// Keras' int8 variables back from int8 panels: the kernel row-major `[k, n]` and the
    /// `kernel_scale` `[n]` (`None` for float32 panels).
    pub fn int8_parts(&self) -> Option<(Vec<i8>, Vec<f32>)> {
        let Panels::Int8 {
            panels,
            kg,
            layout,
            scale,
            ..
        } = &self.data
        else {
            return None;
        };
        let (k, n, nr) = (self.k, self.n, self.nr);
        let panels = panels.as_slice();
        let mut q = vec![0i8; k * n];
        for r in 0..k {
            for c in 0..n {
                q[r * n + c] = panels[layout.offset(c / nr, r, c % nr, nr, *kg)];
            }
        }
        Some((q, scale.clone()))
    }
}

/// What [`Kernels::gemm`] does to each output element after the product.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Added to every row first (`[n]`).
    pub bias: Option<&'a [f32]>,
    /// Applied after the bias.
    pub activation: Option<Activation>,
    /// Added last (`[m, n]`).
    pub residual: Option<&'a [f32]>,
}

/// The shape of a ragged attention call ([`Kernels::attention_ragged`], which has an example):
/// sequences of these lengths end to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaggedShape<'a> {
    /// Each sequence's length (zero allowed).
    pub lengths: &'a [usize],
    /// Number of heads.
    pub heads: usize,
    /// Key (and value) size per head.
    pub key_dim: usize,
}

/// The shape of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Batch size.
    pub batch: usize,
    /// Sequence length.
    pub seq: usize,
    /// Number of heads.
    pub heads: usize,
    /// Key (and value) size per head.
    pub key_dim: usize,
}

/// The baseline product every benchmark compares against: `matrixmultiply::sgemm` on row-major
/// `a [m, k]` and `b [k, n]`, `out = a · b`.
pub fn baseline_sgemm(
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let size = |x: usize, y: usize, what: &str| x.checked_mul(y).ok_or_else(|| overflow(what));
    expect_len("a", a.len(), size(m, k, "a")?)?;
    expect_len("b", b.len(), size(k, n, "b")?)?;
    expect_len("out", out.len(), size(m, n, "out")?)?;
    // matrixmultiply takes isize strides.
    if isize::try_from(k).is_err() || isize::try_from(n).is_err() {
        return Err(overflow("stride"));
    }
    // SAFETY: a is [m, k] row-major (rsa = k, csa = 1), b is [k, n] (rsb = n, csb = 1), out is
    // [m, n] (rsc = n, csc = 1); the lengths were checked above and beta = 0 means out is
    // only written.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            out.as_mut_ptr(),
            n as isize,
            1,
        );
    }
    Ok(())
}
