//! The kernel table: the one dispatch point. One table per instruction-set tier, chosen once.

use crate::activation::Activation;
use crate::arch::{ActFn, AttnFn, GemmFn, NormFn, RowActFn};
use crate::isa::{Isa, IsaError};
use crate::ops::attention::{AttnArgs, scratch_len};
use crate::ops::gemm::Epi;
use crate::{KeepMask, KernelError, MaskedRows, expect_len};
use rayon::prelude::*;
use std::sync::OnceLock;

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
}

macro_rules! table {
    ($isa:expr, $m:path) => {{
        use $m as t;
        Kernels {
            isa: $isa,
            mr: t::MR,
            nr: t::NR,
            gemm: t::gemm,
            norm: t::layer_norm,
            attn: t::attention,
            act: t::activation,
            act_rows: t::activation_rows,
        }
    }};
}

static PORTABLE: Kernels = table!(Isa::Portable, crate::arch::portable);
#[cfg(target_arch = "x86_64")]
static AVX2: Kernels = table!(Isa::Avx2, crate::arch::avx2);
#[cfg(target_arch = "x86_64")]
static AVX2_VNNI: Kernels = table!(Isa::Avx2Vnni, crate::arch::avx2);
#[cfg(target_arch = "x86_64")]
static AVX512: Kernels = table!(Isa::Avx512, crate::arch::avx512);
#[cfg(target_arch = "x86_64")]
static AVX512_VNNI: Kernels = table!(Isa::Avx512Vnni, crate::arch::avx512);

