//! The kernel table: the one dispatch point. One table per instruction-set tier, chosen once.

use crate::Blocks;
use crate::activation::Activation;
use crate::aligned::Aligned;
use crate::arch::{ActFn, AttnFn, NormFn, QuantFn, QuantOut, RowActFn};
use crate::blocks::Tile;
use crate::isa::{Bf16Kernel, Isa, IsaError};
use crate::ops::attention::{AttnArgs, SeqSpan, scratch_len};
use crate::ops::gemm::Epi;
use crate::ops::product::{Dequant, PanelLayout, ProductArgs, ProductKernel};
use crate::quant::{Precision, QuantRows, RowShape};
use crate::{KeepMask, KernelError, MaskedRows, expect_len};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

mod attend;
mod bf16;
mod int8;
mod packed;
mod plan;
mod product;
mod rows;

pub use attend::{AttentionScratch, AttentionShape, RaggedShape};
pub use packed::PackedMatrix;
pub(crate) use plan::L2_BYTES;
pub use plan::ProductScratch;

use packed::Panels;
use plan::{COut, TALL_ROWS_F32, TALL_ROWS_INT8};
use rows::check_norm;

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

    /// Parts of a row-wise pass over `values` values in `rows` rows: one below
    /// [`PAR_MIN_VALUES`], else a part per thread (at most one per row).
    fn row_parts(self, values: usize, rows: usize) -> usize {
        if values < PAR_MIN_VALUES {
            1
        } else {
            self.parts().min(rows)
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
    norm: NormFn,
    attn: AttnFn,
    /// The attention of a bf16 layer, where it differs from `attn` (its products on bf16 tiles).
    attn_bf16: Option<AttnFn>,
    /// `attn_bf16` for every layer, float32 and int8 too (the table
    /// [`with_bf16_attention`](Kernels::with_bf16_attention) gives).
    attn_bf16_all: bool,
    /// This table with `attn_bf16_all` (None: no `attn_bf16`); a function, so that the two
    /// tables' `Debug` does not go round in a circle.
    bf16_attention: Option<fn() -> &'static Kernels>,
    act: ActFn,
    act_rows: RowActFn,
    quant: QuantFn,
    /// The products, one per weight format (see `ops::product`); `f32` is the tier's first
    /// float32 tile (the attention's), the product runs the one `fp32_tile` picks of `f32_tiles`.
    f32: ProductKernel,
    f32_tiles: &'static [ProductKernel],
    int8: ProductKernel,
    bf16: ProductKernel,
    /// int8: whether activations carry `+128`.
    qoffset: bool,
    /// bf16: how the products run.
    bkind: Bf16Kernel,
}

macro_rules! table {
    ($isa:expr, $m:path, $q:path, $b:path, $bkind:expr) => {{
        use $b as b;
        use $m as t;
        use $q as q;
        Kernels {
            isa: $isa,
            norm: t::layer_norm,
            attn: t::attention,
            attn_bf16: b::ATTENTION,
            attn_bf16_all: false,
            bf16_attention: None,
            act: t::activation,
            act_rows: t::activation_rows,
            quant: t::quantize,
            f32: t::KERNEL,
            f32_tiles: t::TILES,
            int8: q::KERNEL,
            bf16: b::KERNEL,
            qoffset: q::OFFSET,
            bkind: $bkind,
        }
    }};
}

// One table per tier: the float kernels of its float tier, the int8 products of its own
// dot-product instructions, the bf16 products widened to float32, or (the AVX-512 tiers' other
// tables, which `Kernels::table` picks by `Isa::bf16_kernel` or `TRANSFORMER_ENCODER_BF16`) on
// `vdpbf16ps` or AMX tiles.
static PORTABLE: Kernels = table!(
    Isa::Portable,
    crate::arch::portable,
    crate::arch::q_portable,
    crate::ops::bgemm::b_portable,
    Bf16Kernel::Widen
);
#[cfg(target_arch = "x86_64")]
static AVX2: Kernels = table!(
    Isa::Avx2,
    crate::arch::avx2,
    crate::arch::q_avx2,
    crate::ops::bgemm::b_avx2,
    Bf16Kernel::Widen
);
#[cfg(target_arch = "x86_64")]
static AVX2_VNNI: Kernels = table!(
    Isa::Avx2Vnni,
    crate::arch::avx2,
    crate::arch::q_avx2vnni,
    crate::ops::bgemm::b_avx2,
    Bf16Kernel::Widen
);
#[cfg(target_arch = "x86_64")]
static AVX512: Kernels = table!(
    Isa::Avx512,
    crate::arch::avx512,
    crate::arch::q_avx512,
    crate::ops::bgemm::b_avx512,
    Bf16Kernel::Widen
);
#[cfg(target_arch = "x86_64")]
static AVX512_VNNI: Kernels = table!(
    Isa::Avx512Vnni,
    crate::arch::avx512,
    crate::arch::q_avx512vnni,
    crate::ops::bgemm::b_avx512,
    Bf16Kernel::Widen
);
#[cfg(target_arch = "x86_64")]
static AVX512_VNNI_BF16: Kernels = table!(
    Isa::Avx512Vnni,
    crate::arch::avx512,
    crate::arch::q_avx512vnni,
    crate::ops::bgemm::b_avx512bf16,
    Bf16Kernel::Dot
);
#[cfg(target_arch = "x86_64")]
static AVX512_AMX: Kernels = table!(
    Isa::Avx512Amx,
    crate::arch::avx512,
    crate::arch::q_amx,
    crate::ops::bgemm::b_avx512,
    Bf16Kernel::Widen
);
#[cfg(target_arch = "x86_64")]
static AVX512_AMX_TILES: Kernels = Kernels {
    bf16_attention: Some(|| &AVX512_AMX_TILES_BF16_ATTENTION),
    ..table!(
        Isa::Avx512Amx,
        crate::arch::avx512,
        crate::arch::q_amx,
        crate::arch::b_amx,
        Bf16Kernel::Tiles
    )
};
/// The same with every layer's attention products on bf16 tiles.
#[cfg(target_arch = "x86_64")]
static AVX512_AMX_TILES_BF16_ATTENTION: Kernels = Kernels {
    attn_bf16_all: true,
    ..AVX512_AMX_TILES
};
#[cfg(target_arch = "x86_64")]
static AVX512_AMX_BF16: Kernels = table!(
    Isa::Avx512Amx,
    crate::arch::avx512,
    crate::arch::q_amx,
    crate::ops::bgemm::b_avx512bf16,
    Bf16Kernel::Dot
);

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
    /// (`TRANSFORMER_ENCODER_BF16` is checked too: see [`BF16_ENV`](crate::isa::BF16_ENV).)
    pub fn best() -> Result<&'static Kernels, IsaError> {
        static BEST: OnceLock<Result<&'static Kernels, IsaError>> = OnceLock::new();
        BEST.get_or_init(|| {
            bf16_choice()?;
            forced_choices()?;
            Isa::detect().map(Kernels::table)
        })
        .clone()
    }

    /// The table of a given tier, or an error if this CPU lacks it (or
    /// `TRANSFORMER_ENCODER_BF16` holds a value that cannot be used).
    pub fn for_isa(isa: Isa) -> Result<&'static Kernels, IsaError> {
        bf16_choice()?;
        forced_choices()?;
        isa.require().map(Kernels::table)
    }

    pub(super) fn table(isa: Isa) -> &'static Kernels {
        match isa {
            Isa::Portable => &PORTABLE,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => &AVX2,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Vnni => &AVX2_VNNI,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => &AVX512,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => match bf16_kernel(isa) {
                Bf16Kernel::Dot => &AVX512_VNNI_BF16,
                _ => &AVX512_VNNI,
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Amx => match bf16_kernel(isa) {
                Bf16Kernel::Tiles => &AVX512_AMX_TILES,
                Bf16Kernel::Dot => &AVX512_AMX_BF16,
                Bf16Kernel::Widen => &AVX512_AMX,
            },
            #[cfg(not(target_arch = "x86_64"))]
            _ => &PORTABLE,
        }
    }

    /// The tier of this table.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The register tile (`rows x columns`) of this tier's matrix products over `format`.
    pub fn tile(&self, format: Precision) -> (usize, usize) {
        let p = self.product(format);
        (p.mr, p.nr)
    }

    /// The product over weights packed in `format` (the one place a format picks its kernel).
    pub(super) fn product(&self, format: Precision) -> &ProductKernel {
        match format {
            Precision::F32 => self.f32_product(),
            Precision::Int8 => &self.int8,
            Precision::Bf16 => &self.bf16,
        }
    }

    /// How this table's bf16 products run (widened, `vdpbf16ps` or AMX tiles).
    ///
    /// ```
    /// use transformer_encoder_kernels::{Bf16Kernel, Isa, Kernels};
    /// assert_eq!(Kernels::for_isa(Isa::Portable)?.bf16_kernel(), Bf16Kernel::Widen);
    /// # Ok::<(), transformer_encoder_kernels::IsaError>(())
    /// ```
    pub fn bf16_kernel(&self) -> Bf16Kernel {
        self.bkind
    }

    /// From how many tokens a sequence's attention in a bf16 layer (a context armed for a bf16
    /// product, see [`attention`](Kernels::attention)) runs its two products on bf16 operands,
    /// on tiles; `None` where this table keeps them in float32 (no bf16 tiles). Shorter
    /// sequences keep float32 products, which are faster there.
    ///
    /// ```
    /// use transformer_encoder_kernels::{Isa, Kernels};
    /// assert_eq!(Kernels::for_isa(Isa::Portable)?.bf16_attention_from(), None);
    /// # Ok::<(), transformer_encoder_kernels::IsaError>(())
    /// ```
    pub fn bf16_attention_from(&self) -> Option<usize> {
        self.attention_tiles_from()
    }

    /// This table with the attention's two products on bf16 operands (on tiles, float32 sums,
    /// softmax in float32) in every layer from [`bf16_attention_from`] tokens on: float32 and
    /// int8 layers too, where Keras keeps them in float32 (an option beyond Keras' semantics,
    /// faster on long sequences). `None` where there are no bf16 tiles.
    ///
    /// ```
    /// use transformer_encoder_kernels::{Isa, Kernels};
    /// let k = Kernels::for_isa(Isa::Portable)?;
    /// assert!(k.with_bf16_attention().is_none());
    /// assert!(!k.bf16_attention_for_all());
    /// # Ok::<(), transformer_encoder_kernels::IsaError>(())
    /// ```
    ///
    /// [`bf16_attention_from`]: Kernels::bf16_attention_from
    pub fn with_bf16_attention(&self) -> Option<&'static Kernels> {
        self.bf16_attention.map(|f| f())
    }

    /// Whether this table runs every layer's attention products in bf16 (a table from
    /// [`with_bf16_attention`](Kernels::with_bf16_attention)); otherwise only bf16 layers do.
    pub fn bf16_attention_for_all(&self) -> bool {
        self.attn_bf16_all
    }

    /// The cache blocks of this table's float32 products: from this CPU's cache sizes and the
    /// tier's panel width, or as `TRANSFORMER_ENCODER_FP32_BLOCKS` forces them (`KCxMC`; a bad
    /// value makes [`Kernels::best`] and [`Kernels::for_isa`] fail, naming it).
    ///
    /// ```
    /// use transformer_encoder_kernels::{Isa, Kernels};
    /// let b = Kernels::for_isa(Isa::Portable)?.fp32_blocks();
    /// assert!(b.kc >= 1 && b.mc >= 1);
    /// # Ok::<(), transformer_encoder_kernels::IsaError>(())
    /// ```
    pub fn fp32_blocks(&self) -> Blocks {
        // Checked by `best` and `for_isa`, the only ways to a table.
        Blocks::for_this_cpu(self.f32.nr).unwrap_or(Blocks::DEFAULT)
    }

    /// The weight bytes one pass of the int8 products' row tiles runs over on registers (a
    /// quarter of this CPU's L2; every row tile runs over a pass's panels before the next
    /// pass), or as `TRANSFORMER_ENCODER_INT8_PASS` forces it (KiB; a bad value makes
    /// [`Kernels::best`] and [`Kernels::for_isa`] fail, naming it).
    ///
    /// ```
    /// use transformer_encoder_kernels::{Isa, Kernels};
    /// assert!(Kernels::for_isa(Isa::Portable)?.int8_pass() >= 1024);
    /// # Ok::<(), transformer_encoder_kernels::IsaError>(())
    /// ```
    pub fn int8_pass(&self) -> usize {
        crate::blocks::int8_pass()
    }

    /// The float32 product's register tile: forced by `TRANSFORMER_ENCODER_FP32_TILE` on a tier
    /// that has it (a name no tier here has makes [`Kernels::best`] and [`Kernels::for_isa`]
    /// fail, naming it), else the tier's first. Intel's CPUs took the taller AVX-512 tile
    /// (12 x 32) until a full tile fetched its weights ahead inside its loop: then, on an Intel
    /// Xeon (AVX-512 VNNI, AMX hidden; `latency --precision fp32`, one build with the tile
    /// forced alternately, 3 rounds, median ms), 8 x 32 ran the 12-layer BERT-base query
    /// (16 rows: two full tiles, where 12 x 32 makes two of 8 that fetch at their start) in
    /// 35.7 against 49.9, the 6-layer MiniLM query 3.07 against 3.87, BERT-base seq 128 on one
    /// thread 13.58 against 13.82, seq 512 on two 31.2 against 33.1, MiniLM seq 128 on two 1.93
    /// against 1.95.
    fn f32_product(&self) -> &ProductKernel {
        let find = |t: Tile| self.f32_tiles.iter().find(|k| (k.mr, k.nr) == t);
        if let Ok(Some(t)) = crate::blocks::forced_tile()
            && let Some(k) = find(t)
        {
            return k;
        }
        &self.f32
    }

    /// The float32 register tiles this table has (`rows x columns`), the first its default.
    ///
    /// ```
    /// use transformer_encoder_kernels::{Isa, Kernels};
    /// let k = Kernels::for_isa(Isa::Portable)?;
    /// assert_eq!(k.fp32_tiles()[0], k.tile(transformer_encoder_kernels::Precision::F32));
    /// # Ok::<(), transformer_encoder_kernels::IsaError>(())
    /// ```
    pub fn fp32_tiles(&self) -> Vec<Tile> {
        self.f32_tiles.iter().map(|k| (k.mr, k.nr)).collect()
    }

    fn attention_tiles_from(&self) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        return self.attn_bf16.map(|_| crate::ops::tile_attention::MIN_KEYS);
        #[cfg(not(target_arch = "x86_64"))]
        None
    }
}

