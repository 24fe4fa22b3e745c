//! Thread settings: bit-identical results for every thread count and pool, and calls from
//! inside other pools and parallel iterators.

mod common;
use common::{tiers, values};
use std::sync::Arc;
use transformer_encoder::*;

fn pool(n: usize) -> Arc<rayon::ThreadPool> {
    Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap(),
    )
}

/// A layer big enough that every kernel splits its work between threads.
fn big(isa: Isa, act: Activation, pre: bool) -> TransformerEncoder {
    let cfg = EncoderConfig::new(384, 6)
        .with_activation(act)
        .with_normalize_first(pre);
    let w = EncoderWeights::init(&cfg, 192, 5).unwrap();
    TransformerEncoder::with_isa(cfg, w, isa).unwrap()
}

#[test]
fn bit_identical_for_every_thread_count() {
    let (b, s, h) = (3, 67, 192);
    let x = values(b * s * h, 3, -2.0, 2.0);
    let pad: Vec<u8> = (0..b * s)
        .map(|i| (i % s < s - 3 * (i / s)) as u8)
        .collect();
    for isa in tiers() {
        for (act, pre, precision) in [
            (Activation::Gelu, false, Precision::Fp32),
            (Activation::GeluApproximate, true, Precision::Fp32),
            (Activation::Silu, false, Precision::Fp32),
            (Activation::Mish, true, Precision::Fp32),
            (Activation::Gelu, false, Precision::Int8),
            (Activation::Softmax, true, Precision::Int8),
        ] {
            let enc = big(isa, act, pre).with_precision(precision).unwrap();
            let opts = CallOptions::new().padding_mask(Mask::new(&pad, &[b, s]));
            let xv = TensorView::new(&x, &[b, s, h]);
            let enc = enc.with_threads(Threads::Single);
            let (want, want_s) = enc.forward_with_scores(xv, &opts).unwrap();
            let mut enc = enc;
            for n in [1, 2, 3, 8] {
                enc = enc.with_threads(Threads::Pool(pool(n)));
                let (got, got_s) = enc.forward_with_scores(xv, &opts).unwrap();
                assert!(
                    got == want && got_s == want_s,
                    "{isa} {act} {precision}: {n} threads differ from one"
                );
            }
            enc = enc.with_threads(Threads::Current);
            assert_eq!(
                enc.forward(xv, &opts).unwrap(),
                enc.with_threads(Threads::Single)
                    .forward(xv, &opts)
                    .unwrap()
            );
        }
    }
}

#[test]
fn calls_from_inside_other_pools_and_parallel_iterators() {
    use rayon::prelude::*;
    let (b, s, h) = (2, 33, 192);
    let x = values(b * s * h, 4, -1.0, 1.0);
    let enc = Arc::new(
        big(Isa::best_available(), Activation::Gelu, false).with_threads(Threads::Pool(pool(2))),
    );
    let want = enc
        .forward(TensorView::new(&x, &[b, s, h]), &CallOptions::new())
        .unwrap();
    let outer = pool(3);
    let results: Vec<Vec<f32>> = outer.install(|| {
        (0..8)
            .into_par_iter()
            .map(|_| {
                enc.forward(TensorView::new(&x, &[b, s, h]), &CallOptions::new())
                    .unwrap()
            })
            .collect()
    });
    assert!(results.iter().all(|r| *r == want));
    let enc2 = big(Isa::best_available(), Activation::Gelu, false).with_threads(Threads::Current);
    let nested: Vec<Vec<f32>> = (0..4)
        .into_par_iter()
        .map(|_| {
            enc2.forward(TensorView::new(&x, &[b, s, h]), &CallOptions::new())
                .unwrap()
        })
        .collect();
    assert!(nested.iter().all(|r| *r == want));
}
