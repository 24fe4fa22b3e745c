//! Criterion benchmarks (`cargo bench`): every kernel on every tier the CPU has, with
//! `Throughput` in FLOPs (shown as elements/s = FLOP/s), and whole layers at the shapes the
//! README's table uses. `TRANSFORMER_ENCODER_ISA` restricts the tiers; `BENCH_QUICK=1` keeps
//! only the small shapes.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;
use transformer_encoder::{
    Activation, CallOptions, EncoderConfig, EncoderWeights, Isa, Precision, TensorView, Threads,
    TransformerEncoder, Workspace,
};
use transformer_encoder_kernels::{
    AttentionScratch, AttentionShape, Epilogue, KeepMask, Kernels, MaskedRows, Par, RaggedShape,
    baseline_sgemm,
};

#[path = "../examples/common/mod.rs"]
mod common;

/// The tiers to measure: the one `TRANSFORMER_ENCODER_ISA` forces, else every available one.
fn tiers() -> Vec<Isa> {
    Isa::under_test().unwrap_or_else(|e| panic!("{e}"))
}

fn quick() -> bool {
    std::env::var("BENCH_QUICK").is_ok()
}

fn vals(n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| transformer_encoder_kernels::rng::uniform(seed, 1, i as u64) as f32 - 0.5)
        .collect()
}

fn gemm(c: &mut Criterion) {
    // The layer's products: QKV, output projection, FFN in and out (BERT-base, seq 128).
    let shapes: &[(&str, usize, usize, usize)] = if quick() {
        &[("seed_qkv", 20, 64, 192)]
    } else {
        &[
            ("seed_qkv", 20, 64, 192),
            ("in_cache", 48, 256, 64),
            ("bert_qkv", 128, 768, 2304),
            ("bert_ffn_in", 128, 768, 3072),
            ("bert_ffn_out", 128, 3072, 768),
            ("minilm_ragged_ffn_in", 4352, 384, 1536),
            ("minilm_ragged_ffn_out", 4352, 1536, 384),
        ]
    };
    for &(name, m, k, n) in shapes {
        let mut g = c.benchmark_group(format!("gemm/{name}_{m}x{k}x{n}"));
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let a = vals(m * k, 1);
        let w = vals(k * n, 2);
        let bias = vals(n, 3);
        let mut out = vec![0.0; m * n];
        g.bench_function("matrixmultiply", |bch| {
            bch.iter(|| baseline_sgemm(black_box(&a), &w, m, k, n, &mut out).unwrap())
        });
        for isa in tiers() {
            let kern = Kernels::for_isa(isa).unwrap();
            let p = kern.pack(&w, k, n).unwrap();
            let ep = Epilogue {
                bias: Some(&bias),
                activation: None,
                residual: None,
            };
            g.bench_function(BenchmarkId::new("bias", isa), |bch| {
                bch.iter(|| {
                    kern.gemm(black_box(&a), m, &p, &ep, &mut out, Par::Seq)
                        .unwrap()
                })
            });
        }
        g.finish();
    }
}

