//! The products' cache blocks, chosen from the CPU's own cache sizes.
//!
//! The float32 register tile streams a `KC x NR` slice of a weight panel from L1 while the row
//! tiles pass, and keeps an `MC x KC` block of `A` in L2 while the panels pass (see
//! `ops/gemm.rs`). Both sizes follow from the data cache sizes the CPU reports (`cpuid` leaf 4 on
//! Intel, `0x8000_0006`/`0x8000_0005` on AMD): Intel's server cores have 48 KiB of L1d and 2 MiB
//! of L2, AMD's Zen 3 32 KiB and 512 KiB, Zen 4 32 KiB and 1 MiB. `TRANSFORMER_ENCODER_FP32_BLOCKS`
//! forces a choice by name (`KCxMC`, e.g. `256x192`), for tests and benchmarks as
//! `TRANSFORMER_ENCODER_ISA` forces a tier.
//!
//! The register tile is chosen here too: each tier has one or more (`arch.rs`), the first by
//! default; `TRANSFORMER_ENCODER_FP32_TILE` forces one by name (`8x32`) on the tiers that have it.
//!
//! The int8 products on registers take two choices from here: how much of the weights one pass
//! of their row tiles runs over (a quarter of L2, `int8_pass`; `TRANSFORMER_ENCODER_INT8_PASS`
//! forces it in KiB) and how far ahead they fetch the weights (`int8_ahead`, by vendor).

use std::fmt;
use std::sync::OnceLock;

/// The environment variable that forces the float32 cache blocks (`KCxMC`, e.g. `256x192`).
pub const FP32_BLOCKS_ENV: &str = "TRANSFORMER_ENCODER_FP32_BLOCKS";

/// The environment variable that forces the float32 register tile (`ROWSxCOLUMNS`, e.g. `8x32`)
/// on the tiers that have it.
pub const FP32_TILE_ENV: &str = "TRANSFORMER_ENCODER_FP32_TILE";

/// The environment variable that forces the weight bytes one pass of the int8 products' row
/// tiles runs over (KiB, a whole number from 1 to 65,536; see
/// [`Kernels::int8_pass`](crate::Kernels::int8_pass)).
pub const INT8_PASS_ENV: &str = "TRANSFORMER_ENCODER_INT8_PASS";

/// The cache blocks of the float32 product: `kc` inner steps per block (a `kc x NR` slice of a
/// weight panel in L1), about `mc` rows per block of `A` (an `mc x kc` block in L2; up to
/// 1.5 `mc` rows rather than a remainder block), and up to
/// `a_resident` bytes of a row block's whole `A`, each panel runs all its inner blocks in turn
/// (the block in L2), beyond that the inner blocks go outermost. Every choice gives the same
/// results up to float32 rounding (the inner blocks' sums are added in `C`): the property tests
/// run the extremes.
///
/// ```
/// use transformer_encoder_kernels::Blocks;
/// let b: Blocks = "128x96".parse().unwrap();
/// assert_eq!((b.kc, b.mc), (128, 96));
/// assert_eq!(b.to_string(), "128x96");
/// // From the cache sizes: a 48 KiB L1d and a 2 MiB L2, panels of 32 columns.
/// let x = Blocks::for_caches(48 << 10, 2 << 20, 32);
/// assert_eq!((x.kc, x.mc), (256, 192));
/// assert!("0x5".parse::<Blocks>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocks {
    /// Inner steps per block.
    pub kc: usize,
    /// Rows of `A` per block (a product's rows are cut into as many blocks as `mc` goes into
    /// them to the nearest whole: up to 1.5 `mc` rows each).
    pub mc: usize,
    /// Bytes of a row block's `A` up to which each panel runs all its inner blocks at once.
    pub a_resident: usize,
}

/// The largest `kc` or `mc` a name may ask for.
const MAX_BLOCK: usize = 1 << 16;

impl Blocks {
    /// The sizes before they followed the CPU (measured on the Xeon with 48 KiB of L1d and 2 MiB
    /// of L2): also what a CPU that reports no cache sizes gets.
    pub const DEFAULT: Blocks = Blocks {
        kc: 256,
        mc: 192,
        a_resident: 512 << 10,
    };

