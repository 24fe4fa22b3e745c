//! Kernels for `transformer-encoder`: the matrix products, masked softmax attention, LayerNorm and
//! activations of KerasHub's `TransformerEncoder`, plus the naive float64 reference they are
//! tested against.
//!
//! # Portability and performance
//!
//! Every kernel exists on every instruction-set tier ([`Isa`]): AVX-512 (F/BW/DQ/VL), AVX2+FMA and
//! a portable tier. The CPU is examined once; [`Kernels::best`] returns the table of the best tier
//! (or the one forced by the `TRANSFORMER_ENCODER_ISA` environment variable), and
//! [`Kernels::for_isa`] returns a lower tier on request, or an error if the CPU lacks it.
//!
//! All `unsafe` code of the project lives in this crate; every safe entry point validates its
//! arguments and returns [`KernelError`] instead of panicking.

#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod activation;
pub mod blocks;
pub mod isa;
pub mod quant;
pub mod reference;
pub mod rng;

mod aligned;
mod arch;
mod ops;
mod simd;
mod table;
pub mod team;

pub use activation::{Activation, ErrorBound};
pub use blocks::Blocks;
pub use isa::{Bf16Kernel, Isa, IsaError, VERIFIED_ON};
pub use quant::{Precision, QuantRows};
pub use table::{
    AttentionScratch, AttentionShape, Epilogue, Kernels, PackedMatrix, Par, ProductScratch,
    RaggedShape, baseline_sgemm,
};

use std::fmt;

/// Which (query, key) pairs may attend: a merged keep-mask (nonzero = keep).
#[derive(Clone, Copy, Debug)]
pub enum KeepMask<'a> {
    /// No mask: every key is kept.
    All,
    /// A key mask `[B, S]`, broadcast over query rows (ragged: one flag per row).
    Keys(&'a [u8]),
    /// A full mask `[B, S, S]`: entry `[b, i, j]` lets query `i` attend to key `j` (ragged: each
    /// sequence's `[len, len]` block, end to end).
    Full(&'a [u8]),
}

impl KeepMask<'_> {
    /// May query `i` of batch item `b` attend to key `j` (sequence length `s`)?
    #[inline]
    pub fn keep(&self, b: usize, i: usize, j: usize, s: usize) -> bool {
        match self {
            KeepMask::All => true,
            KeepMask::Keys(m) => m[b * s + j] != 0,
            KeepMask::Full(m) => m[(b * s + i) * s + j] != 0,
        }
    }
}

/// What a query row whose keys are all masked gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MaskedRows {
    /// All-zero probabilities: the row's attention output is the output bias alone
    /// (Keras' scores path).
    Zeros,
    /// Probability 1/S on every key, masked or not (Keras' fused path).
    Uniform,
}

/// A kernel argument of the wrong size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelError {
    /// What is wrong, naming the argument, the expected and the actual value.
    pub message: String,
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for KernelError {}

#[cold]
fn len_error(what: &str, got: usize, want: usize) -> KernelError {
    KernelError {
        message: format!("`{what}` has {got} elements, expected {want}"),
    }
}

fn expect_len(what: &str, got: usize, want: usize) -> Result<(), KernelError> {
    if got == want {
        Ok(())
    } else {
        Err(len_error(what, got, want))
    }
}
