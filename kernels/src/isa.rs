//! Instruction-set tiers, detected once, and the `TRANSFORMER_ENCODER_ISA` override.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// The environment variable that forces a tier: `avx512`, `avx2` or `portable`.
pub const ISA_ENV: &str = "TRANSFORMER_ENCODER_ISA";

/// An instruction-set tier. Every kernel exists on every tier.
///
/// ```
/// use transformer_encoder_kernels::Isa;
/// // The portable tier runs everywhere.
/// assert!(Isa::Portable.is_available());
/// assert!(Isa::detect().is_available());
/// assert_eq!("avx2".parse::<Isa>().unwrap(), Isa::Avx2);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Portable code (`wide` vectors; SSE2 on x86-64, NEON on aarch64).
    Portable,
    /// AVX2 with FMA (x86-64).
    Avx2,
    /// AVX-512 F/BW/DQ/VL (x86-64).
    Avx512,
}

impl Isa {
    /// All tiers, best last.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    /// The tier's name as the environment variable spells it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Does this CPU have the features the tier needs? (Cached by std after the first call.)
    pub fn is_available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512dq")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The best tier this CPU has, ignoring the environment.
    pub fn best_available() -> Isa {
        *Isa::ALL
            .iter()
            .rev()
            .find(|i| i.is_available())
            .unwrap_or(&Isa::Portable)
    }

    /// The tier to use by default: `TRANSFORMER_ENCODER_ISA` if set (read once), else the best
    /// available. An invalid or unavailable forced tier is reported by [`Isa::from_env`]; here
    /// it falls back to the best available tier so that `detect` never fails.
    pub fn detect() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| match Isa::from_env() {
            Ok(Some(isa)) => isa,
            _ => Isa::best_available(),
        })
    }

    /// The tier forced by `TRANSFORMER_ENCODER_ISA`, if any. Errors if the variable names no
    /// tier, or a tier this CPU lacks.
    pub fn from_env() -> Result<Option<Isa>, IsaError> {
        match std::env::var(ISA_ENV) {
            Err(_) => Ok(None),
            Ok(v) if v.trim().is_empty() => Ok(None),
            Ok(v) => {
                let isa: Isa = v.trim().parse()?;
                isa.require()?;
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
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = IsaError;
    fn from_str(s: &str) -> Result<Isa, IsaError> {
        match s.to_ascii_lowercase().as_str() {
            "portable" | "scalar" | "generic" => Ok(Isa::Portable),
            "avx2" | "avx2fma" | "fma" => Ok(Isa::Avx2),
            "avx512" | "avx-512" => Ok(Isa::Avx512),
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
}

impl fmt::Display for IsaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IsaError::Unknown(s) => write!(
                f,
                "unknown instruction set `{s}` (expected avx512, avx2 or portable)"
            ),
            IsaError::Unavailable(isa) => write!(
                f,
                "instruction set `{isa}` was requested but this CPU does not support it (best available: {})",
                Isa::best_available()
            ),
        }
    }
}

impl std::error::Error for IsaError {}
