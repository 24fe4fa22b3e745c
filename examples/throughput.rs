//! Texts per second, tokenization included, for the two workloads of `tools/st_anchor.py`
//! (sentence-transformers on PyTorch): 32 short queries, and 8 passages truncated to 128 tokens.
//!
//! ```text
//! cargo run --release --example throughput -- [--model DIR] [--threads 2] [--seconds 5]
//! ```
//!
//! Prints `encoder workload=<w> texts=<n> padded_shape=(b, s) threads=<t> median_ms=<m>
//! texts_per_s=<r>`, the same line as the anchor. `benches/st_compare.sh` runs both side by side.

use std::sync::Arc;
use std::time::Instant;
use transformer_encoder::{SentenceEncoder, Threads};

fn main() {
    let mut model = "target/models/all-MiniLM-L6-v2".to_string();
    let (mut threads, mut seconds) = (2usize, 5.0f64);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--model" => model = v,
            "--threads" => threads = v.parse().unwrap_or(2),
            "--seconds" => seconds = v.parse().unwrap_or(5.0),
            _ => {
                eprintln!("usage: throughput [--model DIR] [--threads N] [--seconds S]");
                std::process::exit(2);
            }
        }
    }
    let th = if threads <= 1 {
        Threads::Single
    } else {
        Threads::Pool(Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool"),
        ))
    };
    let enc = SentenceEncoder::from_dir(&model)
        .and_then(|e| e.with_max_seq_length(128))
        .unwrap_or_else(|e| {
            eprintln!("error: {e} (fetch the model with .ci/fetch_model.sh)");
            std::process::exit(2)
        })
        .with_threads(th);
    let pairs = [
        ("reset", "router"),
        ("cancel", "subscription"),
        ("update", "invoice"),
        ("export", "report"),
    ];
    let queries: Vec<String> = (0..32)
        .map(|i| {
            let (v, o) = pairs[i % 4];
            format!("how do I {v} the {o} {i}")
        })
        .collect();
    let passage = "Vector units on modern server processors can multiply sixteen single precision numbers in one instruction, and matrix tiles go further still, so an encoder that keeps its weights packed and its activations in cache spends most of its time doing arithmetic rather than waiting for memory. ";
    let three = passage.repeat(3);
    let passages: Vec<String> = (0..8).map(|i| three[i * 7..].to_string()).collect();
    for (name, texts) in [("32-queries", &queries), ("8-passages-128tok", &passages)] {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let shape = enc
            .tokenize(&refs)
            .map(|b| (b.batch, b.seq))
            .expect("tokenize");
        for _ in 0..3 {
            enc.embed(&refs).expect("embed");
        }
        let mut ts = Vec::new();
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < seconds || ts.len() < 5 {
            let t = Instant::now();
            std::hint::black_box(enc.embed(&refs).expect("embed"));
            ts.push(t.elapsed().as_secs_f64());
        }
        ts.sort_by(|a, b| a.total_cmp(b));
        let med = ts[ts.len() / 2];
        println!(
            "encoder workload={name} texts={} padded_shape={shape:?} threads={threads} median_ms={:.3} texts_per_s={:.1}",
            texts.len(),
            med * 1e3,
            texts.len() as f64 / med
        );
    }
}
