//! Median latency of one encoder layer (or a stack), printed in the key=value form of
//! `tools/ort_anchor.py` so the two can be compared side by side:
//!
//! ```text
//! cargo run --release --example latency -- --hidden 768 --heads 12 --inter 3072 --seq 128 \
//!     --batch 1 --threads 2 [--activation gelu|relu] [--norm post|pre] [--layers N] \
//!     [--seconds S] [--isa avx512|avx2|portable]
//! ```
//!
//! `encoder isa=<tier> threads=<n> ... median_ms=<m> min_ms=<m> gflops=<g>`; gflops counts the
//! same multiply-adds as the ONNX Runtime anchor (two FLOPs each).

use std::sync::Arc;
use std::time::Instant;
use transformer_encoder::{
    Activation, CallOptions, EncoderConfig, EncoderStack, Isa, Mask, StackWorkspace, TensorView,
    Threads, TransformerEncoder,
};

fn layer_flops(batch: usize, seq: usize, hidden: usize, heads: usize, inter: usize) -> f64 {
    let w = heads * (hidden / heads);
    (batch
        * (2 * seq * hidden * 3 * w
            + 4 * seq * seq * w
            + 2 * seq * w * hidden
            + 4 * seq * hidden * inter)) as f64
}

fn main() {
    let mut a = std::collections::HashMap::new();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let k = args[i].trim_start_matches("--").to_string();
        if k == "help" || k == "h" {
            println!(
                "usage: latency --hidden H --heads N --inter F --seq S --batch B --threads T [--activation gelu|relu] [--norm post|pre] [--layers L] [--seconds S] [--isa avx512|avx2|portable] [--masked]"
            );
            return;
        }
        if k == "masked" {
            a.insert(k, "1".to_string());
            i += 1;
            continue;
        }
        let v = args.get(i + 1).cloned().unwrap_or_else(|| {
            eprintln!("--{k} needs a value");
            std::process::exit(2)
        });
        a.insert(k, v);
        i += 2;
    }
    let num = |k: &str, d: usize| -> usize {
        a.get(k).map_or(d, |v| {
            v.parse().unwrap_or_else(|_| {
                eprintln!("--{k} takes an integer, got {v}");
                std::process::exit(2)
            })
        })
    };
    let (hidden, heads, inter) = (num("hidden", 768), num("heads", 12), num("inter", 3072));
    let (seq, batch, threads, layers) = (
        num("seq", 128),
        num("batch", 1),
        num("threads", 2),
        num("layers", 1),
    );
    let seconds: f64 = a.get("seconds").map_or(3.0, |v| v.parse().unwrap_or(3.0));
    let activation = match a.get("activation").map(String::as_str).unwrap_or("gelu") {
        "gelu" => Activation::Gelu,
        "relu" => Activation::Relu,
        other => {
            eprintln!("--activation takes gelu or relu, got {other}");
            std::process::exit(2)
        }
    };
    let pre = match a.get("norm").map(String::as_str).unwrap_or("post") {
        "post" => false,
        "pre" => true,
        other => {
            eprintln!("--norm takes post or pre, got {other}");
            std::process::exit(2)
        }
    };
    let isa = match a.get("isa") {
        Some(s) => match s.parse::<Isa>().and_then(|i| i.require()) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2)
            }
        },
        None => match Isa::from_env() {
            Ok(Some(i)) => i,
            Ok(None) => Isa::best_available(),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2)
            }
        },
    };
    let th = if threads <= 1 {
        Threads::Single
    } else {
        Threads::Pool(Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("thread pool"),
        ))
    };
    let cfg = EncoderConfig::new(inter, heads)
        .with_activation(activation)
        .with_normalize_first(pre)
        .with_layer_norm_epsilon(1e-5);
    let stack = EncoderStack::new(
        (0..layers)
            .map(|l| {
                let w = transformer_encoder::EncoderWeights::init(&cfg, hidden, 100 + l as u64)
                    .expect("weights");
                TransformerEncoder::with_isa(cfg.clone(), w, isa)
                    .expect("encoder")
                    .with_threads(th.clone())
            })
            .collect(),
    )
    .expect("stack");
    let x: Vec<f32> = (0..batch * seq * hidden)
        .map(|i| transformer_encoder_kernels::rng::normal(7, 0, i as u64) as f32)
        .collect();
    let pad: Vec<u8> = (0..batch * seq)
        .map(|i| (i % seq < seq - seq / 4) as u8)
        .collect();
    let mut opts = CallOptions::new();
    if a.contains_key("masked") {
        opts = opts.padding_mask(Mask::new(&pad, &[batch, seq]));
    }
    let view = TensorView::new(&x, &[batch, seq, hidden]);
    let mut out = vec![0.0f32; x.len()];
    let mut ws = StackWorkspace::new();
    let warm = Instant::now();
    while warm.elapsed().as_secs_f64() < (seconds * 0.1).min(1.0) {
        stack
            .forward_into(view, &opts, &mut out, &mut ws)
            .expect("forward");
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds || times.len() < 10 {
        let t = Instant::now();
        stack
            .forward_into(view, &opts, &mut out, &mut ws)
            .expect("forward");
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    let flops = layer_flops(batch, seq, hidden, heads, inter) * layers as f64;
    println!(
        "encoder isa={isa} threads={threads} norm={} activation={} batch={batch} seq={seq} hidden={hidden} heads={heads} inter={inter} layers={layers} runs={} median_ms={:.4} min_ms={:.4} gflops={:.1}",
        if pre { "pre" } else { "post" },
        activation,
        times.len(),
        median * 1e3,
        times[0] * 1e3,
        flops / median / 1e9
    );
}
