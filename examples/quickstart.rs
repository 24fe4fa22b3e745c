//! The seed example: `keras_hub.layers.TransformerEncoder(intermediate_dim=64, num_heads=8)` on an
//! input of shape (2, 10, 64) drawn uniformly from [0, 1).
//!
//! `cargo run --release --example quickstart` (honours `TRANSFORMER_ENCODER_ISA`).

use std::time::Instant;
use transformer_encoder::{
    CallOptions, EncoderConfig, TensorView, TransformerEncoder, Workspace, reference,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (batch, seq, hidden) = (2, 10, 64);
    // Fail loudly if a forced tier is unknown or missing.
    transformer_encoder::Isa::from_env()?;
    let config = EncoderConfig::new(64, 8);
    let encoder = TransformerEncoder::init(config.clone(), hidden, 1234)?;

    // np.random.uniform(size=(2, 10, 64)), from a fixed seed.
    let x: Vec<f32> = (0..batch * seq * hidden)
        .map(|i| transformer_encoder_kernels::rng::uniform(2024, 0, i as u64) as f32)
        .collect();
    let view = TensorView::new(&x, &[batch, seq, hidden]);
    let opts = CallOptions::new();
    let y = encoder.forward(view, &opts)?;

    println!("input shape:  [{batch}, {seq}, {hidden}]");
    println!("output shape: [{batch}, {seq}, {hidden}]");
    println!("output[0, 0, :6] = {:?}", &y[..6]);
    println!("output[1, 9, -3:] = {:?}", &y[y.len() - 3..]);
    println!(
        "instruction set: {} (best available: {})",
        encoder.isa(),
        transformer_encoder::Isa::best_available()
    );

    let r = reference::forward(&config, &encoder.weights(), view, &opts, false)?;
    let max_diff = y
        .iter()
        .zip(&r.output)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0f64, f64::max);
    println!("max |fast - naive float64 reference| = {max_diff:.3e}");

    // Median time per call, reusing the output and workspace (no allocation per call).
    let mut out = vec![0.0f32; y.len()];
    let mut ws = Workspace::new();
    for _ in 0..200 {
        encoder.forward_into(view, &opts, &mut out, None, &mut ws)?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 20_000 && (start.elapsed().as_secs_f64() < 2.0 || times.len() < 100) {
        let t = Instant::now();
        encoder.forward_into(view, &opts, &mut out, None, &mut ws)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "median time per call: {:.1} us ({} calls, min {:.1} us)",
        median * 1e6,
        times.len(),
        times[0] * 1e6
    );
    assert!(out == y, "forward_into and forward disagree");
    Ok(())
}
