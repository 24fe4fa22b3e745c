//! Instruction-set tiers, detected once, and the `TRANSFORMER_ENCODER_ISA` override.
//!
//! A tier names everything the kernels of one table may use: the float vector width and, for the
//! int8 products, the dot-product instruction. The int8 dot products are a CPU feature of their
//! own (AVX512-VNNI on Zen 4 and Ice Lake or later, AVX-VNNI on Alder Lake or later and Zen 5;
//! none on Zen 3), so they are tiers of their own: `avx512vnni` is `avx512` plus `vpdpbusd` on
//! zmm registers, `avx2vnni` is `avx2` plus its VEX form on ymm registers. `avx512amx` is
//! `avx512vnni` with the int8 products on AMX tiles (Sapphire Rapids and later), available only
//! where the OS grants the tile state (Linux: `arch_prctl(ARCH_REQ_XCOMP_PERM)`, requested once).

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// The environment variable that forces a tier: `avx512amx`, `avx512vnni`, `avx512`,
/// `avx2vnni`, `avx2` or `portable`.
pub const ISA_ENV: &str = "TRANSFORMER_ENCODER_ISA";

/// The environment variable that chooses how the AVX-512 tiers run bf16 products ([`Bf16Kernel`]):
/// `tiles` (AMX-BF16's `tdpbf16ps`, on the `avx512amx` tier), `dot` (AVX512-BF16's `vdpbf16ps`)
/// or `widen` (pairs widened to float32); naming one the CPU lacks is an error. A tier without
/// the named kernel widens. Unset: see [`Isa::bf16_kernel`].
pub const BF16_ENV: &str = "TRANSFORMER_ENCODER_BF16";

/// How a tier's bf16 products run.
///
/// ```
/// use transformer_encoder_kernels::Bf16Kernel;
/// assert_eq!("tiles".parse::<Bf16Kernel>().unwrap(), Bf16Kernel::Tiles);
/// assert_eq!(Bf16Kernel::Widen.name(), "widen");
/// assert!("fast".parse::<Bf16Kernel>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bf16Kernel {
    /// bf16 pairs widened to float32 in the kernel (float32 arithmetic, half the weight bytes):
    /// every tier.
    Widen,
    /// AVX512-BF16's `vdpbf16ps` (AMD Zen 4 and later, Intel Cooper Lake and later).
    Dot,
    /// AMX-BF16's `tdpbf16ps` on tiles (Intel Sapphire Rapids and later; the `avx512amx` tier).
    Tiles,
}

impl Bf16Kernel {
    /// `widen`, `dot` or `tiles`, as [`BF16_ENV`] spells it.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Widen => "widen",
            Bf16Kernel::Dot => "dot",
            Bf16Kernel::Tiles => "tiles",
        }
    }

    /// Does this CPU have the kernel's instructions (and, for tiles, the OS' grant)?
    pub fn is_available(self) -> bool {
        match self {
            Bf16Kernel::Widen => true,
            Bf16Kernel::Dot => has_bf16_dot(),
            Bf16Kernel::Tiles => has_amx_bf16(),
        }
    }
}

impl std::str::FromStr for Bf16Kernel {
    type Err = IsaError;
    fn from_str(s: &str) -> Result<Bf16Kernel, IsaError> {
        match s.trim() {
            "widen" => Ok(Bf16Kernel::Widen),
            "dot" => Ok(Bf16Kernel::Dot),
            "tiles" => Ok(Bf16Kernel::Tiles),
            _ => Err(IsaError::Bf16Env {
                value: s.to_string(),
            }),
        }
    }
}

