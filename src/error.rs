//! The crate's error type: every bad input becomes one of these, never a panic.

use std::fmt;
use transformer_encoder_kernels::{IsaError, KernelError};

/// Everything that can go wrong, with the argument, the expected and the actual value.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A configuration argument out of range (SPEC section 1).
    Config {
        /// The argument.
        argument: String,
        /// What was expected and what was given.
        message: String,
    },
    /// An input, mask, output or workspace of the wrong rank or shape.
    Shape {
        /// The argument.
        argument: String,
        /// The expected shape or size.
        expected: String,
        /// The actual shape or size.
        actual: String,
    },
    /// A weight tensor that is missing, extra, mis-shaped or of an unusable dtype.
    Weights {
        /// The tensor's name.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// A file or buffer that cannot be read (I/O, safetensors or JSON).
    Format {
        /// What was being read.
        what: String,
        /// Why it failed.
        message: String,
    },
    /// An instruction-set tier this CPU lacks, or an unknown tier name.
    Isa(IsaError),
    /// A kernel refused its arguments (an internal inconsistency; reported, never a panic).
    Kernel(KernelError),
}

impl Error {
    #[cold]
    pub(crate) fn config(argument: &str, message: impl Into<String>) -> Error {
        Error::Config {
            argument: argument.to_string(),
            message: message.into(),
        }
    }

    #[cold]
    pub(crate) fn shape(
        argument: &str,
        expected: impl Into<String>,
        actual: impl Into<String>,
    ) -> Error {
        Error::Shape {
            argument: argument.to_string(),
            expected: expected.into(),
            actual: actual.into(),
        }
    }

    #[cold]
    pub(crate) fn weights(name: &str, message: impl Into<String>) -> Error {
        Error::Weights {
            name: name.to_string(),
            message: message.into(),
        }
    }

    #[cold]
    pub(crate) fn format(what: &str, message: impl Into<String>) -> Error {
        Error::Format {
            what: what.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { argument, message } => {
                write!(f, "invalid `{argument}`: expected {message}")
            }
            Error::Shape {
                argument,
                expected,
                actual,
            } => write!(
                f,
                "`{argument}` has the wrong shape: expected {expected}, got {actual}"
            ),
            Error::Weights { name, message } => write!(f, "weight `{name}`: {message}"),
            Error::Format { what, message } => write!(f, "cannot read {what}: {message}"),
            Error::Isa(e) => write!(f, "{e}"),
            Error::Kernel(e) => write!(f, "kernel error: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<IsaError> for Error {
    fn from(e: IsaError) -> Error {
        Error::Isa(e)
    }
}

impl From<KernelError> for Error {
    fn from(e: KernelError) -> Error {
        Error::Kernel(e)
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Format a shape as `[a, b, c]`.
pub(crate) fn dims(d: &[usize]) -> String {
    let parts: Vec<String> = d.iter().map(|x| x.to_string()).collect();
    format!("[{}]", parts.join(", "))
}
