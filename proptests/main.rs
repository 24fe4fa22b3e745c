//! Property tests: the fast encoder (every tier this machine has) against the naive float64
//! reference, over random shapes, masks and values.

mod common;
mod encoder;
mod kernels;