/// Work below this many multiply-adds runs on one thread (thread start-up would dominate).
const PAR_MIN_FMAS: usize = 1 << 20;

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
            #[cfg(not(target_arch = "x86_64"))]
            _ => &PORTABLE,
        }
    }

    /// The tier of this table.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The register tile (`rows x columns`) of this tier's matrix products.
    pub fn tile(&self) -> (usize, usize) {
        (self.mr, self.nr)
    }

    /// Pack a row-major `[k, n]` weight matrix (Keras' `[in, out]`) once, into this tier's panel
    /// layout, for [`Kernels::gemm`].
    pub fn pack(&self, w: &[f32], k: usize, n: usize) -> Result<PackedMatrix, KernelError> {
        let want = k.checked_mul(n).ok_or_else(|| KernelError {
            message: format!("weight matrix [{k}, {n}] is too large"),
        })?;
        expect_len("weight matrix", w.len(), want)?;
        let nr = self.nr;
        let panels = n.div_ceil(nr);
        let mut data = vec![0.0f32; panels * k * nr];
        for p in 0..panels {
            let cols = nr.min(n - p * nr);
            for r in 0..k {
                let dst = &mut data[(p * k + r) * nr..][..cols];
                dst.copy_from_slice(&w[r * n + p * nr..][..cols]);
            }
        }
        Ok(PackedMatrix {
            k,
            n,
            nr,
            isa: self.isa,
            data,
        })
    }

    /// `out[m, n] = act(a[m, k] · B + bias) + residual`, with `B` packed by [`Kernels::pack`] of
    /// this tier. Element-wise activations run in the product's epilogue, on each register tile
    /// while it is in L1; the row-wise ones (`softmax`, `log_softmax`, `sparsemax`) as a row pass
    /// over the finished rows. `k == 0` gives `act(bias) + residual`.
    pub fn gemm(
        &self,
        a: &[f32],
        m: usize,
        b: &PackedMatrix,
        epilogue: &Epilogue<'_>,
        out: &mut [f32],
        par: Par,
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
        expect_len("gemm input", a.len(), mk)?;
        expect_len("gemm output", out.len(), mn)?;
        if let Some(bias) = epilogue.bias {
            expect_len("gemm bias", bias.len(), n)?;
        }
        if let Some(r) = epilogue.residual {
            expect_len("gemm residual", r.len(), mn)?;
        }
        if mn == 0 {
            return Ok(());
        }
        let act = epilogue.activation.unwrap_or(Activation::Linear);
        let rowwise = act.is_rowwise();
        if k == 0 {
            for row in out.chunks_mut(n) {
                match epilogue.bias {
                    Some(bias) => row.copy_from_slice(bias),
                    None => row.fill(0.0),
                }
            }
            self.rows_pass(out, n, act, epilogue.residual, par);
            return Ok(());
        }
        let epi = Epi {
            bias: epilogue.bias.map_or(std::ptr::null(), |b| b.as_ptr()),
            residual: match epilogue.residual {
                Some(r) if !rowwise => r.as_ptr(),
                _ => std::ptr::null(),
            },
            ldr: n,
            act: if rowwise { Activation::Linear } else { act },
        };
        let panels = n.div_ceil(self.nr);
        let work = mk.saturating_mul(n);
        let threads = match par {
            Par::Threads(t) if work >= PAR_MIN_FMAS => t.max(1),
            _ => 1,
        };
        // Split the operand that is cheaper to read more than once: by rows when A is taller
        // than B is wide (each part streams every weight panel past its own rows), else by
        // column panels (each part reads only its share of the weights and all of A). A few
        // parts per thread even out uneven costs.
        let mr = self.mr;
        let by_rows = threads > 1 && m >= 2 * crate::ops::gemm::MC && m > n;
        let parts = if threads == 1 {
            1
        } else if by_rows {
            (threads * 2).min(m.div_ceil(mr))
        } else {
            (threads * 3).min(panels)
        };
        let f = self.gemm;
        let ptrs = Shared((a.as_ptr(), b.data.as_ptr(), out.as_mut_ptr(), epi));
        let run = |part: usize| {
            let (ap, bp, cp, mut epi) = ptrs.get();
            let ((r0, r1), (p0, p1)) = if by_rows {
                // Row ranges on tile boundaries.
                let tiles = m.div_ceil(mr);
                let (t0, t1) = split(tiles, parts, part);
                ((t0 * mr, (t1 * mr).min(m)), (0, panels))
            } else {
                ((0, m), split(panels, parts, part))
            };
            if !epi.residual.is_null() {
                // SAFETY: r0 < m rows of the [m, n] residual.
                epi.residual = unsafe { epi.residual.add(r0 * n) };
            }
            // SAFETY: the table's tier is available (tables are only handed out for
            // available tiers); a is [m, k], the packed weights hold `panels` panels of k*nr,
            // out is [m, n], bias [n] and residual [m, n] were checked above; rows r0..r1
            // and panels p0..p1 are in range, and parts write disjoint rows or columns.
            unsafe {
                f(
                    ap.add(r0 * k),
                    k,
                    r1 - r0,
                    k,
                    bp,
                    n,
                    cp.add(r0 * n),
                    n,
                    p0,
                    p1,
                    &epi,
                )
            };
        };
        if parts == 1 {
            run(0);
        } else {
            (0..parts).into_par_iter().for_each(run);
        }
        if rowwise {
            self.rows_pass(out, n, act, epilogue.residual, par);
        }
        Ok(())
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
        let parts = if x.len() < 1 << 15 {
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
        if parts == 1 {
            run(0);
        } else {
            (0..parts).into_par_iter().for_each(run);
        }
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
        expect_len("layer norm gamma", gamma.len(), n)?;
        expect_len("layer norm beta", beta.len(), n)?;
        expect_len("layer norm output", out.len(), x.len())?;
        if let Some(r) = residual {
            expect_len("layer norm residual", r.len(), x.len())?;
        }
        if let Some(s) = sum_out.as_deref() {
            expect_len("layer norm sum output", s.len(), x.len())?;
        }
        let rows = x.len() / n;
        if rows == 0 {
            return Ok(());
        }
        let f = self.norm;
        let ptrs = Shared((
            x.as_ptr(),
            residual.map_or(std::ptr::null(), |r| r.as_ptr()),
            out.as_mut_ptr(),
            sum_out.map_or(std::ptr::null_mut(), |s| s.as_mut_ptr()),
        ));
        let parts = if x.len() < 1 << 16 {
            1
        } else {
            par.parts().min(rows)
        };
        let run = |part: usize| {
            let (r0, r1) = split(rows, parts, part);
            let (xp, rp, op, sp) = ptrs.get();
            let off = r0 * n;
            // SAFETY: the tier is available; rows r0..r1 of every [rows, n] buffer are in
            // bounds (lengths checked above) and written by this part only.
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
                )
            };
        };
        if parts == 1 {
            run(0);
        } else {
            (0..parts).into_par_iter().for_each(run);
        }
        Ok(())
    }

    /// Masked multi-head attention. `qkv` is `[B*S, 3*N*D]`: queries, keys and values side by
    /// side (as the projections give them), head `n` at columns `n*D` of each third; the logits
    /// are scaled by Keras' `1/sqrt(D)` inside the softmax.
    /// Writes the context `[B*S, N*D]` and, if given, the probabilities `[B, N, S, S]` (before
    /// dropout). `dropout` is `(rate, seed)`. `scratch` is reused between calls.
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
        par: Par,
    ) -> Result<(), KernelError> {
        let AttentionShape {
            batch,
            seq,
            heads,
            key_dim,
        } = shape;
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
        let m = batch
            .checked_mul(seq)
            .ok_or_else(|| overflow("attention rows"))?;
        let want_qkv = m
            .checked_mul(3)
            .and_then(|v| v.checked_mul(w))
            .ok_or_else(|| overflow("qkv"))?;
        expect_len("qkv", qkv.len(), want_qkv)?;
        expect_len("attention context", ctx.len(), m * w)?;
        let nscores = batch
            .checked_mul(heads)
            .and_then(|v| v.checked_mul(seq))
            .and_then(|v| v.checked_mul(seq))
            .ok_or_else(|| overflow("attention scores"))?;
        if let Some(s) = scores.as_deref() {
            expect_len("attention scores", s.len(), nscores)?;
        }
        mask.check(batch, seq)?;
        if let Some((rate, _)) = dropout
            && !(0.0..1.0).contains(&rate)
        {
            return Err(KernelError {
                message: format!("dropout rate must be in [0, 1), got {rate}"),
            });
        }
        if m == 0 || w == 0 {
            return Ok(());
        }
        let pairs = batch * heads;
        let work = pairs.saturating_mul(seq * seq * key_dim);
        let parts = if work < PAR_MIN_FMAS / 4 {
            1
        } else {
            par.parts().min(pairs)
        };
        let len = scratch_len(seq, key_dim, self.mr, self.nr);
        if scratch.slots.len() < parts {
            scratch.slots.resize_with(parts, Vec::new);
        }
        for s in scratch.slots.iter_mut().take(parts) {
            if s.len() < len {
                s.resize(len, 0.0);
            }
        }
        let args = AttnArgs {
            qkv: qkv.as_ptr(),
            seq,
            heads,
            key_dim,
            mask,
            policy,
            dropout,
            ctx: ctx.as_mut_ptr(),
            scores: scores.map_or(std::ptr::null_mut(), |s| s.as_mut_ptr()),
        };
        let f = self.attn;
        let shared = Shared(&args);
        let run = |part: usize, slot: &mut Vec<f32>| {
            let (p0, p1) = split(pairs, parts, part);
            // SAFETY: the tier is available; buffer lengths and the mask were checked above;
            // each part handles distinct (batch, head) pairs, whose ctx columns and score rows
            // are disjoint; each part has its own scratch slot of the needed length.
            unsafe { f(shared.get(), p0, p1, &mut slot[..len]) };
        };
        if parts == 1 {
            run(0, &mut scratch.slots[0]);
        } else {
            scratch.slots[..parts]
                .par_iter_mut()
                .enumerate()
                .for_each(|(i, s)| run(i, s));
        }
        Ok(())
    }
}

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

/// Per-thread scratch space for [`Kernels::attention`], grown on first use and then reused.
#[derive(Debug, Default)]
pub struct AttentionScratch {
    slots: Vec<Vec<f32>>,
}

impl AttentionScratch {
    /// Empty scratch space.
    pub fn new() -> AttentionScratch {
        AttentionScratch::default()
    }
}

/// A weight matrix packed once, in the panel layout of one tier, for [`Kernels::gemm`].
#[derive(Clone, Debug)]
pub struct PackedMatrix {
    k: usize,
    n: usize,
    nr: usize,
    isa: Isa,
    data: Vec<f32>,
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

    /// The bytes the packed data holds (its heap allocation).
    pub fn bytes(&self) -> usize {
        self.data.capacity() * std::mem::size_of::<f32>()
    }

    /// The matrix back in row-major `[k, n]` layout (exactly the values packed).
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
        let mut w = vec![0.0f32; k * n];
        for p in 0..n.div_ceil(nr) {
            let cols = nr.min(n - p * nr);
            for r in 0..k {
                w[r * n + p * nr..][..cols].copy_from_slice(&self.data[(p * k + r) * nr..][..cols]);
            }
        }
        w
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
