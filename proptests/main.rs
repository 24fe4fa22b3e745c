//! Property tests: the fast encoder (every tier this machine has) against the naive float64
//! reference, over random shapes, masks and values.

mod bf16;
#[path = "../tests/common/mod.rs"]
mod common;
mod encoder;
mod int8;
mod kernels;
