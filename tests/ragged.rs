//! Ragged batches (SPEC section 11): each sequence's output is bit-identical to a batch-1 call on
//! that sequence alone, on every tier, precision and thread count, with masks, scores and
//! training-mode dropout; inconsistent arguments are errors naming the argument.

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

/// Layers on `isa`: post-norm GELU, pre-norm ReLU with heads not dividing the hidden size, each
/// in float32 and int8; big enough that the products and the attention split between threads.
fn layers(isa: Isa, dropout: f64) -> Vec<(String, TransformerEncoder)> {
    let mut out = Vec::new();
    for (name, cfg, hidden) in [
        (
            "post-norm gelu",
            EncoderConfig::new(256, 4).with_activation(Activation::Gelu),
            64,
        ),
        (
            "pre-norm relu, 3 heads of 13",
            EncoderConfig::new(96, 3)
                .with_activation(Activation::Relu)
                .with_normalize_first(true),
            40,
        ),
    ] {
        let cfg = cfg.with_dropout(dropout);
        let w = EncoderWeights::init(&cfg, hidden, 11).unwrap();
        let enc = TransformerEncoder::with_isa(cfg, w, isa).unwrap();
        assert_eq!(enc.isa(), isa, "forced tier {isa} did not run");
        let int8 = enc.quantize().unwrap();
        assert_eq!(int8.isa(), isa, "forced tier {isa} did not run (int8)");
        out.push((format!("{name} fp32"), enc));
        out.push((format!("{name} int8"), int8));
    }
    out
}

/// Length mixes: empty calls, lengths 0 and 1, one long sequence among many short ones (first,
/// middle, last), and seeded random mixes.
fn mixes() -> Vec<Vec<usize>> {
    let mut m = vec![
        vec![],
        vec![0],
        vec![1],
        vec![0, 1, 0, 7, 1, 0, 33, 2],
        vec![130, 3, 3, 2, 3, 1, 3, 3, 4, 3],
        vec![3, 3, 2, 3, 130, 1, 3, 3, 4, 3],
        vec![3, 3, 2, 3, 1, 3, 3, 4, 3, 130],
        vec![64, 64],
    ];
    for seed in 0..6u64 {
        let n = 1 + (seed as usize * 5) % 12;
        let lens = values(n, 100 + seed, 0.0, 70.0)
            .into_iter()
            .map(|v| v as usize)
            .collect();
        m.push(lens);
    }
    m
}

fn threads() -> Vec<(&'static str, Threads)> {
    vec![
        ("single", Threads::Single),
        ("pool 1", Threads::Pool(pool(1))),
        ("pool 2", Threads::Pool(pool(2))),
        ("pool 3", Threads::Pool(pool(3))),
    ]
}

/// Each sequence alone, as a batch of one (on the caller's thread), end to end.
fn one_by_one(
    enc: &TransformerEncoder,
    x: &[f32],
    lengths: &[usize],
    opts: &[CallOptions<'_>],
) -> Vec<f32> {
    let h = enc.hidden_dim();
    let mut out = Vec::with_capacity(x.len());
    let mut start = 0;
    for (i, &len) in lengths.iter().enumerate() {
        let xs = &x[start * h..(start + len) * h];
        let o = opts.get(i).copied().unwrap_or_default();
        out.extend(enc.forward(TensorView::new(xs, &[1, len, h]), &o).unwrap());
        start += len;
    }
    out
}

fn same_bits(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            x.to_bits() == y.to_bits(),
            "{what}: element {i}: ragged {x} vs alone {y}"
        );
    }
}