/// The int8 products (Keras' int8 mode) at the same shapes, every tier: quantized input rows,
/// int8 panels, dequantization and bias in the epilogue. Throughput in operations (two per
/// multiply-add), to set against `peak_flops`' int8 figure for the tier.
fn gemm_int8(c: &mut Criterion) {
    let shapes: &[(&str, usize, usize, usize)] = if quick() {
        &[("seed_qkv", 20, 64, 192)]
    } else {
        &[
            ("seed_qkv", 20, 64, 192),
            ("in_cache", 48, 256, 96),
            ("bert_qkv", 128, 768, 2304),
            ("bert_ffn_in", 128, 768, 3072),
            ("bert_ffn_out", 128, 3072, 768),
            // MiniLM's products over a whole ragged batch (the 64-text corpus: 4,352 tokens).
            ("minilm_ragged_qkv", 4352, 384, 1152),
            ("minilm_ragged_ffn_in", 4352, 384, 1536),
            ("minilm_ragged_ffn_out", 4352, 1536, 384),
            // One short query through MiniLM (16 tokens): few rows per weight byte.
            ("minilm_query_qkv", 16, 384, 1152),
            ("minilm_query_ffn_in", 16, 384, 1536),
            ("minilm_query_ffn_out", 16, 1536, 384),
        ]
    };
    for &(name, m, k, n) in shapes {
        let mut g = c.benchmark_group(format!("gemm_int8/{name}_{m}x{k}x{n}"));
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let a = vals(m * k, 1);
        let w = vals(k * n, 2);
        let bias = vals(n, 3);
        let (wq, ws) = transformer_encoder_kernels::quant::quantize_weights(&w, k, n);
        let mut out = vec![0.0; m * n];
        for isa in tiers() {
            let kern = Kernels::for_isa(isa).unwrap();
            let p = kern.pack_int8(&wq, &ws, k, n).unwrap();
            let mut q = transformer_encoder_kernels::QuantRows::new();
            q.arm_for(&p);
            kern.prepare(&a, k, &mut q, Par::Seq).unwrap();
            let ep = Epilogue {
                bias: Some(&bias),
                activation: None,
                residual: None,
            };
            for (label, par) in [("t1", Par::Seq), ("t2", Par::Threads(2))] {
                if quick() && label == "t2" {
                    continue;
                }
                g.bench_function(BenchmarkId::new(label, isa), |bch| {
                    bch.iter(|| {
                        kern.gemm_prepared(black_box(&a), &q, m, &p, &ep, &mut out, None, par)
                            .unwrap()
                    })
                });
            }
        }
        g.finish();
    }
}

fn small_kernels(c: &mut Criterion) {
    let (rows, n) = (128, 768);
    let x = vals(rows * n, 4);
    let r = vals(rows * n, 5);
    let gm = vals(n, 6);
    let bt = vals(n, 7);
    let mut out = vec![0.0; rows * n];
    let mut g = c.benchmark_group("layer_norm_residual/128x768");
    g.throughput(Throughput::Elements((rows * n) as u64));
    for isa in tiers() {
        let k = Kernels::for_isa(isa).unwrap();
        g.bench_function(isa.name(), |b| {
            b.iter(|| {
                k.layer_norm(
                    black_box(&x),
                    Some(&r),
                    n,
                    &gm,
                    &bt,
                    1e-5,
                    &mut out,
                    None,
                    None,
                    Par::Seq,
                )
                .unwrap()
            })
        });
    }
    g.finish();
    // Every activation on every tier (elements per second), on the FFN shape of BERT-base
    // (128 x 3072; the row-wise ones over rows of 3072). BENCH_QUICK keeps the four common ones.
    let xs: Vec<f32> = vals(128 * 3072, 8).iter().map(|v| 8.0 * v).collect();
    let mut y = xs.clone();
    let acts: Vec<Activation> = if quick() {
        vec![
            Activation::Gelu,
            Activation::GeluApproximate,
            Activation::Silu,
            Activation::Relu,
        ]
    } else {
        Activation::ALL.to_vec()
    };
    for a in acts {
        let mut g = c.benchmark_group(format!("activation/{}/128x3072", a.keras_name()));
        g.throughput(Throughput::Elements((128 * 3072) as u64));
        g.sample_size(10);
        for isa in tiers() {
            let k = Kernels::for_isa(isa).unwrap();
            g.bench_function(isa.name(), |b| {
                b.iter(|| {
                    y.copy_from_slice(&xs);
                    k.activation(a, black_box(&mut y), 3072).unwrap()
                })
            });
        }
        g.finish();
    }
    for (s, heads, d) in [(128usize, 12usize, 64usize), (512, 12, 64)] {
        if quick() && s > 128 {
            continue;
        }
        let shape = AttentionShape {
            batch: 1,
            seq: s,
            heads,
            key_dim: d,
        };
        let qkv = vals(s * 3 * heads * d, 9);
        let mut ctx = vec![0.0; s * heads * d];
        let mut g = c.benchmark_group(format!("attention/seq{s}_heads{heads}_d{d}"));
        g.throughput(Throughput::Elements((4 * s * s * heads * d) as u64));
        for isa in tiers() {
            let k = Kernels::for_isa(isa).unwrap();
            let mut scratch = AttentionScratch::new();
            g.bench_function(isa.name(), |b| {
                b.iter(|| {
                    k.attention(
                        black_box(&qkv),
                        shape,
                        KeepMask::All,
                        MaskedRows::Uniform,
                        None,
                        &mut ctx,
                        None,
                        &mut scratch,
                        None,
                        Par::Seq,
                    )
                    .unwrap()
                })
            });
        }
        g.finish();
    }
    // The mixed-length corpus' 64 texts as MiniLM tokenizes them (12 heads of 32), one ragged
    // call: short sequences, where copying and transposing weigh most.
    let lengths = CORPUS_LENGTHS;
    let (heads, d) = (12, 32);
    let t: usize = lengths.iter().sum();
    let squares: usize = lengths.iter().map(|l| l * l).sum();
    let qkv = vals(t * 3 * heads * d, 9);
    let mut ctx = vec![0.0; t * heads * d];
    let mut g = c.benchmark_group("attention/ragged_corpus64_heads12_d32");
    g.throughput(Throughput::Elements((4 * squares * heads * d) as u64));
    for isa in tiers() {
        let k = Kernels::for_isa(isa).unwrap();
        let mut scratch = AttentionScratch::new();
        let shape = RaggedShape {
            lengths: &lengths,
            heads,
            key_dim: d,
        };
        g.bench_function(isa.name(), |b| {
            b.iter(|| {
                k.attention_ragged(
                    black_box(&qkv),
                    shape,
                    KeepMask::All,
                    MaskedRows::Uniform,
                    None,
                    &mut ctx,
                    None,
                    &mut scratch,
                    None,
                    Par::Seq,
                )
                .unwrap()
            })
        });
    }
    g.finish();
}