/// The blocking choices the environment forces, checked: float32 cache blocks that parse, a
/// float32 register tile that some tier of this CPU has, an int8 pass that parses.
fn forced_choices() -> Result<(), IsaError> {
    Blocks::for_this_cpu(1).map_err(IsaError::Blocks)?;
    crate::blocks::forced_pass().map_err(IsaError::Blocks)?;
    if let Some(t) = crate::blocks::forced_tile().map_err(IsaError::Blocks)? {
        let here = Isa::available()
            .into_iter()
            .any(|i| Kernels::table(i).fp32_tiles().contains(&t));
        if !here {
            return Err(IsaError::Blocks(crate::blocks::BlocksError {
                variable: crate::blocks::FP32_TILE_ENV,
                value: format!("{}x{}", t.0, t.1),
            }));
        }
    }
    Ok(())
}

/// `TRANSFORMER_ENCODER_BF16`'s choice, read once.
fn bf16_choice() -> Result<Option<Bf16Kernel>, IsaError> {
    static CHOICE: OnceLock<Result<Option<Bf16Kernel>, IsaError>> = OnceLock::new();
    CHOICE.get_or_init(Isa::bf16_from_env).clone()
}

/// How tier `isa` runs its bf16 products: as `TRANSFORMER_ENCODER_BF16` says where it is set
/// (checked available when read; tiles only on the AMX tier), else [`Isa::bf16_kernel`].
#[cfg(target_arch = "x86_64")]
fn bf16_kernel(isa: Isa) -> Bf16Kernel {
    match bf16_choice() {
        Ok(Some(Bf16Kernel::Tiles)) if isa != Isa::Avx512Amx => Bf16Kernel::Widen,
        Ok(Some(forced)) => forced,
        _ => isa.bf16_kernel(),
    }
}

/// `v` grown to at least `n` values; its first `n`.
pub(super) fn grow_f32(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// Part `i` of `0..total` split into `parts` nearly equal contiguous ranges.
pub(super) fn split(total: usize, parts: usize, i: usize) -> (usize, usize) {
    (total * i / parts, total * (i + 1) / parts)
}

#[cold]
pub(super) fn overflow(what: &str) -> KernelError {
    KernelError {
        message: format!("`{what}` size overflows usize"),
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
