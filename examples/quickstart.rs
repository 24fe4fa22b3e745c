//! The seed example: `keras_hub.layers.TransformerEncoder(intermediate_dim=64, num_heads=8)` on an
//! input of shape (2, 10, 64) drawn uniformly from [0, 1).
//!
//! `cargo run --release --example quickstart` (honours `TRANSFORMER_ENCODER_ISA`).

mod common;
use std::process::ExitCode;
use transformer_encoder::conformance::max_abs_diff;
use transformer_encoder::{
    CallOptions, EncoderConfig, TensorView, TransformerEncoder, Workspace, reference,
};

fn main() -> ExitCode {
    common::run(quickstart)
}

fn quickstart() -> Result<ExitCode, common::Failure> {
    common::Args::parse("quickstart (no arguments)", &[], &[])?;
    let (batch, seq, hidden) = (2, 10, 64);
    // A forced tier that is unknown or missing is an error here (TransformerEncoder::new).
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
    let max_diff = max_abs_diff(&y, &r.output);
    println!("max |fast - naive float64 reference| = {max_diff:.3e}");

    // Median time per call, reusing the output and workspace (no allocation per call).
    let mut out = vec![0.0f32; y.len()];
    let mut ws = Workspace::new();
    let (median, min, runs) = common::time(2.0, 100, || {
        encoder.forward_into(view, &opts, &mut out, None, &mut ws)
    })?;
    println!(
        "median time per call: {:.1} us ({runs} calls, min {:.1} us)",
        median * 1e6,
        min * 1e6
    );
    if out != y {
        return Err("forward_into and forward disagree".into());
    }
    Ok(ExitCode::SUCCESS)
}
