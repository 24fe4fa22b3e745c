//! Texts per second, tokenization included, for the workloads of `tools/st_anchor.py`
//! (sentence-transformers): 32 short queries, 8 passages truncated to 128 tokens, and with
//! `--corpus FILE` every line of a file in one call (workload `corpus-<n>`).
//!
//! ```text
//! cargo run --release --example throughput -- [--model DIR] [--threads 2] [--seconds 5]
//!     [--precision fp32|bf16|int8] [--attention keras|bf16] [--corpus FILE] [--workload NAME] [--max-batch-tokens N] [--padded]
//! ```
//!
//! Texts run through [`SentenceEncoder::encode`]: ragged batches, no padding. `--padded` times
//! the padded path instead (one call padded to the longest text), for comparison; `--workload`
//! times one workload only.
//!
//! Prints `encoder workload=<w> texts=<n> padded_shape=(b, s) threads=<t> median_ms=<m>
//! texts_per_s=<r> precision=<p> path=ragged|padded tokens=<n>`: the anchor's line plus the
//! precision, the path and the real tokens. `benches/st_compare.sh` runs both side by side.

mod common;
use std::process::ExitCode;
use transformer_encoder::SentenceEncoder;

const USAGE: &str = "throughput [--model DIR] [--threads N] [--seconds S] [--precision fp32|bf16|int8] [--attention keras|bf16] \
                     [--corpus FILE] [--workload NAME] [--max-batch-tokens N] [--padded]";

fn main() -> ExitCode {
    common::run(throughput)
}

fn throughput() -> Result<ExitCode, common::Failure> {
    let a = common::Args::parse(
        USAGE,
        &[
            "model",
            "threads",
            "seconds",
            "precision",
            "corpus",
            "workload",
            "max-batch-tokens",
            "attention",
        ],
        &["padded"],
    )?;
    let precision = common::precision(&a)?;
    if let Some(p) = a.positional.first() {
        return Err(format!("unexpected argument `{p}` (usage: {USAGE})").into());
    }
    let model = a.get("model").unwrap_or("target/models/all-MiniLM-L6-v2");
    let threads = a.num("threads", 2usize)?;
    let seconds = a.num("seconds", 5.0f64)?;
    let padded = a.has("padded");
    let budget = a.num(
        "max-batch-tokens",
        transformer_encoder::DEFAULT_MAX_BATCH_TOKENS,
    )?;
    let mut workloads: Vec<(String, Vec<String>)> = common::workloads()
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
    if let Some(path) = a.get("corpus") {
        let text = std::fs::read_to_string(path).map_err(|e| format!("--corpus {path}: {e}"))?;
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        if lines.is_empty() {
            return Err(format!("--corpus {path}: no text in the file").into());
        }
        workloads.push((format!("corpus-{}", lines.len()), lines));
    }
    if let Some(w) = a.get("workload") {
        workloads.retain(|(n, _)| n == w);
        if workloads.is_empty() {
            return Err(format!(
                "--workload {w}: no such workload (32-queries, 8-passages-128tok, or corpus-<n> with --corpus)"
            )
            .into());
        }
    }
    let enc = SentenceEncoder::from_dir_with_precision(model, precision)
        .and_then(|e| e.with_max_seq_length(128))
        .map_err(|e| format!("{e} (fetch the model with .ci/fetch_model.sh)"))?
        .with_threads(common::threads(threads)?);
    // `--attention bf16`: the attention's products on bf16 tiles from 64 tokens (an option
    // beyond Keras for fp32 and int8; an error where the CPU has no bf16 tiles).
    let bf16_attention = a.choice("attention", &["keras", "bf16"], "keras")? == "bf16";
    let enc = if bf16_attention {
        enc.with_bf16_attention()?
    } else {
        enc
    };
    for (name, texts) in workloads {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let b = enc.tokenize(&refs)?;
        let tokens: usize = enc.tokenize_ragged(&refs)?.lengths.iter().sum();
        let (median, _, _) = if padded {
            common::time(seconds, 5, || enc.embed_padded(&refs).map(|_| ()))?
        } else {
            common::time(seconds, 5, || enc.encode_with(&refs, budget).map(|_| ()))?
        };
        println!(
            "encoder workload={name} texts={} padded_shape={:?} threads={threads} median_ms={:.3} texts_per_s={:.1} precision={precision} path={} tokens={tokens}{}",
            texts.len(),
            (b.batch, b.seq),
            median * 1e3,
            texts.len() as f64 / median,
            if padded { "padded" } else { "ragged" },
            if bf16_attention {
                " attention=bf16"
            } else {
                ""
            },
        );
    }
    Ok(ExitCode::SUCCESS)
}
