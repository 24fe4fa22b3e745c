//! int8 matrix products over weights packed once into panels of `k/4` groups (see
//! `simd::dot`), with Keras' dequantization fused into the epilogue:
//!
//! `C[i, j] = act(float(sum_k q_a[i, k] w_q[k, j]) * (1 / s_w[j]) * (1 / s_x[i]) + bias[j]) + residual`
//!
//! The int32 sum over the whole of `k` stays in registers (exact: `|sum| <= 255 * 127 * k` fits
//! for `k <= 65,536`, the packing limit), so every output is computed by the same operations
//! whatever the thread split. With `raw`, the int32 sums themselves are stored (the integer
//! reference checks them bit for bit).

use super::act::apply_tile;
use super::gemm::load_n;
use super::product::{ProductArgs, by_rows};
use crate::activation::Activation;
use crate::simd::Simd;
use crate::simd::dot::Dot;

/// Raw epilogue operands (validated by the safe wrapper), offset to the first column of the call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QEpi {
    /// `[n]` or null.
    pub bias: *const f32,
    /// Rows at stride `ldr` (same row indexing as C), or null.
    pub residual: *const f32,
    pub ldr: usize,
    /// An element-wise activation (or `Linear`).
    pub act: Activation,
    /// `128 * column sum` per column, padded to whole panels (for offset activations).
    pub comp: *const i32,
    /// `1 / s_w` per column, padded to whole panels.
    pub wscale: *const f32,
    /// `1 / s_x` per row of A (indexed like A's rows).
    pub xscale: *const f32,
    /// Store int32 sums (C is `*mut i32`), no float epilogue.
    pub raw: bool,
}

impl QEpi {
    /// The epilogue operands of a product call.
    #[inline(always)]
    pub(crate) fn of(args: &ProductArgs) -> QEpi {
        let (e, d) = (&args.epi, &args.deq);
        QEpi {
            bias: e.bias,
            residual: e.residual,
            ldr: e.ldr,
            act: e.act,
            comp: d.comp,
            wscale: d.wscale,
            xscale: d.xscale,
            raw: d.raw,
        }
    }
}

/// The float epilogue of one vector of int32 sums (as floats, `y`), row `i`, columns `cc..cc+n`
/// of a tile: `y * (1 / s_w) * (1 / s_x) + bias`, plus the residual when no activation follows
/// (with one, [`apply_tile`] runs on the whole tile afterwards).
///
/// # Safety
/// As [`micro`]'s epilogue operands; `c` valid for `min(n, LANES)` values.
#[inline(always)]
pub(crate) unsafe fn finish<S: Simd>(
    y: S::V,
    xs: S::V,
    epi: &QEpi,
    i: usize,
    cc: usize,
    n: usize,
    c: *mut f32,
) {
    // SAFETY: the contract above.
    unsafe {
        let ws = S::load(epi.wscale.add(cc));
        let mut y = S::mul(S::mul(y, ws), xs);
        if !epi.bias.is_null() {
            y = S::add(y, load_n::<S>(epi.bias.add(cc), n));
        }
        if epi.act == Activation::Linear && !epi.residual.is_null() {
            y = S::add(y, load_n::<S>(epi.residual.add(i * epi.ldr + cc), n));
        }
        if n >= S::LANES {
            S::store(c, y);
        } else {
            S::store_partial(c, n, y);
        }
    }
}

/// Bytes of a row's group of 4 activations as the kernel reads them: 8 widened, else 4.
const fn group_bytes<D: Dot>() -> usize {
    if D::WIDE_A { 8 } else { 4 }
}