#[test]
fn every_sequence_is_bit_identical_to_a_batch_of_one() {
    for isa in tiers() {
        for (name, enc) in layers(isa, 0.0) {
            let h = enc.hidden_dim();
            let alone: Vec<(Vec<usize>, Vec<f32>, Vec<f32>)> = mixes()
                .into_iter()
                .enumerate()
                .map(|(i, lengths)| {
                    let t: usize = lengths.iter().sum();
                    let x = values(t * h, 7 + i as u64, -2.0, 2.0);
                    let single = enc.clone().with_threads(Threads::Single);
                    let y = one_by_one(&single, &x, &lengths, &[]);
                    (lengths, x, y)
                })
                .collect();
            for (tname, th) in threads() {
                let e = enc.clone().with_threads(th);
                let mut ws = Workspace::new();
                for (lengths, x, want) in &alone {
                    let what = format!("{isa} {name} {tname} lengths {lengths:?}");
                    let got = e
                        .forward_ragged(RaggedView::new(x, lengths), &CallOptions::new())
                        .unwrap();
                    same_bits(&got, want, &what);
                    // A reused workspace (grown by earlier, larger calls) gives the same bits.
                    let mut out = vec![f32::NAN; x.len()];
                    let v = RaggedView::new(x, lengths);
                    e.forward_ragged_into(v, &CallOptions::new(), &mut out, None, &mut ws)
                        .unwrap();
                    same_bits(&out, want, &format!("{what} (workspace)"));
                }
            }
        }
    }
}

/// Per-sequence attention masks `[len, len]` and padding masks, and the scores `[N, len, len]`.
#[test]
fn masks_and_scores_per_sequence() {
    let lengths = [9usize, 0, 1, 40, 5, 17];
    for isa in tiers() {
        for (name, enc) in layers(isa, 0.0) {
            let h = enc.hidden_dim();
            let heads = enc.num_heads();
            let t: usize = lengths.iter().sum();
            let x = values(t * h, 21, -2.0, 2.0);
            // Causal blocks with some keys dropped, and a padding mask that masks every key of
            // one sequence (its rows then follow the masked-row policy).
            let mut blocks: Vec<u8> = Vec::new();
            let mut pad: Vec<u8> = Vec::new();
            for (s, &len) in lengths.iter().enumerate() {
                for i in 0..len {
                    for j in 0..len {
                        blocks.push((j <= i && (i + j + s) % 7 != 3) as u8);
                    }
                }
                pad.extend((0..len).map(|j| (s != 4 && j % 5 != 4) as u8));
            }
            let q = blocks.len();
            for (tname, th) in threads() {
                let e = enc.clone().with_threads(th);
                let opts = CallOptions::new()
                    .attention_mask(Mask::new(&blocks[..], &[q]))
                    .padding_mask(Mask::new(&pad[..], &[t]));
                let (got, scores) = e
                    .forward_ragged_with_scores(RaggedView::new(&x, &lengths), &opts)
                    .unwrap();
                let (mut start, mut square, mut sstart) = (0, 0, 0);
                for &len in &lengths {
                    let what = format!("{isa} {name} {tname} len {len}");
                    let xs = &x[start * h..(start + len) * h];
                    let o = CallOptions::new()
                        .attention_mask(Mask::new(
                            &blocks[square..square + len * len],
                            &[1, len, len],
                        ))
                        .padding_mask(Mask::new(&pad[start..start + len], &[1, len]));
                    let (y, sc) = e
                        .forward_with_scores(TensorView::new(xs, &[1, len, h]), &o)
                        .unwrap();
                    same_bits(&got[start * h..(start + len) * h], &y, &what);
                    let ns = heads * len * len;
                    same_bits(&scores[sstart..sstart + ns], &sc, &format!("{what} scores"));
                    start += len;
                    square += len * len;
                    sstart += ns;
                }
                assert_eq!(sstart, scores.len());
            }
        }
    }
}

