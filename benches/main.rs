//! Criterion benchmarks: the whole layer at the seed shape (more in benches/ as kernels land).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use transformer_encoder::{
    CallOptions, EncoderConfig, Isa, TensorView, TransformerEncoder, Workspace,
};

fn layer_flops(batch: usize, seq: usize, hidden: usize, heads: usize, inter: usize) -> u64 {
    let w = heads * (hidden / heads);
    (batch
        * (2 * seq * hidden * 3 * w
            + 4 * seq * seq * w
            + 2 * seq * w * hidden
            + 4 * seq * hidden * inter)) as u64
}

fn seed_shape(c: &mut Criterion) {
    let mut g = c.benchmark_group("layer/seed_64x8x64_b2_s10");
    g.throughput(Throughput::Elements(layer_flops(2, 10, 64, 8, 64)));
    for isa in Isa::ALL.iter().copied().filter(|i| i.is_available()) {
        let enc = TransformerEncoder::with_isa(
            EncoderConfig::new(64, 8),
            transformer_encoder::EncoderWeights::init(&EncoderConfig::new(64, 8), 64, 1).unwrap(),
            isa,
        )
        .unwrap();
        let x: Vec<f32> = (0..2 * 10 * 64).map(|i| (i % 17) as f32 / 17.0).collect();
        let mut out = vec![0.0; x.len()];
        let mut ws = Workspace::new();
        g.bench_function(isa.name(), |b| {
            b.iter(|| {
                enc.forward_into(
                    TensorView::new(black_box(&x), &[2, 10, 64]),
                    &CallOptions::new(),
                    &mut out,
                    None,
                    &mut ws,
                )
                .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = seed_shape
}
criterion_main!(benches);
