//! Concurrent callers on one shared model: `--callers N` threads call one encoder stack (the
//! model flags of `latency`), each with its own workspace and `--threads T` threads per call,
//! for `--seconds S`.
//!
//! ```text
//! cargo run --release --example concurrency -- --callers 2 --threads 1 --hidden 384 \
//!     --heads 12 --inter 1536 --seq 16 --batch 1 --layers 6 [--precision fp32|bf16|int8] [--attention keras|bf16] [--seconds S]
//! ```
//!
//! Prints one line: `callers=N threads=T precision=P calls_per_s=<aggregate> p50_ms=<m>
//! p99_ms=<m>` (plus the shape). The callers share the model read-only; each leads its own
//! team of threads: no lock and no shared mutable state on the hot path.

mod common;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use transformer_encoder::{StackWorkspace, TensorView};

const USAGE: &str = "concurrency --callers N [--threads T] [--seconds S] [--hidden H --heads N --inter F --seq S --batch B --layers L --activation gelu|relu --norm post|pre --isa TIER --precision fp32|bf16|int8 --attention keras|bf16] [--masked]";

fn main() -> ExitCode {
    common::run(concurrency)
}

fn concurrency() -> Result<ExitCode, common::Failure> {
    let options: Vec<&str> = common::model::FLAGS
        .iter()
        .copied()
        .chain(["callers", "threads", "seconds"])
        .collect();
    let a = common::Args::parse(USAGE, &options, &["masked"])?;
    if let Some(p) = a.positional.first() {
        return Err(format!("unexpected argument `{p}` (usage: {USAGE})").into());
    }
    let callers: usize = a.num("callers", 2)?;
    if callers == 0 {
        return Err("--callers: at least 1, got 0".into());
    }
    let threads: usize = a.num("threads", 1)?;
    let seconds: f64 = a.num("seconds", 3.0)?;
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("--seconds: a positive number, got {seconds}").into());
    }
    let m = common::model::Model::from_args(&a, common::threads(threads)?)?;
    let opts = m.options(a.has("masked"));
    let view = TensorView::new(&m.x, &m.shape);
    // Warm every caller's team and workspace, then all callers start together.
    let start = std::sync::Barrier::new(callers);
    let results: Vec<Result<Vec<f64>, transformer_encoder::Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..callers)
            .map(|_| {
                let (m, opts, start) = (&m, &opts, &start);
                s.spawn(move || {
                    let mut ws = StackWorkspace::new();
                    let mut out = vec![0.0f32; m.x.len()];
                    for _ in 0..3 {
                        m.stack.forward_into(view, opts, &mut out, &mut ws)?;
                    }
                    start.wait();
                    let end = Instant::now() + Duration::from_secs_f64(seconds);
                    let mut times = Vec::new();
                    while Instant::now() < end {
                        let t = Instant::now();
                        m.stack.forward_into(view, opts, &mut out, &mut ws)?;
                        times.push(t.elapsed().as_secs_f64());
                    }
                    Ok(times)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a caller thread panicked"))
            .collect()
    });
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| all[((all.len() - 1) as f64 * p).round() as usize] * 1e3;
    let [batch, seq, hidden] = m.shape;
    println!(
        "callers={callers} threads={threads} precision={} isa={} batch={batch} seq={seq} hidden={hidden} layers={} calls={} calls_per_s={:.1} p50_ms={:.4} p99_ms={:.4}",
        m.precision,
        m.isa,
        m.layers,
        all.len(),
        all.len() as f64 / seconds,
        pct(0.5),
        pct(0.99)
    );
    Ok(ExitCode::SUCCESS)
}