/// Training-mode dropout draws by position within the sequence: a ragged call and a uniform
/// batch both give each sequence what a batch-1 call on it gives.
#[test]
fn dropout_draws_by_position_in_the_sequence() {
    let lengths = [12usize, 3, 0, 30];
    for isa in tiers() {
        for (name, enc) in layers(isa, 0.25) {
            let h = enc.hidden_dim();
            let t: usize = lengths.iter().sum();
            let x = values(t * h, 5, -2.0, 2.0);
            let train = CallOptions::new().training(9);
            let each = vec![train; lengths.len()];
            let want = one_by_one(&enc, &x, &lengths, &each);
            let infer = one_by_one(&enc, &x, &lengths, &[]);
            assert!(
                want.iter().zip(&infer).any(|(a, b)| a != b),
                "{isa} {name}: dropout changed nothing"
            );
            for (tname, th) in threads() {
                let e = enc.clone().with_threads(th);
                let got = e
                    .forward_ragged(RaggedView::new(&x, &lengths), &train)
                    .unwrap();
                same_bits(
                    &got,
                    &want,
                    &format!("{isa} {name} {tname} ragged training"),
                );
            }
            // A uniform batch of three copies of one sequence: three identical outputs.
            let s = 12;
            let xs = &x[..s * h];
            let batch: Vec<f32> = xs.iter().chain(xs).chain(xs).copied().collect();
            let y = enc
                .forward(TensorView::new(&batch, &[3, s, h]), &train)
                .unwrap();
            for b in 0..3 {
                same_bits(
                    &y[b * s * h..(b + 1) * s * h],
                    &want[..s * h],
                    &format!("{isa} {name} batch item {b}"),
                );
            }
        }
    }
}

fn err(r: Result<Vec<f32>>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn inconsistent_arguments_are_errors_naming_the_argument() {
    let cfg = EncoderConfig::new(32, 2);
    let enc = TransformerEncoder::init(cfg, 16, 3).unwrap();
    let x = values(10 * 16, 1, -1.0, 1.0);
    // sum(lengths) != rows.
    let e = err(enc.forward_ragged(RaggedView::new(&x, &[4, 5]), &CallOptions::new()));
    assert!(e.contains("inputs") && e.contains("sum(lengths)"), "{e}");
    let e = err(enc.forward_ragged(RaggedView::new(&x, &[usize::MAX, 2]), &CallOptions::new()));
    assert!(e.contains("lengths") && e.contains("overflow"), "{e}");
    let lengths = [4usize, 6];
    let v = RaggedView::new(&x, &lengths);
    // A mask of the wrong size: an attention mask must hold 4*4 + 6*6 = 52 values.
    let m = [1u8; 51];
    let opts = CallOptions::new().attention_mask(Mask::new(&m[..], &[51]));
    let e = err(enc.forward_ragged(v, &opts));
    assert!(e.contains("attention_mask") && e.contains("52"), "{e}");
    let opts = CallOptions::new().attention_mask(Mask::new(&m[..], &[1, 51]));
    let e = err(enc.forward_ragged(v, &opts));
    assert!(e.contains("attention_mask"), "{e}");
    let p = [1u8; 9];
    let opts = CallOptions::new().padding_mask(Mask::new(&p[..], &[9]));
    let e = err(enc.forward_ragged(v, &opts));
    assert!(e.contains("padding_mask") && e.contains("10"), "{e}");
    // Wrong output and scores buffers.
    let mut ws = Workspace::new();
    let mut out = vec![0.0; 10 * 16 - 1];
    let r = enc.forward_ragged_into(v, &CallOptions::new(), &mut out, None, &mut ws);
    assert!(r.unwrap_err().to_string().contains("out"));
    let mut out = vec![0.0; 10 * 16];
    let mut sc = vec![0.0; 2 * 52 + 1];
    let r = enc.forward_ragged_into(v, &CallOptions::new(), &mut out, Some(&mut sc), &mut ws);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("scores") && e.contains("104"), "{e}");
    // On error nothing was written.
    assert!(out.iter().all(|&v| v == 0.0));
}

/// A stack hands a post-norm layer's output to the next post-norm int8 layer already quantized
/// (by the LayerNorm that produced it): every layer of the stack gives the same bits as the
/// layers called one at a time (which quantize their input themselves), uniform and ragged,
/// with pre-norm layers in between, on every tier and thread count, and after a failed call.
#[test]
fn a_stack_hands_quantized_outputs_on_bit_for_bit() {
    for isa in tiers() {
        // Inference, and training mode with dropout (between each product and its LayerNorm).
        for (dropout, seed) in [(0.0, None), (0.2, Some(7u64))] {
            let opts = match seed {
                Some(s) => CallOptions::new().training(s),
                None => CallOptions::new(),
            };
            stack_case(isa, dropout, &opts);
        }
    }
}