/// One `R x (NV * LANES)` tile over the whole of `k` (`kg` groups of 4).
///
/// # Safety
/// `a`: `R` rows of `4 * kg` bytes (`8 * kg`, int16, with `D::WIDE_A`) at stride `lda`; `b`: the panel (`kg` groups of
/// `NV * LANES * 4` bytes); `c`: `R` rows of `cols` values at stride `ldc`; `epi` offset to this
/// tile's first column (comp and wscale valid for `NV * LANES`, bias for `cols`, residual for `R`
/// rows of `cols`) and `epi.xscale` to its first row. D's features enabled.
#[inline(always)]
unsafe fn micro<D: Dot, const R: usize, const NV: usize>(
    kg: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    epi: &QEpi,
    ahead: usize,
) {
    type S<D> = <D as Dot>::F;
    let lanes = <D::F as Simd>::LANES;
    let nr = NV * lanes;
    let a_group = group_bytes::<D>();
    const { assert!((D::PARTS - 1) * D::A_PART + 4 <= group_bytes::<D>()) };
    // SAFETY: every pointer formed stays inside the extents of the contract.
    unsafe {
        let mut acc = [[D::zero(); NV]; R];
        // Each row's pointer computed once; the loop indexes them all with one offset (no chain
        // of address additions through the rows).
        let rows: [*const u8; R] = std::array::from_fn(|i| a.add(i * lda));
        let mut bp = b;
        for g in 0..kg {
            // The weights `ahead` bytes on fetched into L1, a group's worth of lines per
            // group (the stream runs on into the next panel: panels lie in memory order).
            if ahead != 0 {
                let f = bp.wrapping_add(ahead) as *const u8;
                let mut l = 0;
                while l < nr * 4 {
                    S::<D>::prefetch(f.wrapping_add(l) as *const f32);
                    l += 64;
                }
            }
            // A group in `D::PARTS` parts (one for most dots): each part's weights, then
            // every row's broadcast of its share.
            for part in 0..D::PARTS {
                let pb = bp.add(part * D::B_PART);
                let mut bv = [D::load_b(pb); NV];
                for (v, x) in bv.iter_mut().enumerate().skip(1) {
                    *x = D::load_b(pb.add(v * lanes * 4));
                }
                for i in 0..R {
                    let av = D::bcast(rows[i].add(a_group * g + part * D::A_PART));
                    for v in 0..NV {
                        acc[i][v] = D::dot(acc[i][v], av, bv[v]);
                    }
                }
            }
            bp = bp.add(nr * 4);
        }
        for i in 0..R {
            let xs = S::<D>::splat(*epi.xscale.add(i));
            for v in 0..NV {
                let cc = v * lanes;
                if cc >= cols {
                    break;
                }
                let n = cols - cc;
                let sums = if D::OFFSET {
                    D::sub_i32(acc[i][v], epi.comp.add(cc))
                } else {
                    acc[i][v]
                };
                if epi.raw {
                    D::store_i32((c as *mut i32).add(i * ldc + cc), sums, n);
                    continue;
                }
                let y = D::to_f32(sums);
                finish::<S<D>>(y, xs, epi, i, cc, n, c.add(i * ldc + cc));
            }
        }
        if !epi.raw && epi.act != Activation::Linear {
            apply_tile::<S<D>>(c, ldc, R, cols, epi.act, epi.residual, epi.ldr);
        }
    }
}

/// Products of at most this many rows (and more than one row tile) whose rows are read as they
/// are run panel by panel over their row tiles: a query's weights are read from memory once, not
/// once per row tile. Measured on an Intel Xeon (AVX-512 VNNI, L2 2 MiB; 12 BERT-base layers at
/// 16 rows, one thread, weights fetched ahead, settings alternated in 4 rounds): 10.8 -> 9.8 ms.
const PANEL_OUTER_ROWS: usize = 32;

/// [`micro`] for `rows <= MR` rows, monomorphised per row count.
#[inline(always)]
unsafe fn tile<D: Dot, const NV: usize>(
    rows: usize,
    kg: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    epi: &QEpi,
    ahead: usize,
) {
    macro_rules! go {
        ($r:literal) => {
            micro::<D, $r, NV>(kg, a, lda, b, c, ldc, cols, epi, ahead)
        };
    }
    // SAFETY: forwarded contract of `micro` with R = rows.
    unsafe { by_rows!(rows, go, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 12) }
}

/// int16 values of a widened row tile kept on the stack (48 KiB).
const STACK_WIDE: usize = 24_576;