    /// The blocks for an L1 data cache of `l1d` bytes and an L2 of `l2` bytes (per core), over
    /// weight panels of `nr` columns: the panel slice (`kc x nr`) takes two thirds of L1 (`kc` a
    /// multiple of 16, 64 to 512); a row block of `A` (`mc x kc`) a tenth of L2 (`mc` a multiple
    /// of 24, whole register tiles of 4, 6, 8 or 12 rows, 96 to 768: each weight slice is
    /// fetched once per row block, so fewer rows would stream the weights too often), the rest
    /// of L2 holding the weight panels streaming by and the output; a row block's whole `A`
    /// stays in L2 (each panel running its inner blocks at once) up to three quarters of L2, at
    /// most 512 KiB.
    ///
    /// The shares are the Xeon's measured optimum (48 KiB, 2 MiB: 256 x 192, 1-2 % faster at
    /// BERT-base seq 512 than 384 or 672 rows, or 192 inner steps, calls alternated in one
    /// process; A of 384 KiB 4 % faster kept, of 1.5 MiB 2.4 % slower); CPUs with other caches
    /// get the same shares of theirs. On Zen 3 (512 KiB of L2) A of 384 KiB kept measured faster
    /// too (BERT-base seq 128, one thread, with the even inner blocks of `ops::gemm`, settings
    /// alternated in 4 rounds: the fastest runs 23.2-23.4 ms with a quarter of L2, 22.2-22.3
    /// so).
    pub fn for_caches(l1d: usize, l2: usize, nr: usize) -> Blocks {
        let kc = (l1d * 2 / 3 / (4 * nr.max(1)) / 16 * 16).clamp(64, 512);
        let mc = (l2 / 10 / (4 * kc) / 24 * 24).clamp(96, 768);
        Blocks {
            kc,
            mc,
            a_resident: (l2 * 3 / 4).clamp(64 << 10, 512 << 10),
        }
    }

    /// The blocks for this CPU over panels of `nr` columns: forced by
    /// `TRANSFORMER_ENCODER_FP32_BLOCKS` where it is set (an error names a bad value), else from
    /// [`cache_sizes`], else [`Blocks::DEFAULT`].
    pub fn for_this_cpu(nr: usize) -> Result<Blocks, BlocksError> {
        if let Some(b) = forced()? {
            return Ok(b);
        }
        Ok(match cache_sizes() {
            Some((l1d, l2)) => Blocks::for_caches(l1d, l2, nr),
            None => Blocks::DEFAULT,
        })
    }
}

impl fmt::Display for Blocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.kc, self.mc)
    }
}

/// A float32 blocking name that cannot be used: cache blocks that are not `KCxMC` with both
/// from 1 to 65,536, or a register tile that is not `ROWSxCOLUMNS` or that no tier of this CPU
/// has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlocksError {
    /// The environment variable that held it.
    pub variable: &'static str,
    /// The rejected name.
    pub value: String,
}

impl fmt::Display for BlocksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.variable == INT8_PASS_ENV {
            return write!(
                f,
                "{INT8_PASS_ENV}={}: expected KiB of weights per pass of the int8 row tiles, a \
                 whole number from 1 to {MAX_BLOCK}",
                self.value
            );
        }
        if self.variable == FP32_TILE_ENV {
            return write!(
                f,
                "{FP32_TILE_ENV}={}: expected ROWSxCOLUMNS, a float32 register tile of a tier \
                 this CPU has (portable 4x8 or 8x8, avx2 6x16, avx512 8x32 or 12x32)",
                self.value
            );
        }
        write!(
            f,
            "{FP32_BLOCKS_ENV}={}: expected KCxMC, two whole numbers from 1 to {MAX_BLOCK} \
             (inner steps and rows per block, e.g. 256x192)",
            self.value
        )
    }
}

impl std::error::Error for BlocksError {}

impl std::str::FromStr for Blocks {
    type Err = BlocksError;

    fn from_str(s: &str) -> Result<Blocks, BlocksError> {
        let (kc, mc) = pair(s).ok_or_else(|| BlocksError {
            variable: FP32_BLOCKS_ENV,
            value: s.to_string(),
        })?;
        Ok(Blocks {
            kc,
            mc,
            ..Blocks::DEFAULT
        })
    }
}

/// `AxB` (or `AXB`): two whole numbers from 1 to [`MAX_BLOCK`].
fn pair(s: &str) -> Option<(usize, usize)> {
    let (a, b) = s.trim().split_once(['x', 'X'])?;
    let num = |v: &str| {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_BLOCK).contains(n))
    };
    Some((num(a)?, num(b)?))
}

/// The environment variable `name` as a [`pair`] (None: unset or empty); any other value is an
/// error naming the variable.
fn env_pair(name: &'static str) -> Result<Option<(usize, usize)>, BlocksError> {
    env_parsed(name, pair)
}