fn stack_case(isa: Isa, dropout: f64, opts: &CallOptions<'_>) {
    let h = 48;
    let layers: Vec<TransformerEncoder> = [false, false, true, false, false, true, false]
        .iter()
        .enumerate()
        .map(|(i, &pre)| {
            let cfg = EncoderConfig::new(96, 4)
                .with_activation(Activation::Gelu)
                .with_normalize_first(pre)
                .with_dropout(dropout);
            let w = EncoderWeights::init(&cfg, h, 30 + i as u64).unwrap();
            let enc = TransformerEncoder::with_isa(cfg, w, isa).unwrap();
            let q = enc.quantize().unwrap();
            assert_eq!(q.isa(), isa, "forced tier {isa} did not run");
            q
        })
        .collect();
    let lengths = [5usize, 0, 17, 1, 9, 33, 2, 12, 3, 6];
    let t: usize = lengths.iter().sum();
    let x = values(t * h, 77, -3.0, 3.0);
    // One layer at a time, each call on its own.
    let mut want_ragged = x.clone();
    let mut want_uniform = x.clone();
    for l in &layers {
        let l = l.clone().with_threads(Threads::Single);
        want_ragged = l
            .forward_ragged(RaggedView::new(&want_ragged, &lengths), opts)
            .unwrap();
        want_uniform = l
            .forward(TensorView::new(&want_uniform, &[2, t / 2, h]), opts)
            .unwrap();
    }
    for (tname, th) in threads() {
        let stack = EncoderStack::new(layers.clone()).unwrap().with_threads(th);
        let what = format!("{isa} {tname} dropout {dropout}");
        let mut ws = StackWorkspace::new();
        let mut out = vec![f32::NAN; x.len()];
        // A failed call first (a wrong length), then the same workspace again.
        let bad = [5usize, 0, 17];
        assert!(
            stack
                .forward_ragged_into(RaggedView::new(&x, &bad), opts, &mut out, &mut ws)
                .is_err()
        );
        for _ in 0..2 {
            let v = RaggedView::new(&x, &lengths);
            stack
                .forward_ragged_into(v, opts, &mut out, &mut ws)
                .unwrap();
            same_bits(&out, &want_ragged, &format!("{what} ragged"));
            let v = TensorView::new(&x, &[2, t / 2, h]);
            stack.forward_into(v, opts, &mut out, &mut ws).unwrap();
            same_bits(&out, &want_uniform, &format!("{what} uniform"));
        }
    }
}

/// Layers on different tiers in one int8 stack (their quantized rows differ in layout): the stack
/// still gives the bits of its layers called one at a time.
#[test]
fn a_stack_of_layers_on_different_tiers() {
    let tiers = tiers();
    let (Some(&first), Some(&last)) = (tiers.first(), tiers.last()) else {
        return;
    };
    let h = 32;
    let mut layers = Vec::new();
    for (i, isa) in [last, first, last, first].into_iter().enumerate() {
        let cfg = EncoderConfig::new(64, 4).with_activation(Activation::Relu);
        let w = EncoderWeights::init(&cfg, h, 50 + i as u64).unwrap();
        let q = TransformerEncoder::with_isa(cfg, w, isa)
            .unwrap()
            .quantize()
            .unwrap();
        assert_eq!(q.isa(), isa, "forced tier {isa} did not run");
        layers.push(q);
    }
    let lengths = [3usize, 9, 1, 12];
    let x = values(25 * h, 5, -2.0, 2.0);
    let mut want = x.clone();
    for l in &layers {
        want = l
            .forward_ragged(RaggedView::new(&want, &lengths), &CallOptions::new())
            .unwrap();
    }
    let stack = EncoderStack::new(layers).unwrap();
    let got = stack
        .forward_ragged(RaggedView::new(&x, &lengths), &CallOptions::new())
        .unwrap();
    same_bits(&got, &want, &format!("{first} / {last} stack"));
}
