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
            (Activation::Gelu, false, Precision::F32),
            (Activation::GeluApproximate, true, Precision::F32),
            (Activation::Silu, false, Precision::F32),
            (Activation::Mish, true, Precision::F32),
            (Activation::Gelu, false, Precision::Int8),
            (Activation::Softmax, true, Precision::Int8),
            (Activation::Gelu, false, Precision::Bf16),
            (Activation::Softmax, true, Precision::Bf16),
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

/// Run `f` on its own thread and fail if it has not returned within `secs` (a hang).
fn watchdog(secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(()) => h.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(_) => panic!("hung: no return within {secs} s"),
    }
}

/// A stack whose layers run on different thread settings (every mix of `Single`, `Current`,
/// `Count(2)` and two pools over 3 layers) returns, with its layers' results called one at a
/// time, uniform and ragged, float32 and int8.
#[test]
fn a_stack_mixing_thread_settings_returns_its_layers_results() {
    watchdog(600, || {
        let (p1, p2) = (pool(2), pool(3));
        let settings = [
            Threads::Single,
            Threads::Current,
            Threads::Count(2),
            Threads::Pool(p1),
            Threads::Pool(p2),
        ];
        let h = 64;
        let lengths = [5usize, 3];
        let x = values(8 * h, 11, -1.0, 1.0);
        for precision in [Precision::F32, Precision::Bf16, Precision::Int8] {
            let layers: Vec<TransformerEncoder> = (0..3)
                .map(|l| {
                    let cfg = EncoderConfig::new(128, 4).with_normalize_first(l == 1);
                    let w = EncoderWeights::init(&cfg, h, 20 + l as u64).unwrap();
                    TransformerEncoder::new(cfg, w)
                        .unwrap()
                        .with_precision(precision)
                        .unwrap()
                })
                .collect();
            // The layers one at a time, on one thread.
            let (mut ragged, mut uniform) = (x.clone(), x.clone());
            for l in &layers {
                let l = l.clone().with_threads(Threads::Single);
                ragged = l
                    .forward_ragged(RaggedView::new(&ragged, &lengths), &CallOptions::new())
                    .unwrap();
                uniform = l
                    .forward(TensorView::new(&uniform, &[2, 4, h]), &CallOptions::new())
                    .unwrap();
            }
            for mix in 0..settings.len().pow(3) {
                let stack = EncoderStack::new(
                    layers
                        .iter()
                        .enumerate()
                        .map(|(i, l)| {
                            let s = &settings[mix / settings.len().pow(i as u32) % settings.len()];
                            l.clone().with_threads(s.clone())
                        })
                        .collect(),
                )
                .unwrap();
                let got = stack
                    .forward_ragged(RaggedView::new(&x, &lengths), &CallOptions::new())
                    .unwrap();
                assert!(got == ragged, "{precision} mix {mix}: ragged differs");
                let got = stack
                    .forward(TensorView::new(&x, &[2, 4, h]), &CallOptions::new())
                    .unwrap();
                assert!(got == uniform, "{precision} mix {mix}: uniform differs");
            }
        }
    });
}

/// `Threads::Count(0)` is an error naming `threads`; a count above the team's limit is
/// clamped to it (the same results).
#[test]
fn thread_counts_zero_and_above_the_limit() {
    let enc = big(Isa::best_available(), Activation::Gelu, false);
    let x = values(2 * 9 * 192, 5, -1.0, 1.0);
    let xv = TensorView::new(&x, &[2, 9, 192]);
    let e = enc
        .clone()
        .with_threads(Threads::Count(0))
        .forward(xv, &CallOptions::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("threads") && e.contains("at least 1"), "{e}");
    let want = enc
        .clone()
        .with_threads(Threads::Single)
        .forward(xv, &CallOptions::new())
        .unwrap();
    for n in [1, 2, 5, 100_000] {
        let got = enc
            .clone()
            .with_threads(Threads::Count(n))
            .forward(xv, &CallOptions::new())
            .unwrap();
        assert!(got == want, "Count({n}) differs from one thread");
    }
}

/// 8 callers at once on shared encoders, random shapes, precisions and thread settings, every
/// result bit for bit the single-thread call's.
#[test]
fn stress_eight_callers() {
    watchdog(600, || {
        let h = 192;
        let encs: Vec<Arc<TransformerEncoder>> = [Precision::F32, Precision::Bf16, Precision::Int8]
            .into_iter()
            .map(|p| {
                Arc::new(
                    big(Isa::best_available(), Activation::Gelu, false)
                        .with_precision(p)
                        .unwrap(),
                )
            })
            .collect();
        let shared_pool = pool(2);
        std::thread::scope(|s| {
            for c in 0..8u64 {
                let (encs, shared_pool) = (&encs, &shared_pool);
                s.spawn(move || {
                    for r in 0..12u64 {
                        let pick = |k: u64, n: u64| {
                            (transformer_encoder_kernels::rng::uniform(c, r * 7 + k, 0) * n as f64)
                                as usize
                        };
                        let enc = &encs[pick(1, 2)];
                        let (b, s) = (1 + pick(2, 3), 1 + pick(3, 40));
                        let threads = match pick(4, 4) {
                            0 => Threads::Current,
                            1 => Threads::Count(2),
                            2 => Threads::Count(3),
                            _ => Threads::Pool(shared_pool.clone()),
                        };
                        let x = values(b * s * h, c * 100 + r, -2.0, 2.0);
                        let xv = TensorView::new(&x, &[b, s, h]);
                        let want = enc
                            .as_ref()
                            .clone()
                            .with_threads(Threads::Single)
                            .forward(xv, &CallOptions::new())
                            .unwrap();
                        let got = enc
                            .as_ref()
                            .clone()
                            .with_threads(threads.clone())
                            .forward(xv, &CallOptions::new())
                            .unwrap();
                        assert!(got == want, "caller {c} round {r} ({threads:?}) differs");
                    }
                });
            }
        });
    });
}
