//! Median latency of one encoder layer (or a stack), printed in the key=value form of
//! `tools/ort_anchor.py` so the two can be compared side by side:
//!
//! ```text
//! cargo run --release --example latency -- --hidden 768 --heads 12 --inter 3072 --seq 128 \
//!     --batch 1 --threads 2 [--activation gelu|relu] [--norm post|pre] [--layers N] \
//!     [--seconds S] [--isa avx512vnni|avx512|avx2vnni|avx2|portable] [--masked]
//!     [--precision fp32|bf16|int8] [--attention keras|bf16] [--idle-ms N] [--gap-ms N]
//! ```
//!
//! `encoder isa=<tier> precision=<p> threads=<n> ... median_ms=<m> min_ms=<m> gflops=<g>`; gflops
//! counts the same multiply-adds as the ONNX Runtime anchor (two operations each, int8 or float).
//! `sync_ms=` is the time per call the calling thread spent waiting at the barriers between
//! operations (for helpers to finish their last parts); with `--idle-ms N` the example then
//! sleeps N ms and prints `idle_cpu_ms=`, the CPU time the whole process used meanwhile. With
//! `--gap-ms N` it sleeps N ms before each call (not timed): a service at low load, whose helper
//! threads have gone to sleep by the time the next query comes.

mod common;
use std::process::ExitCode;
use transformer_encoder::{StackWorkspace, TensorView};

const USAGE: &str = "latency --hidden H --heads N --inter F --seq S --batch B --threads T [--activation gelu|relu] [--norm post|pre] [--layers L] [--seconds S] [--isa TIER] [--masked] [--precision fp32|bf16|int8] [--attention keras|bf16] [--idle-ms N] [--gap-ms N]";

fn main() -> ExitCode {
    common::run(latency)
}

fn latency() -> Result<ExitCode, common::Failure> {
    let options: Vec<&str> = common::model::FLAGS
        .iter()
        .copied()
        .chain(["threads", "seconds", "idle-ms", "gap-ms"])
        .collect();
    let a = common::Args::parse(USAGE, &options, &["masked"])?;
    if let Some(p) = a.positional.first() {
        return Err(format!("unexpected argument `{p}` (usage: {USAGE})").into());
    }
    let threads = a.num("threads", 2)?;
    let seconds: f64 = a.num("seconds", 3.0)?;
    let idle_ms: u64 = a.num("idle-ms", 0)?;
    let gap_ms: f64 = a.num("gap-ms", 0.0)?;
    if !(gap_ms.is_finite() && (0.0..=1000.0).contains(&gap_ms)) {
        return Err(format!("--gap-ms: {gap_ms} is not between 0 and 1000").into());
    }
    let gap = std::time::Duration::from_secs_f64(gap_ms * 1e-3);
    let m = common::model::Model::from_args(&a, common::threads(threads)?)?;
    let opts = m.options(a.has("masked"));
    let [batch, seq, hidden] = m.shape;
    let view = TensorView::new(&m.x, &m.shape);
    let mut out = vec![0.0f32; m.x.len()];
    let mut ws = StackWorkspace::new();
    let mut sync_ns = Vec::new();
    // Each call's own time (after the gap, which is not timed).
    let mut call_s = Vec::new();
    let (_, _, runs) = common::time(seconds, 10, || {
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
        let before = transformer_encoder_kernels::team::sync_nanos();
        let t = std::time::Instant::now();
        let r = m.stack.forward_into(view, &opts, &mut out, &mut ws);
        call_s.push(t.elapsed().as_secs_f64());
        sync_ns.push(transformer_encoder_kernels::team::sync_nanos() - before);
        r
    })?;
    // The calls timed are the last `runs` (after the warm-up); both records have one entry a
    // call.
    let skip = call_s.len().saturating_sub(runs);
    let timed_s = &mut call_s[skip..];
    timed_s.sort_by(|a, b| a.total_cmp(b));
    let (median, min) = (timed_s[timed_s.len() / 2], timed_s[0]);
    let timed = &mut sync_ns[skip..];
    timed.sort_unstable();
    let sync_ms = timed.get(timed.len() / 2).map_or(0.0, |&n| n as f64 * 1e-6);
    let idle = if idle_ms > 0 {
        let before = common::process_cpu_ns();
        std::thread::sleep(std::time::Duration::from_millis(idle_ms));
        match (before, common::process_cpu_ns()) {
            (Some(b), Some(a)) => format!(
                " idle_ms={idle_ms} idle_cpu_ms={:.3}",
                a.saturating_sub(b) as f64 * 1e-6
            ),
            _ => format!(" idle_ms={idle_ms} idle_cpu_ms=unavailable"),
        }
    } else {
        String::new()
    };
    let s = &m.stack.layers()[0];
    let (heads, inter) = (s.config().num_heads, s.config().intermediate_dim);
    // How the bf16 products run on this tier: AMX tiles, `vdpbf16ps`, or widened to float32.
    let bf16 = if m.precision == transformer_encoder::Precision::Bf16 {
        let k = transformer_encoder_kernels::Kernels::for_isa(m.isa)?;
        format!(" bf16={}", k.bf16_kernel().name())
    } else {
        String::new()
    };
    // The float32 products' cache blocks and register tile on this CPU
    // (`TRANSFORMER_ENCODER_FP32_BLOCKS` and `TRANSFORMER_ENCODER_FP32_TILE` force them).
    let blocks = if m.precision == transformer_encoder::Precision::F32 {
        let k = transformer_encoder_kernels::Kernels::for_isa(m.isa)?;
        let (r, c) = k.tile(transformer_encoder_kernels::Precision::F32);
        format!(" fp32_blocks={} fp32_tile={r}x{c}", k.fp32_blocks())
    } else {
        String::new()
    };
    let attention = if s.bf16_attention() {
        " attention=bf16"
    } else {
        ""
    };
    let flops = s.flops(batch, seq) * m.layers as f64;
    println!(
        "encoder isa={} precision={} threads={threads} norm={} activation={} batch={batch} seq={seq} hidden={hidden} heads={heads} inter={inter} layers={} runs={runs} median_ms={:.4} min_ms={:.4} gflops={:.1} sync_ms={sync_ms:.4}{idle}{bf16}{blocks}{attention}",
        m.isa,
        m.precision,
        if m.pre { "pre" } else { "post" },
        m.activation,
        m.layers,
        median * 1e3,
        min * 1e3,
        flops / median / 1e9
    );
    Ok(ExitCode::SUCCESS)
}