/// An instruction-set tier. Every kernel exists on every tier.
///
/// ```
/// use transformer_encoder_kernels::Isa;
/// // The portable tier runs everywhere.
/// assert!(Isa::Portable.is_available());
/// assert!(Isa::best_available().is_available());
/// assert_eq!("avx2".parse::<Isa>().unwrap(), Isa::Avx2);
/// assert_eq!(Isa::Avx512Vnni.float_tier(), Isa::Avx512);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Portable code (`wide` vectors; SSE2 on x86-64, NEON on aarch64).
    Portable,
    /// AVX2 with FMA (x86-64); int8 products through `vpmaddubsw` (exact: see the int8 module).
    Avx2,
    /// AVX2 with FMA and AVX-VNNI (`vpdpbusd` on ymm registers).
    Avx2Vnni,
    /// AVX-512 F/BW/DQ/VL (x86-64); int8 products through `vpmaddubsw` on zmm registers.
    Avx512,
    /// AVX-512 F/BW/DQ/VL with AVX512-VNNI (`vpdpbusd` on zmm registers).
    Avx512Vnni,
    /// `Avx512Vnni` with the int8 products on AMX tiles (`tdpbssd`).
    Avx512Amx,
}

/// Where each tier has passed the whole test suite on real hardware: the tier, the CPU, the
/// first date. A tier enters this record only after such a run (the README's table of tiers says
/// the same); [`Isa::verified`] reads it, and only verified tiers are chosen automatically.
pub const VERIFIED_ON: &[(Isa, &str, &str)] = &[
    (
        Isa::Avx512Amx,
        "Intel Xeon with AVX-512, VNNI and AMX",
        "2026-11-26",
    ),
    (
        Isa::Avx512Vnni,
        "Intel Xeon with AVX-512, VNNI and AMX",
        "2026-11-26",
    ),
    (Isa::Avx512Vnni, "AMD EPYC Zen 4", "2026-12-03"),
    (
        Isa::Avx512,
        "Intel Xeon with AVX-512, VNNI and AMX",
        "2026-11-26",
    ),
    (Isa::Avx512, "AMD EPYC Zen 4", "2026-12-03"),
    (
        Isa::Avx2Vnni,
        "Intel Xeon with AVX-512, VNNI and AMX",
        "2026-11-26",
    ),
    (Isa::Avx2, "AMD EPYC Zen 3", "2026-11-24"),
    (
        Isa::Avx2,
        "Intel Xeon with AVX-512, VNNI and AMX",
        "2026-11-26",
    ),
    (Isa::Portable, "AMD EPYC Zen 3", "2026-11-24"),
    (Isa::Portable, "aarch64 under qemu-user", "2026-11-26"),
];

impl Isa {
    /// All tiers, in order of preference, best last.
    pub const ALL: [Isa; 6] = [
        Isa::Portable,
        Isa::Avx2,
        Isa::Avx2Vnni,
        Isa::Avx512,
        Isa::Avx512Vnni,
        Isa::Avx512Amx,
    ];

