//! The kernel bodies, each written once over [`Simd`](crate::simd::Simd).

pub(crate) mod act;
#[cfg(target_arch = "x86_64")]
pub(crate) mod amx;
pub(crate) mod attention;
pub(crate) mod bgemm;
pub(crate) mod gemm;
pub(crate) mod norm;
pub(crate) mod product;
pub(crate) mod qgemm;
pub(crate) mod quant;
#[cfg(target_arch = "x86_64")]
pub(crate) mod tile_attention;