thread_local! {
    /// This thread's copy of a row tile widened to int16 ([`Dot::WIDE_A`]), grown as needed.
    static WIDE: std::cell::RefCell<Vec<i16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This thread's widened row tile, at least `len` values (for tiles past [`STACK_WIDE`]; it
/// allocates when it grows). The pointer stays valid until the next call on this thread
/// (nothing else touches the buffer: the int8 product does not call itself).
fn wide_scratch(len: usize) -> *mut i16 {
    WIDE.with(|w| {
        let mut v = w.borrow_mut();
        if v.len() < len {
            v.resize(len, 0);
        }
        v.as_mut_ptr()
    })
}

/// Rows `0..m` and panels `p0..p1` of the int8 product.
///
/// # Safety
/// * `a`: `m` rows of `lda >= 4 * kg` bytes (`kg = steps`); `packed`: `ceil(n / NR)` panels of `kg * NR * 4`
///   bytes; `c`: `m` rows of `n` values (f32, or i32 with `epi.raw`) at stride `ldc`;
///   `epi.bias` `n` values or null; `epi.residual` `m` rows at stride `epi.ldr` or null;
///   `epi.comp` and `epi.wscale` `ceil(n / NR) * NR` values; `epi.xscale` `m` values.
/// * `MR <= 12`; no other thread writes the columns of panels `p0..p1` of these rows.
#[inline(always)]
pub(crate) unsafe fn qgemm_panels<D: Dot, const MR: usize, const NV: usize>(
    a: *const u8,
    packed: *const u8,
    c: *mut f32,
    args: &ProductArgs,
) {
    let ProductArgs {
        lda,
        m,
        steps: kg,
        n,
        ldc,
        p0,
        p1,
        ..
    } = *args;
    let (packed, epi) = (packed as *const i8, &QEpi::of(args));
    let nr = NV * <D::F as Simd>::LANES;
    // SAFETY: every pointer formed below stays inside the extents documented above.
    unsafe {
        // The row tile widened to int16 for the dots that read it so: made once per row tile,
        // read by every panel.
        // On the stack up to STACK_WIDE values (a 6-row tile up to k = 4,096: BERT-large's
        // widest), so the product allocates nothing; beyond, this thread's buffer.
        let mut stack = [std::mem::MaybeUninit::<i16>::uninit(); STACK_WIDE];
        let wide = if !D::WIDE_A {
            std::ptr::null_mut()
        } else if MR * 4 * kg <= STACK_WIDE {
            stack.as_mut_ptr() as *mut i16
        } else {
            wide_scratch(MR * 4 * kg)
        };
        // One tile: rows `i..i + rows` (their A at `ta`, stride `tlda`) by panel `p` (a macro,
        // not a closure: a closure would not inherit the tier's features, and its inlined
        // kernel would run without them).
        macro_rules! run_tile {
            ($i:expr, $rows:expr, $ta:expr, $tlda:expr, $p:expr) => {{
                let (i, rows, ta, tlda, p): (usize, usize, *const u8, usize, usize) =
                    ($i, $rows, $ta, $tlda, $p);
                let col0 = p * nr;
                let cols = nr.min(n - col0);
                let bp = packed.add(p * kg * nr * 4);
                let e = QEpi {
                    bias: if epi.bias.is_null() {
                        epi.bias
                    } else {
                        epi.bias.add(col0)
                    },
                    residual: if epi.residual.is_null() {
                        epi.residual
                    } else {
                        epi.residual.add(i * epi.ldr + col0)
                    },
                    comp: epi.comp.add(col0),
                    wscale: epi.wscale.add(col0),
                    xscale: epi.xscale.add(i),
                    ..*epi
                };
                let cp = if epi.raw {
                    (c as *mut i32).add(i * ldc + col0) as *mut f32
                } else {
                    c.add(i * ldc + col0)
                };
                tile::<D, NV>(rows, kg, ta, tlda, bp, cp, ldc, cols, &e, args.ahead);
            }};
        }
        if !D::WIDE_A && m > MR && m <= PANEL_OUTER_ROWS {
            // A few row tiles of bytes read as they are (a query): panels outer, so each
            // panel is read from memory once and by the other row tiles from L1 / L2, and
            // the rows (at most a few KiB per inner step) stay in L2.
            for p in p0..p1 {
                let mut i = 0;
                while i < m {
                    let rows = MR.min(m - i);
                    run_tile!(i, rows, a.add(i * lda), lda, p);
                    i += rows;
                }
            }
            return;
        }
        // Passes over the panels, each at most `args.pass` bytes of them (at least one panel):
        // its first row tile reads them from memory, the others from L2. Within a pass, row
        // tiles outer: a tile's rows of A (MR x k bytes, twice that widened) stay in L1 while
        // the panels stream (in L2 past L1: 6 widened rows of k = 3,072 are 36 KiB).
        let per_pass = (args.pass / (kg * nr * 4).max(1)).max(1);
        let mut q0 = p0;
        while q0 < p1 {
            let q1 = p1.min(q0 + per_pass);
            let mut i = 0;
            while i < m {
                let rows = MR.min(m - i);
                let (ta, tlda) = if D::WIDE_A {
                    for r in 0..rows {
                        let src = a.add((i + r) * lda) as *const i8;
                        let dst = wide.add(r * 4 * kg);
                        for j in 0..4 * kg {
                            *dst.add(j) = *src.add(j) as i16;
                        }
                    }
                    (wide as *const u8, 8 * kg)
                } else {
                    (a.add(i * lda), lda)
                };
                for p in q0..q1 {
                    run_tile!(i, rows, ta, tlda, p);
                }
                i += rows;
            }
            q0 = q1;
        }
    }
}