    /// The tier's name as the environment variable spells it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx2Vnni => "avx2vnni",
            Isa::Avx512 => "avx512",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Avx512Amx => "avx512amx",
        }
    }

    /// The tier whose float kernels this tier runs (the VNNI tiers add int8 instructions only).
    pub fn float_tier(self) -> Isa {
        match self {
            Isa::Avx2Vnni => Isa::Avx2,
            Isa::Avx512Vnni | Isa::Avx512Amx => Isa::Avx512,
            other => other,
        }
    }

    /// Has this tier passed the whole test suite on real hardware ([`VERIFIED_ON`], the record
    /// dispatch consults)? Only such tiers are chosen automatically; the others can still be
    /// forced.
    ///
    /// ```
    /// use transformer_encoder_kernels::Isa;
    /// assert!(Isa::Portable.verified());
    /// ```
    pub fn verified(self) -> bool {
        VERIFIED_ON.iter().any(|&(isa, _, _)| isa == self)
    }

    /// The fastest bf16 kernel this tier has passed the whole test suite with on real hardware:
    /// the record [`Isa::bf16_kernel`] consults. `avx512amx` with tiles (Intel Xeon with AMX,
    /// 2026-12-06), `avx512vnni` with `vdpbf16ps` (AMD EPYC Zen 4, 2026-12-03); every tier
    /// widened.
    pub fn bf16_verified(self) -> Bf16Kernel {
        match self {
            Isa::Avx512Amx => Bf16Kernel::Tiles,
            Isa::Avx512Vnni => Bf16Kernel::Dot,
            _ => Bf16Kernel::Widen,
        }
    }

    /// How this tier runs bf16 products on this CPU unless [`BF16_ENV`] says otherwise: tiles
    /// where it has them and has passed with them; `vdpbf16ps` where it has passed with it and
    /// the CPU runs it faster than widened pairs (AMD: twice its float32 FMA rate on Zen 4;
    /// Intel's runs at half its FMA rate, measured on Xeons with AVX512-BF16, so widening wins
    /// there); else widened.
    ///
    /// ```
    /// use transformer_encoder_kernels::{Bf16Kernel, Isa};
    /// assert_eq!(Isa::Portable.bf16_kernel(), Bf16Kernel::Widen);
    /// ```
    pub fn bf16_kernel(self) -> Bf16Kernel {
        match self.bf16_verified() {
            Bf16Kernel::Tiles if has_amx_bf16() => Bf16Kernel::Tiles,
            Bf16Kernel::Tiles | Bf16Kernel::Dot if has_bf16_dot() && dot_beats_widen() => {
                Bf16Kernel::Dot
            }
            _ => Bf16Kernel::Widen,
        }
    }

    /// The choice [`BF16_ENV`] makes, `None` if unset or empty; an error for another value, or
    /// for a kernel this CPU lacks.
    ///
    /// ```
    /// use transformer_encoder_kernels::Isa;
    /// // Unset in the doc tests: the tiers decide.
    /// assert_eq!(Isa::bf16_from_env(), Ok(None));
    /// ```
    pub fn bf16_from_env() -> Result<Option<Bf16Kernel>, IsaError> {
        let v = match std::env::var(BF16_ENV) {
            Err(std::env::VarError::NotPresent) => return Ok(None),
            Err(std::env::VarError::NotUnicode(v)) => v.to_string_lossy().into_owned(),
            Ok(v) => v,
        };
        if v.trim().is_empty() {
            return Ok(None);
        }
        match v.parse::<Bf16Kernel>() {
            Ok(k) if k.is_available() => Ok(Some(k)),
            _ => Err(IsaError::Bf16Env { value: v }),
        }
    }

    /// Does this CPU have the features the tier needs? (Cached by std after the first call.)
    pub fn is_available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 =
                || std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            let avx512 = || {
                avx2()
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512dq")
                    && std::is_x86_feature_detected!("avx512vl")
            };
            match self {
                Isa::Portable => true,
                Isa::Avx2 => avx2(),
                Isa::Avx2Vnni => avx2() && std::is_x86_feature_detected!("avxvnni"),
                Isa::Avx512 => avx512(),
                Isa::Avx512Vnni => avx512() && std::is_x86_feature_detected!("avx512vnni"),
                Isa::Avx512Amx => {
                    avx512() && std::is_x86_feature_detected!("avx512vnni") && amx_int8_granted()
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }

    /// Every tier this CPU has, best first.
    pub fn available() -> Vec<Isa> {
        Isa::ALL
            .iter()
            .rev()
            .copied()
            .filter(|i| i.is_available())
            .collect()
    }

    /// The best verified tier this CPU has, ignoring the environment.
    pub fn best_available() -> Isa {
        *Isa::ALL
            .iter()
            .rev()
            .find(|i| i.is_available() && i.verified())
            .unwrap_or(&Isa::Portable)
    }

    /// The tier to use by default: the one `TRANSFORMER_ENCODER_ISA` forces if it is set (read
    /// once), else the best available. An unknown or unavailable forced tier is an error that
    /// names the variable and the tiers this CPU has.
    pub fn detect() -> Result<Isa, IsaError> {
        static DETECTED: OnceLock<Result<Isa, IsaError>> = OnceLock::new();
        DETECTED
            .get_or_init(|| Ok(Isa::from_env()?.unwrap_or_else(Isa::best_available)))
            .clone()
    }

    /// The tier forced by `TRANSFORMER_ENCODER_ISA`, if any (read on every call). Errors if the
    /// variable names no tier, or a tier this CPU lacks.
    pub fn from_env() -> Result<Option<Isa>, IsaError> {
        match std::env::var(ISA_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(v)) => Err(IsaError::Env {
                value: v.to_string_lossy().into_owned(),
                cause: Box::new(IsaError::Unknown(v.to_string_lossy().into_owned())),
            }),
            Ok(v) if v.trim().is_empty() => Ok(None),
            Ok(v) => {
                let env = |cause: IsaError| IsaError::Env {
                    value: v.clone(),
                    cause: Box::new(cause),
                };
                let isa: Isa = v.trim().parse().map_err(env)?;
                isa.require().map_err(env)?;
                Ok(Some(isa))
            }
        }
    }

    /// `Ok(self)` if this CPU has the tier, else an error naming it.
    pub fn require(self) -> Result<Isa, IsaError> {
        if self.is_available() {
            Ok(self)
        } else {
            Err(IsaError::Unavailable(self))
        }
    }

    /// The tiers listed in `var` (comma-separated), each of which must be available: how the
    /// test suites make a missing tier fail instead of being skipped
    /// (`TRANSFORMER_ENCODER_REQUIRE_ISA=avx512vnni,avx2,portable`). Unset or empty: none.
    pub fn required_by(var: &str) -> Result<Vec<Isa>, IsaError> {
        let Ok(list) = std::env::var(var) else {
            return Ok(Vec::new());
        };
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<Isa>().and_then(Isa::require))
            .collect()
    }

    /// The tiers a test suite or benchmark runs: the one `TRANSFORMER_ENCODER_ISA` forces, else
    /// every available tier; the tiers `TRANSFORMER_ENCODER_REQUIRE_ISA` lists must be available
    /// (an error otherwise, so a required tier never passes by being skipped).
    pub fn under_test() -> Result<Vec<Isa>, IsaError> {
        Isa::required_by("TRANSFORMER_ENCODER_REQUIRE_ISA")?;
        Ok(match Isa::from_env()? {
            Some(isa) => vec![isa],
            None => Isa::available(),
        })
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = IsaError;
    fn from_str(s: &str) -> Result<Isa, IsaError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" | "scalar" | "generic" => Ok(Isa::Portable),
            "avx2" | "avx2fma" | "fma" => Ok(Isa::Avx2),
            "avx2vnni" | "avxvnni" | "avx-vnni" | "avx2-vnni" => Ok(Isa::Avx2Vnni),
            "avx512" | "avx-512" => Ok(Isa::Avx512),
            "avx512vnni" | "avx512-vnni" | "avx-512-vnni" => Ok(Isa::Avx512Vnni),
            "avx512amx" | "amx" | "avx512-amx" => Ok(Isa::Avx512Amx),
            _ => Err(IsaError::Unknown(s.to_string())),
        }
    }
}

