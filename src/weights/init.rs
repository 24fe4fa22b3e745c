//! Fresh weights drawn from Keras' initializers, reproducibly from a seed.

use crate::config::Initializer;
use transformer_encoder_kernels::rng;

/// Draw `n` values from an initializer with the given fans, reproducibly from (seed, stream).
pub(super) fn draw(
    init: &Initializer,
    n: usize,
    fan_in: usize,
    fan_out: usize,
    seed: u64,
    stream: usize,
) -> Vec<f32> {
    let seed = init.seed().map_or(seed, |s| s ^ seed.rotate_left(17));
    let stream = stream as u64;
    let (fi, fo) = (fan_in.max(1) as f64, fan_out.max(1) as f64);
    let uniform = |limit: f64| -> Vec<f32> {
        (0..n as u64)
            .map(|j| ((2.0 * rng::uniform(seed, stream, j) - 1.0) * limit) as f32)
            .collect()
    };
    // Keras' truncated normal: redraw outside two standard deviations.
    let truncated = |mean: f64, stddev: f64| -> Vec<f32> {
        (0..n as u64)
            .map(|j| {
                let mut k = 0u64;
                loop {
                    let z = rng::normal(seed, stream, j.wrapping_mul(64).wrapping_add(k));
                    if z.abs() <= 2.0 || k == 63 {
                        break (mean + stddev * z.clamp(-2.0, 2.0)) as f32;
                    }
                    k += 1;
                }
            })
            .collect()
    };
    // Variance scaling with a truncated normal: the stddev is corrected for the truncation.
    const TRUNC_CORRECTION: f64 = 0.879_625_661_034_239_8;
    match *init {
        Initializer::GlorotUniform { .. } => uniform((6.0 / (fi + fo)).sqrt()),
        Initializer::HeUniform { .. } => uniform((6.0 / fi).sqrt()),
        Initializer::LecunUniform { .. } => uniform((3.0 / fi).sqrt()),
        Initializer::GlorotNormal { .. } => {
            truncated(0.0, (2.0 / (fi + fo)).sqrt() / TRUNC_CORRECTION)
        }
        Initializer::HeNormal { .. } => truncated(0.0, (2.0 / fi).sqrt() / TRUNC_CORRECTION),
        Initializer::LecunNormal { .. } => truncated(0.0, (1.0 / fi).sqrt() / TRUNC_CORRECTION),
        Initializer::RandomUniform { minval, maxval, .. } => (0..n as u64)
            .map(|j| (minval + (maxval - minval) * rng::uniform(seed, stream, j)) as f32)
            .collect(),
        Initializer::RandomNormal { mean, stddev, .. } => (0..n as u64)
            .map(|j| (mean + stddev * rng::normal(seed, stream, j)) as f32)
            .collect(),
        Initializer::TruncatedNormal { mean, stddev, .. } => truncated(mean, stddev),
        Initializer::Zeros => vec![0.0; n],
        Initializer::Ones => vec![1.0; n],
    }
}
