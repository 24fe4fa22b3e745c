//! Texts per second, tokenization included, for the two workloads of `tools/st_anchor.py`
//! (sentence-transformers on PyTorch): 32 short queries, and 8 passages truncated to 128 tokens.
//!
//! ```text
//! cargo run --release --example throughput -- [--model DIR] [--threads 2] [--seconds 5]
//!     [--precision fp32|int8]
//! ```
//!
//! Prints `encoder workload=<w> texts=<n> padded_shape=(b, s) threads=<t> median_ms=<m>
//! texts_per_s=<r> precision=<p>`, the same line as the anchor. `benches/st_compare.sh` runs both side by side.

mod common;
use std::process::ExitCode;
use transformer_encoder::SentenceEncoder;

const USAGE: &str = "throughput [--model DIR] [--threads N] [--seconds S] [--precision fp32|int8]";

fn main() -> ExitCode {
    common::run(throughput)
}

fn throughput() -> Result<ExitCode, common::Failure> {
    let a = common::Args::parse(USAGE, &["model", "threads", "seconds", "precision"], &[])?;
    let precision = common::precision(&a)?;
    if let Some(p) = a.positional.first() {
        return Err(format!("unexpected argument `{p}` (usage: {USAGE})").into());
    }
    let model = a.get("model").unwrap_or("target/models/all-MiniLM-L6-v2");
    let threads = a.num("threads", 2usize)?;
    let seconds = a.num("seconds", 5.0f64)?;
    let enc = SentenceEncoder::from_dir(model)
        .and_then(|e| e.with_max_seq_length(128))
        .map_err(|e| format!("{e} (fetch the model with .ci/fetch_model.sh)"))?
        .with_precision(precision)?
        .with_threads(common::threads(threads)?);
    for (name, texts) in common::workloads() {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let b = enc.tokenize(&refs)?;
        let (median, _, _) = common::time(seconds, 5, || enc.embed(&refs).map(|_| ()))?;
        println!(
            "encoder workload={name} texts={} padded_shape={:?} threads={threads} median_ms={:.3} texts_per_s={:.1} precision={precision}",
            texts.len(),
            (b.batch, b.seq),
            median * 1e3,
            texts.len() as f64 / median
        );
    }
    Ok(ExitCode::SUCCESS)
}