/// A tier that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IsaError {
    /// The name is not a tier.
    Unknown(String),
    /// The CPU lacks the tier's features.
    Unavailable(Isa),
    /// `TRANSFORMER_ENCODER_BF16` holds `value`: not `tiles`, `dot` or `widen`, or a kernel
    /// this CPU lacks.
    Bf16Env {
        /// The variable's value.
        value: String,
    },
    /// `TRANSFORMER_ENCODER_FP32_BLOCKS` holds a value that is not `KCxMC`.
    Blocks(crate::blocks::BlocksError),
    /// `TRANSFORMER_ENCODER_ISA` holds `value`, which cannot be used (`cause` says why).
    Env {
        /// The variable's value.
        value: String,
        /// Why it cannot be used.
        cause: Box<IsaError>,
    },
}

fn tiers_here() -> String {
    let v: Vec<&str> = Isa::available().iter().map(|i| i.name()).collect();
    v.join(", ")
}

impl fmt::Display for IsaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IsaError::Unknown(s) => write!(
                f,
                "unknown instruction set `{s}` (the tiers are avx512amx, avx512vnni, avx512, avx2vnni, avx2 and portable; this CPU has {})",
                tiers_here()
            ),
            IsaError::Unavailable(isa) => write!(
                f,
                "instruction set `{isa}` was requested but this CPU does not support it (this CPU has {})",
                tiers_here()
            ),
            IsaError::Env { value, cause } => write!(f, "{ISA_ENV}={value}: {cause}"),
            IsaError::Blocks(e) => write!(f, "{e}"),
            IsaError::Bf16Env { value } => {
                let has = |k: Bf16Kernel| if k.is_available() { "has" } else { "lacks" };
                write!(
                    f,
                    "{BF16_ENV}={value}: `tiles` (AMX-BF16's tdpbf16ps; this CPU {} it), `dot` \
                     (AVX512-BF16's vdpbf16ps; this CPU {} it) or `widen`",
                    has(Bf16Kernel::Tiles),
                    has(Bf16Kernel::Dot)
                )
            }
        }
    }
}

