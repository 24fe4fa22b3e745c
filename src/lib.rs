//! # transformer-encoder
//!
//! KerasHub's `keras_hub.layers.TransformerEncoder` on CPUs: the same numbers as Keras (within
//! the tolerances of SPEC section 7), from fused SIMD kernels chosen at run time.
//!
//! ```
//! use transformer_encoder::{CallOptions, EncoderConfig, Mask, TensorView, TransformerEncoder};
//!
//! // keras_hub.layers.TransformerEncoder(intermediate_dim=64, num_heads=8) on hidden size 64.
//! let encoder = TransformerEncoder::init(EncoderConfig::new(64, 8), 64, 1234)?;
//! let x = vec![0.25f32; 2 * 10 * 64];
//! let pad: Vec<u8> = (0..20).map(|i| (i % 10 < 7) as u8).collect(); // 3 padded tokens each
//! let opts = CallOptions::new().padding_mask(Mask::new(&pad, &[2, 10]));
//! let (y, scores) = encoder.forward_with_scores(TensorView::new(&x, &[2, 10, 64]), &opts)?;
//! assert_eq!(y.len(), 2 * 10 * 64);
//! assert_eq!(scores.len(), 2 * 8 * 10 * 10);
//! # Ok::<(), transformer_encoder::Error>(())
//! ```
//!
//! ## Semantics
//!
//! * `padding_mask [B, S]` masks keys only (Keras' explicit `padding_mask`); padded query rows are
//!   computed normally. [`implicit_mask_from_ids`] gives Keras' implicit-mask behaviour, which
//!   also masks the padded query rows.
//! * Fully masked query rows follow [`MaskedRowPolicy`]: by default exactly what Keras does
//!   (all-zero probabilities when scores are requested or dropout > 0, uniform 1/S otherwise).
//! * Masked keys never contribute to a row that has a kept key, even if their values are NaN.
//! * LayerNorm computes the variance from centred values.
//!
//! ## Portability and performance
//!
//! Kernels are chosen at run time by CPU feature (AVX-512, AVX2+FMA, portable); set
//! `TRANSFORMER_ENCODER_ISA=avx512|avx2|portable` to force one, or use
//! [`TransformerEncoder::with_isa`].

#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[cfg(feature = "bert")]
mod bert;
mod config;
pub mod conformance;
mod encoder;
mod error;
mod int8;
mod mask;
pub mod reference;
mod stack;
mod store;
mod weights;

#[cfg(feature = "bert")]
pub use bert::{
    Batch, BertConfig, BertModel, DEFAULT_MAX_BATCH_TOKENS, Pooling, SentenceEncoder, Tokens, pool,
    pool_ragged,
};
pub use config::{DTYPE_POLICIES, EncoderConfig, INITIALIZER_NAMES, Initializer, WeightPrecision};
pub use encoder::{
    CallOptions, MaskedRowPolicy, RaggedView, TensorView, Threads, TransformerEncoder, Workspace,
};
pub use error::{Error, Result};
pub use int8::{Int8Dense, Int8Weights};
pub use mask::{Mask, MaskValues, implicit_mask_from_ids, padding_mask_from_ids};
pub use stack::{EncoderStack, StackWorkspace};
pub use transformer_encoder_kernels::Precision;
pub use transformer_encoder_kernels::activation::{ACCEPTED_NAMES as ACTIVATION_NAMES, Activation};
pub use transformer_encoder_kernels::{Isa, IsaError};
pub use weights::{
    Dense, DenseWeights, EncoderWeights, NormRole, NormWeights, Sublayers, WEIGHT_NAMES, WeightDims,
};

/// The README's Rust examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