/// The token counts of `tests/data/corpus/mixed_lengths.txt` under all-MiniLM-L6-v2's tokenizer
/// (truncated to 128): 4,352 tokens.
const CORPUS_LENGTHS: [usize; 64] = [
    120, 94, 10, 65, 118, 14, 90, 84, 99, 16, 54, 105, 101, 48, 59, 117, 111, 25, 44, 40, 50, 27,
    12, 71, 38, 52, 31, 73, 63, 29, 23, 56, 33, 126, 98, 88, 92, 115, 42, 21, 18, 109, 8, 128, 61,
    78, 67, 96, 107, 77, 103, 58, 75, 82, 80, 35, 19, 113, 86, 124, 122, 69, 46, 37,
];

/// The bf16 products (Keras' `mixed_bfloat16`) at the layer shapes, in FLOP/s (compare with
/// `peak_flops`' "amx bf16" line where the tier's `bf16_kernel` is `tiles`, its "avx512 bf16
/// dp" line where it is `dot`, its fp32 FMA line where it is `widen`).
fn gemm_bf16(c: &mut Criterion) {
    let shapes: &[(&str, usize, usize, usize)] = if quick() {
        &[("seed_qkv", 20, 64, 192)]
    } else {
        &[
            ("seed_qkv", 20, 64, 192),
            ("minilm_query_qkv", 16, 384, 1152),
            ("minilm_query_ffn_out", 16, 1536, 384),
            ("bert_qkv", 128, 768, 2304),
            ("bert_ffn_in", 128, 768, 3072),
            ("bert_ffn_out", 128, 3072, 768),
        ]
    };
    for &(name, m, k, n) in shapes {
        let mut g = c.benchmark_group(format!("gemm_bf16/{name}_{m}x{k}x{n}"));
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let a = vals(m * k, 1);
        let w = vals(k * n, 2);
        let bias = vals(n, 3);
        let mut out = vec![0.0; m * n];
        for isa in tiers() {
            let kern = Kernels::for_isa(isa).unwrap();
            let p = kern.pack_bf16(&w, k, n).unwrap();
            let mut q = transformer_encoder_kernels::QuantRows::new();
            q.arm_for(&p);
            kern.prepare(&a, k, &mut q, Par::Seq).unwrap();
            let ep = Epilogue {
                bias: Some(&bias),
                activation: None,
                residual: None,
            };
            for (label, par) in [("t1", Par::Seq), ("t2", Par::Threads(2))] {
                if quick() && label == "t2" {
                    continue;
                }
                g.bench_function(BenchmarkId::new(label, isa), |bch| {
                    bch.iter(|| {
                        kern.gemm_prepared(black_box(&a), &q, m, &p, &ep, &mut out, None, par)
                            .unwrap()
                    })
                });
            }
        }
        g.finish();
    }
}