/// The environment variable `name` read by `parse` (None: unset or empty); a value `parse`
/// refuses is an error naming the variable.
fn env_parsed<T>(
    name: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, BlocksError> {
    let v = match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => return Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => v.to_string_lossy().into_owned(),
        Ok(v) if v.trim().is_empty() => return Ok(None),
        Ok(v) => v,
    };
    match parse(&v) {
        Some(p) => Ok(Some(p)),
        None => Err(BlocksError {
            variable: name,
            value: v,
        }),
    }
}

/// `TRANSFORMER_ENCODER_INT8_PASS`' choice in bytes, read once (None: unset or empty); a value
/// that is not a whole number of KiB from 1 to [`MAX_BLOCK`] is an error naming the variable.
pub(crate) fn forced_pass() -> Result<Option<usize>, BlocksError> {
    static CHOICE: OnceLock<Result<Option<usize>, BlocksError>> = OnceLock::new();
    CHOICE
        .get_or_init(|| {
            env_parsed(INT8_PASS_ENV, |v| {
                let kib = v.trim().parse::<usize>().ok()?;
                (1..=MAX_BLOCK).contains(&kib).then_some(kib << 10)
            })
        })
        .clone()
}

/// The weight bytes one pass of an int8 product's row tiles runs over (on registers, rows
/// outer): a quarter of L2 (its panels are read from memory by the first row tile and from L2 by
/// the others; whole panels, at least one), or what `TRANSFORMER_ENCODER_INT8_PASS` forces.
/// Measured on an Intel Xeon (AVX-512 VNNI, L2 2 MiB, AMX hidden; `latency --precision int8`,
/// BERT-base seq 128 on one thread, one build, settings alternated in 2-3 rounds, median ms):
/// every panel in one pass (the weights, 1.8-2.4 MB a product, streamed from L3 by each of the
/// 16 row tiles) 4.57-4.69; passes of 128 KiB 4.22-4.27, 256 KiB 4.20-4.23, 512 KiB 4.19-4.22,
/// 1 MiB 4.19-4.23, 1.5 MiB 4.25-4.26.
pub(crate) fn int8_pass() -> usize {
    if let Ok(Some(bytes)) = forced_pass() {
        return bytes;
    }
    cache_sizes().map_or(DEFAULT_PASS, |(_, l2)| (l2 / 4).max(64 << 10))
}

/// The int8 pass where the CPU reports no cache sizes (a quarter of a 1 MiB L2).
const DEFAULT_PASS: usize = 256 << 10;

/// A float32 register tile, `rows x cols` (`cols` the panel width of the tier).
pub type Tile = (usize, usize);

/// `TRANSFORMER_ENCODER_FP32_TILE`'s choice, read once (None: unset or empty); a value that is
/// not `ROWSxCOLUMNS` is an error naming the variable.
pub(crate) fn forced_tile() -> Result<Option<Tile>, BlocksError> {
    static CHOICE: OnceLock<Result<Option<Tile>, BlocksError>> = OnceLock::new();
    CHOICE.get_or_init(|| env_pair(FP32_TILE_ENV)).clone()
}

/// Whether the CPU is Intel's (`cpuid` leaf 0): the int8 products fetch their weights ahead
/// there ([`int8_ahead`]).
pub(crate) fn intel() -> bool {
    // Read once: `cpuid` serialises the core, and leaves a virtual machine for the hypervisor.
    static INTEL: OnceLock<bool> = OnceLock::new();
    *INTEL.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        {
            let r = std::arch::x86_64::__cpuid_count(0, 0);
            (r.ebx, r.edx, r.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e)
        }
        #[cfg(any(not(target_arch = "x86_64"), miri))]
        false
    })
}

/// How far ahead (bytes of a weight panel's stream) the int8 products on registers fetch the
/// weights: 4 KiB on Intel's CPUs, none elsewhere. Measured on an Intel Xeon (AVX-512 VNNI, AMX
/// hidden; `latency --precision int8`, one thread, settings alternated in 3-4 rounds): 12
/// BERT-base layers at 16 rows (85 MB of weights, in L3) 13.5 -> 9.8 ms on `avx512vnni` (2 and
/// 8 KiB ahead: 10.0 and 11.4), 18.9 -> 14.5 on `avx2vnni`, 33.5 -> 29.6 on `avx512`, 32.6 ->
/// 25.7 on `avx2`; BERT-base seq 128 4-9 % faster on each. On an AMD EPYC Zen 3 (`avx2`) 4 and
/// 16 KiB ahead measured unchanged or 3-5 % slower (2026-12-07), so AMD's CPUs fetch nothing.
pub(crate) fn int8_ahead() -> usize {
    if intel() { 4096 } else { 0 }
}

