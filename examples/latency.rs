//! Median latency of one encoder layer (or a stack), printed in the key=value form of
//! `tools/ort_anchor.py` so the two can be compared side by side:
//!
//! ```text
//! cargo run --release --example latency -- --hidden 768 --heads 12 --inter 3072 --seq 128 \
//!     --batch 1 --threads 2 [--activation gelu|relu] [--norm post|pre] [--layers N] \
//!     [--seconds S] [--isa avx512vnni|avx512|avx2vnni|avx2|portable] [--masked]
//!     [--precision fp32|int8] [--idle-ms N]
//! ```
//!
//! `encoder isa=<tier> precision=<p> threads=<n> ... median_ms=<m> min_ms=<m> gflops=<g>`; gflops
//! counts the same multiply-adds as the ONNX Runtime anchor (two operations each, int8 or float).
//! `sync_ms=` is the time per call the calling thread spent waiting at the barriers between
//! operations (for helpers to finish their last parts); with `--idle-ms N` the example then
//! sleeps N ms and prints `idle_cpu_ms=`, the CPU time the whole process used meanwhile.

mod common;
use std::process::ExitCode;
use transformer_encoder::{
    Activation, CallOptions, EncoderConfig, EncoderStack, EncoderWeights, Mask, StackWorkspace,
    TensorView, TransformerEncoder,
};

const USAGE: &str = "latency --hidden H --heads N --inter F --seq S --batch B --threads T [--activation gelu|relu] [--norm post|pre] [--layers L] [--seconds S] [--isa TIER] [--masked] [--precision fp32|int8] [--idle-ms N]";

fn main() -> ExitCode {
    common::run(latency)
}

fn latency() -> Result<ExitCode, common::Failure> {
    let a = common::Args::parse(
        USAGE,
        &[
            "hidden",
            "heads",
            "inter",
            "seq",
            "batch",
            "threads",
            "layers",
            "seconds",
            "activation",
            "norm",
            "isa",
            "precision",
            "idle-ms",
        ],
        &["masked"],
    )?;
    if let Some(p) = a.positional.first() {
        return Err(format!("unexpected argument `{p}` (usage: {USAGE})").into());
    }
    let (hidden, heads, inter) = (
        a.num("hidden", 768)?,
        a.num("heads", 12)?,
        a.num("inter", 3072)?,
    );
    let (seq, batch, threads, layers) = (
        a.num("seq", 128)?,
        a.num("batch", 1)?,
        a.num("threads", 2)?,
        a.num("layers", 1)?,
    );
    let seconds: f64 = a.num("seconds", 3.0)?;
    let activation = match a.choice("activation", &["gelu", "relu"], "gelu")? {
        "relu" => Activation::Relu,
        _ => Activation::Gelu,
    };
    let pre = a.choice("norm", &["post", "pre"], "post")? == "pre";
    let isa = common::tier(&a)?;
    let precision = common::precision(&a)?;
    let th = common::threads(threads)?;
    let cfg = EncoderConfig::new(inter, heads)
        .with_activation(activation)
        .with_normalize_first(pre)
        .with_layer_norm_epsilon(1e-5);
    let stack = EncoderStack::new(
        (0..layers)
            .map(|l| {
                let w = EncoderWeights::init(&cfg, hidden, 100 + l as u64)?;
                Ok(TransformerEncoder::with_isa(cfg.clone(), w, isa)?
                    .with_precision(precision)?
                    .with_threads(th.clone()))
            })
            .collect::<Result<Vec<_>, transformer_encoder::Error>>()?,
    )?;
    let x: Vec<f32> = (0..batch * seq * hidden)
        .map(|i| transformer_encoder_kernels::rng::normal(7, 0, i as u64) as f32)
        .collect();
    let pad: Vec<u8> = (0..batch * seq)
        .map(|i| (i % seq < seq - seq / 4) as u8)
        .collect();
    let mut opts = CallOptions::new();
    if a.has("masked") {
        opts = opts.padding_mask(Mask::new(&pad, &[batch, seq]));
    }
    let view = TensorView::new(&x, &[batch, seq, hidden]);
    let mut out = vec![0.0f32; x.len()];
    let mut ws = StackWorkspace::new();
    let idle_ms: u64 = a.num("idle-ms", 0)?;
    let mut sync_ns = Vec::new();
    let (median, min, runs) = common::time(seconds, 10, || {
        let before = transformer_encoder_kernels::team::sync_nanos();
        let r = stack.forward_into(view, &opts, &mut out, &mut ws);
        sync_ns.push(transformer_encoder_kernels::team::sync_nanos() - before);
        r
    })?;
    // The calls timed are the last `runs` (after the warm-up).
    let skip = sync_ns.len().saturating_sub(runs);
    let timed = &mut sync_ns[skip..];
    timed.sort_unstable();
    let sync_ms = timed.get(timed.len() / 2).map_or(0.0, |&n| n as f64 * 1e-6);
    let idle = if idle_ms > 0 {
        let before = common::process_cpu_ns();
        std::thread::sleep(std::time::Duration::from_millis(idle_ms));
        match (before, common::process_cpu_ns()) {
            (Some(b), Some(a)) => format!(
                " idle_ms={idle_ms} idle_cpu_ms={:.3}",
                (a - b) as f64 * 1e-6
            ),
            _ => format!(" idle_ms={idle_ms} idle_cpu_ms=unavailable"),
        }
    } else {
        String::new()
    };
    let flops = stack.layers()[0].flops(batch, seq) * layers as f64;
    println!(
        "encoder isa={isa} precision={precision} threads={threads} norm={} activation={} batch={batch} seq={seq} hidden={hidden} heads={heads} inter={inter} layers={layers} runs={runs} median_ms={:.4} min_ms={:.4} gflops={:.1} sync_ms={sync_ms:.4}{idle}",
        if pre { "pre" } else { "post" },
        activation,
        median * 1e3,
        min * 1e3,
        flops / median / 1e9
    );
    Ok(ExitCode::SUCCESS)
}