fn layers(c: &mut Criterion) {
    // (name, hidden, heads, inter, batch, seq, threads)
    let all: &[(&str, usize, usize, usize, usize, usize, usize)] = &[
        ("seed", 64, 8, 64, 2, 10, 1),
        ("minilm_s128_b1", 384, 12, 1536, 1, 128, 2),
        ("bert_base_s128_b1", 768, 12, 3072, 1, 128, 2),
        ("bert_base_s128_b1", 768, 12, 3072, 1, 128, 1),
        ("bert_base_s512_b1", 768, 12, 3072, 1, 512, 2),
        ("bert_base_s128_b8", 768, 12, 3072, 8, 128, 2),
    ];
    for &(name, h, n, f, b, s, t) in all {
        if quick() && name != "seed" {
            continue;
        }
        let mut g = c.benchmark_group(format!("layer/{name}_t{t}"));
        if h >= 768 {
            g.sample_size(10);
        }
        for isa in tiers() {
            let cfg = EncoderConfig::new(f, n).with_activation(Activation::Gelu);
            let w = EncoderWeights::init(&cfg, h, 1).unwrap();
            let threads = if t == 1 {
                Threads::Single
            } else {
                Threads::Pool(Arc::new(
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(t)
                        .build()
                        .unwrap(),
                ))
            };
            let fp32 = TransformerEncoder::with_isa(cfg, w, isa)
                .unwrap()
                .with_threads(threads);
            g.throughput(Throughput::Elements(fp32.flops(b, s) as u64));
            let x = vals(b * s * h, 10);
            let mut out = vec![0.0; x.len()];
            let mut ws = Workspace::new();
            // The same layer in float32, in Keras' mixed_bfloat16 and in Keras' int8 mode.
            let int8 = fp32.quantize().unwrap();
            let bf16 = fp32.clone().with_precision(Precision::Bf16).unwrap();
            for (precision, enc) in [("fp32", &fp32), ("bf16", &bf16), ("int8", &int8)] {
                g.bench_function(BenchmarkId::new(precision, isa), |bch| {
                    bch.iter(|| {
                        enc.forward_into(
                            TensorView::new(black_box(&x), &[b, s, h]),
                            &CallOptions::new(),
                            &mut out,
                            None,
                            &mut ws,
                        )
                        .unwrap()
                    })
                });
            }
        }
        g.finish();
    }
}

#[cfg(feature = "bert")]
fn embedding(c: &mut Criterion) {
    // Texts per second, tokenization included (the workloads of tools/st_anchor.py). Needs the
    // model fetched by .ci/fetch_model.sh; skipped otherwise.
    let dir = std::env::var("TRANSFORMER_ENCODER_MODEL")
        .unwrap_or_else(|_| "target/models/all-MiniLM-L6-v2".into());
    let Ok(enc) = transformer_encoder::SentenceEncoder::from_dir(&dir) else {
        eprintln!("embedding benches skipped: no model at {dir} (run .ci/fetch_model.sh)");
        return;
    };
    let enc = enc
        .with_max_seq_length(128)
        .unwrap()
        .with_threads(Threads::Pool(Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap(),
        )));
    for (name, texts) in common::workloads() {
        if quick() && name != "32-queries" {
            continue;
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut g = c.benchmark_group(format!("embed/{name}_t2"));
        g.throughput(Throughput::Elements(texts.len() as u64));
        g.sample_size(10);
        g.bench_function("all-MiniLM-L6-v2", |b| {
            b.iter(|| enc.embed(black_box(&refs)).unwrap())
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .measurement_time(std::time::Duration::from_secs(2))
        .warm_up_time(std::time::Duration::from_millis(500));
    targets = gemm, gemm_int8, gemm_bf16, small_kernels, layers, embedding
}

#[cfg(not(feature = "bert"))]
fn embedding(_: &mut Criterion) {
    eprintln!("embedding benches skipped: built without the `bert` feature");
}
criterion_main!(benches);