impl std::error::Error for IsaError {}

/// Does the CPU have AVX512-BF16 (`vdpbf16ps`) beside AVX-512?
pub(crate) fn has_bf16_dot() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        Isa::Avx512.is_available() && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Does the CPU run AVX512-BF16's `vdpbf16ps` faster than float32 FMAs on widened pairs? AMD's
/// do (Zen 4: 232 against 115 GFLOP/s per core, `tools/peak_flops.c`); Intel's run it at half
/// their FMA rate (Xeon with AMX: 72-86 against 138-175).
fn dot_beats_widen() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        let v = __cpuid(0);
        // "AuthenticAMD" in ebx, edx, ecx.
        (v.ebx, v.edx, v.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Does the CPU have AMX-BF16 beside the `avx512amx` tier (its tiles granted by the OS)?
pub(crate) fn has_amx_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // Leaf 7 only after checking the maximum leaf; EDX bit 22 is AMX-BF16.
        Isa::Avx512Amx.is_available()
            && __cpuid(0).eax >= 7
            && (__cpuid_count(7, 0).edx >> 22) & 1 == 1
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Does the CPU have AMX-TILE and AMX-INT8, does the OS enable the tile state in XCR0, and has it
/// granted this process the tile data (Linux `arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`,
/// requested once)? Without all of these a tile instruction would fault.
#[cfg(target_arch = "x86_64")]
fn amx_int8_granted() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| {
        use std::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};
        // Leaf 7 only after checking the maximum leaf.
        let leaf7 = __cpuid(0).eax >= 7 && (__cpuid_count(7, 0).edx >> 24) & 3 == 3;
        let osxsave = (__cpuid(1).ecx >> 27) & 1 == 1;
        if !leaf7 || !osxsave {
            return false;
        }
        // SAFETY: xgetbv is available when the OS set OSXSAVE (checked above).
        let xcr0 = unsafe { _xgetbv(0) };
        if (xcr0 >> 17) & 3 != 3 {
            return false;
        }
        request_tile_data()
    })
}

/// Linux: ask for the AMX tile data state (`ARCH_REQ_XCOMP_PERM` = 0x1023, `XTILEDATA` = 18).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_data() -> bool {
    let ret: isize;
    // SAFETY: the arch_prctl system call (158 on x86-64) with these arguments only changes the
    // process' permission for the AMX state; it reads and writes no memory of ours.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") 158isize => ret,
            in("rdi") 0x1023usize,
            in("rsi") 18usize,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret == 0
}

/// Elsewhere the tiles are not used (the grant is OS-specific).
#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_data() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_picks_only_recorded_tiers() {
        // The automatic choice is a tier of the record, whatever this CPU has.
        assert!(Isa::best_available().verified());
        for isa in Isa::ALL {
            let recorded = VERIFIED_ON.iter().filter(|r| r.0 == isa).count();
            assert_eq!(isa.verified(), recorded > 0, "{isa}");
        }
    }
}