/// `TRANSFORMER_ENCODER_FP32_BLOCKS`' choice, read once (None: unset or empty).
fn forced() -> Result<Option<Blocks>, BlocksError> {
    static CHOICE: OnceLock<Result<Option<Blocks>, BlocksError>> = OnceLock::new();
    CHOICE
        .get_or_init(|| {
            let p = env_pair(FP32_BLOCKS_ENV)?;
            Ok(p.map(|(kc, mc)| Blocks {
                kc,
                mc,
                ..Blocks::DEFAULT
            }))
        })
        .clone()
}

/// The per-core L1 data cache and L2 sizes in bytes, as `cpuid` reports them (None where it
/// does not: another architecture, or a hypervisor hiding the leaves).
///
/// ```
/// if let Some((l1d, l2)) = transformer_encoder_kernels::blocks::cache_sizes() {
///     assert!(l1d >= 1024 && l2 >= l1d);
/// }
/// ```
pub fn cache_sizes() -> Option<(usize, usize)> {
    static SIZES: OnceLock<Option<(usize, usize)>> = OnceLock::new();
    *SIZES.get_or_init(read_cache_sizes)
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
fn read_cache_sizes() -> Option<(usize, usize)> {
    use std::arch::x86_64::__cpuid_count;
    let max_leaf = __cpuid_count(0, 0).eax;
    let (mut l1d, mut l2) = (0, 0);
    // Leaf 4 (Intel's deterministic cache parameters): one subleaf per cache, type 0 ends.
    if max_leaf >= 4 {
        for sub in 0..16 {
            let r = __cpuid_count(4, sub);
            let kind = r.eax & 0x1f;
            if kind == 0 {
                break;
            }
            let level = (r.eax >> 5) & 0x7;
            let ways = ((r.ebx >> 22) & 0x3ff) as usize + 1;
            let parts = ((r.ebx >> 12) & 0x3ff) as usize + 1;
            let line = (r.ebx & 0xfff) as usize + 1;
            let sets = r.ecx as usize + 1;
            let size = ways * parts * line * sets;
            // Type 1 is data, 3 unified.
            match (level, kind) {
                (1, 1) => l1d = size,
                (2, 1) | (2, 3) => l2 = size,
                _ => {}
            }
        }
    }
    // AMD: L1d in KiB in 0x8000_0005 ECX[31:24], L2 in KiB in 0x8000_0006 ECX[31:16].
    if l1d == 0 || l2 == 0 {
        let max_ext = __cpuid_count(0x8000_0000, 0).eax;
        if max_ext >= 0x8000_0006 {
            l1d = ((__cpuid_count(0x8000_0005, 0).ecx >> 24) as usize) << 10;
            l2 = ((__cpuid_count(0x8000_0006, 0).ecx >> 16) as usize) << 10;
        }
    }
    (l1d >= 1024 && l2 >= l1d).then_some((l1d, l2))
}

/// Elsewhere (and under Miri, which cannot run `cpuid`): unknown.
#[cfg(any(not(target_arch = "x86_64"), miri))]
fn read_cache_sizes() -> Option<(usize, usize)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_follow_the_caches() {
        // Intel server cores (48 KiB, 2 MiB), Zen 3 (32 KiB, 512 KiB), Zen 4 (32 KiB, 1 MiB).
        let b = |l1: usize, l2: usize, nr: usize| {
            let x = Blocks::for_caches(l1 << 10, l2 << 10, nr);
            (x.kc, x.mc, x.a_resident >> 10)
        };
        assert_eq!(b(48, 2048, 32), (256, 192, 512));
        assert_eq!(b(32, 512, 32), (160, 96, 384));
        assert_eq!(b(32, 1024, 32), (160, 144, 512));
        assert_eq!(b(32, 512, 16), (336, 96, 384));
        // Tiny or absurd caches stay within the bounds.
        assert_eq!(b(1, 1, 32), (64, 96, 64));
        assert_eq!(b(1 << 20, 1 << 30, 4), (512, 768, 512));
    }

    #[test]
    fn names_parse_and_bad_ones_are_named() {
        assert_eq!(
            " 16X8 ".parse::<Blocks>().map(|b| (b.kc, b.mc)),
            Ok((16, 8))
        );
        for bad in [
            "", "256", "x", "0x8", "8x0", "8x-1", "99999x8", "ax8", "8x8x8",
        ] {
            let e = bad.parse::<Blocks>().unwrap_err();
            assert_eq!(e.value, bad);
            assert!(e.to_string().contains(FP32_BLOCKS_ENV), "{e}");
        }
    }
}
