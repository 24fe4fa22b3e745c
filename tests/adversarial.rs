//! Adversarial inputs from the reliability checklist (shared docs, section 8), each test named
//! after the rows it covers, every check on every tier this machine has (forced, and asserted to
//! have run). Rows covered elsewhere are listed in the README's "Reliability" section.

mod common;
use common::{tiers, values};
use std::sync::Arc;
use transformer_encoder::*;
use transformer_encoder_kernels::{
    AttentionScratch, AttentionShape, KeepMask, Kernels, MaskedRows, Par,
};

fn enc(
    isa: Isa,
    h: usize,
    n: usize,
    f: usize,
    act: Activation,
    pre: bool,
    seed: u64,
) -> TransformerEncoder {
    let cfg = EncoderConfig::new(f, n)
        .with_activation(act)
        .with_normalize_first(pre);
    let w = EncoderWeights::init(&cfg, h, seed).unwrap();
    let e = TransformerEncoder::with_isa(cfg, w, isa).unwrap();
    assert_eq!(e.isa(), isa, "the forced tier must be the one that runs");
    e
}

/// `|fast - ref| <= atol + rtol |ref|`, NaN only where the reference is NaN.
fn close(fast: &[f32], r: &[f64], atol: f64, rtol: f64, what: &str) {
    assert_eq!(fast.len(), r.len(), "{what}: length");
    for (i, (f, w)) in fast.iter().zip(r).enumerate() {
        if f.is_nan() || w.is_nan() {
            assert!(f.is_nan() && w.is_nan(), "{what}[{i}]: {f} vs {w}");
            continue;
        }
        let d = (*f as f64 - w).abs();
        assert!(
            d <= atol + rtol * w.abs(),
            "{what}[{i}]: {f} vs {w} (diff {d:e})"
        );
    }
}

fn vs_reference(
    e: &TransformerEncoder,
    x: &[f32],
    shape: &[usize],
    o: &CallOptions<'_>,
    what: &str,
) {
    let xv = TensorView::new(x, shape);
    let r = reference::forward(e.config(), &e.weights(), xv, o, false).unwrap();
    let y = e.forward(xv, o).unwrap();
    let scale = r
        .output
        .iter()
        .filter(|v| v.is_finite())
        .fold(1.0f64, |m, v| m.max(v.abs()));
    close(&y, &r.output, 1e-5 * scale, 1e-4, what);
    let rs = reference::forward(e.config(), &e.weights(), xv, o, true).unwrap();
    let (y2, s) = e.forward_with_scores(xv, o).unwrap();
    close(
        &y2,
        &rs.output,
        1e-5 * scale,
        1e-4,
        &format!("{what} (scores call)"),
    );
    close(&s, &rs.scores, 1e-6, 1e-4, &format!("{what} scores"));
}

// ------------------------------------------------------------------------ 8.1 numerics

/// Softmax rows through the attention kernel (D = 1, q = 1, so each logit is its key).
fn softmax_probs(isa: Isa, logits: &[f32]) -> Vec<f32> {
    let s = logits.len();
    let mut qkv = vec![0.0f32; s * 3];
    for (j, l) in logits.iter().enumerate() {
        qkv[j * 3] = 1.0;
        qkv[j * 3 + 1] = *l;
        qkv[j * 3 + 2] = 1.0;
    }
    let shape = AttentionShape {
        batch: 1,
        seq: s,
        heads: 1,
        key_dim: 1,
    };
    let mut ctx = vec![0.0; s];
    let mut p = vec![0.0; s * s];
    Kernels::for_isa(isa)
        .unwrap()
        .attention(
            &qkv,
            shape,
            KeepMask::All,
            MaskedRows::Zeros,
            None,
            &mut ctx,
            Some(&mut p),
            &mut AttentionScratch::new(),
            None,
            Par::Seq,
        )
        .unwrap();
    p[..s].to_vec()
}

#[test]
fn n2_softmax_overflow_rows() {
    for isa in tiers() {
        let p = softmax_probs(isa, &[-1000.0, -1001.0, -1002.0]);
        for (a, b) in p.iter().zip([0.66524096f32, 0.24472847, 0.09003057]) {
            assert!(((a - b) / b).abs() <= 1.2e-6, "{isa}: {p:?}");
        }
        let p = softmax_probs(isa, &[90.0, 89.0, 88.0, -f32::MAX, -f32::MAX]);
        assert!(
            p.iter().all(|v| v.is_finite())
                && p[3] == 0.0
                && (p.iter().sum::<f32>() - 1.0).abs() < 1e-6,
            "{isa}: {p:?}"
        );
        assert_eq!(
            softmax_probs(isa, &[f32::MAX, f32::MAX]),
            vec![0.5, 0.5],
            "{isa}"
        );
        assert_eq!(softmax_probs(isa, &[3.0]), vec![1.0], "{isa}");
        for s in [
            1usize, 2, 7, 8, 9, 15, 16, 17, 31, 33, 64, 127, 129, 511, 513, 1025,
        ] {
            let l = values(s, s as u64, -50.0, 50.0);
            let p = softmax_probs(isa, &l);
            let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z: f64 = l.iter().map(|v| (*v as f64 - m).exp()).sum();
            for (j, v) in p.iter().enumerate() {
                let want = (l[j] as f64 - m).exp() / z;
                assert!(
                    (*v as f64 - want).abs() <= 1e-6 * want.max(1e-30) + 1e-7,
                    "{isa} S={s}: {v} vs {want}"
                );
            }
        }
    }
}

fn ln(isa: Isa, row: &[f32], residual: Option<&[f32]>) -> Vec<f32> {
    let n = row.len();
    let (g, b) = (vec![1.0f32; n], vec![0.0f32; n]);
    let mut out = vec![0.0; n];
    Kernels::for_isa(isa)
        .unwrap()
        .layer_norm(
            row,
            residual,
            n,
            &g,
            &b,
            1e-5,
            &mut out,
            None,
            None,
            Par::Seq,
        )
        .unwrap();
    out
}

fn ln_ref(row: &[f64]) -> Vec<f64> {
    let n = row.len() as f64;
    let m = row.iter().sum::<f64>() / n;
    let v = row.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
    row.iter().map(|x| (x - m) / (v + 1e-5).sqrt()).collect()
}

#[test]
fn n3_layer_norm_cancellation_rows() {
    for isa in tiers() {
        for base in [40000.0f32, 80000.0] {
            let y = ln(isa, &[base, base + 1.0, base + 2.0, base + 3.0], None);
            for (a, b) in y.iter().zip([-1.341635f32, -0.447212, 0.447212, 1.341635]) {
                assert!((a - b).abs() < 2e-6, "{isa} {base}: {y:?}");
            }
        }
        // Constant rows give beta (0 here) exactly.
        for c in [1234.0f32, 0.0, 1e-30, 1e30] {
            assert!(
                ln(isa, &[c; 256], None).iter().all(|v| *v == 0.0),
                "{isa} constant {c}"
            );
        }
        // mean + i * 1e-3 and randn + 2000: against the float64 two-pass reference of the same
        // f32 inputs; and 3000 + 0.01 noise arriving as a residual sum (pre-norm with an offset).
        for mean in [0.0f32, 1e2, 1e3, 1e4] {
            let row: Vec<f32> = (0..768).map(|i| mean + i as f32 * 1e-3).collect();
            let want = ln_ref(&row.iter().map(|v| *v as f64).collect::<Vec<_>>());
            close(
                &ln(isa, &row, None),
                &want,
                1e-5,
                5e-5,
                &format!("{isa} mean {mean}"),
            );
        }
        let row: Vec<f32> = values(768, 3, -1.0, 1.0)
            .iter()
            .map(|v| v + 2000.0)
            .collect();
        close(
            &ln(isa, &row, None),
            &ln_ref(&row.iter().map(|v| *v as f64).collect::<Vec<_>>()),
            1e-5,
            1e-4,
            "randn+2000",
        );
        let a = values(768, 4, -0.01, 0.01);
        let r: Vec<f32> = values(768, 5, -0.01, 0.01)
            .iter()
            .map(|v| v + 3000.0)
            .collect();
        let want = ln_ref(
            &a.iter()
                .zip(&r)
                .map(|(x, y)| *x as f64 + *y as f64)
                .collect::<Vec<_>>(),
        );
        close(
            &ln(isa, &a, Some(&r)),
            &want,
            1e-4,
            1e-3,
            &format!("{isa} 3000 + 0.01 noise"),
        );
        // Irregular shapes (S6).
        for (rows, n) in [(15usize, 3usize), (30, 300), (256, 768), (257, 768)] {
            let x = values(rows * n, n as u64, -3.0, 3.0);
            let (g, b) = (values(n, 1, 0.5, 1.5), values(n, 2, -1.0, 1.0));
            let mut out = vec![0.0; rows * n];
            Kernels::for_isa(isa)
                .unwrap()
                .layer_norm(
                    &x,
                    None,
                    n,
                    &g,
                    &b,
                    1e-5,
                    &mut out,
                    None,
                    None,
                    Par::Threads(2),
                )
                .unwrap();
            let x64: Vec<f64> = x.iter().map(|v| *v as f64).collect();
            let g64: Vec<f64> = g.iter().map(|v| *v as f64).collect();
            let b64: Vec<f64> = b.iter().map(|v| *v as f64).collect();
            let want =
                transformer_encoder_kernels::reference::layer_norm(&x64, n, &g64, &b64, 1e-5);
            close(&out, &want, 1e-5, 1e-4, &format!("{isa} {rows}x{n}"));
        }
    }
}

#[test]
fn n4_n5_gelu_and_exp_special_points() {
    for isa in tiers() {
        let k = Kernels::for_isa(isa).unwrap();
        let mut g = [-5.0f32, -10.0, -4.0, -6.0, 1e4, -1e4, 0.0, -0.0];
        k.activation(Activation::Gelu, &mut g, 1).unwrap();
        assert!(
            (g[0] as f64 / -1.433_257_7e-6 - 1.0).abs() < 1e-5,
            "{isa} gelu(-5) = {}",
            g[0]
        );
        assert!(g[1] < 0.0, "{isa}: gelu(-10) must not flush to 0: {}", g[1]);
        assert!(g[2] < g[3] && g[3] < 0.0 || g[2] < 0.0, "{isa}: tail");
        assert_eq!(g[4], 1e4);
        assert!(g[5] == 0.0, "{isa} gelu(-1e4) = {}", g[5]);
        assert!(g[6] == 0.0 && g[7] == 0.0);
        // The tail is monotone above -10.
        let xs: Vec<f32> = (0..10_000).map(|i| -10.0 + i as f32 * 1e-3).collect();
        let mut y = xs.clone();
        k.activation(Activation::Gelu, &mut y, 1).unwrap();
        let min_at = y
            .iter()
            .enumerate()
            .fold(
                (0, f32::MAX),
                |m, (i, v)| if *v < m.1 { (i, *v) } else { m },
            )
            .0;
        assert!(
            y[..min_at].windows(2).all(|w| w[1] <= w[0]),
            "{isa}: gelu not monotone in the tail"
        );
        let mut e = [
            f32::NEG_INFINITY,
            -1e30,
            -f32::MAX,
            -104.0,
            -103.97,
            -87.34,
            0.0,
            88.73,
            f32::INFINITY,
            f32::NAN,
        ];
        k.exp(&mut e);
        assert_eq!(
            &e[..6],
            &[0.0; 6],
            "{isa}: exp flushes to 0, never FLT_MIN, subnormal or NaN"
        );
        assert_eq!(e[6], 1.0);
        assert!(e[7] == f32::INFINITY && e[8] == f32::INFINITY && e[9].is_nan());
        // ReLU on NaN, -0, +0, inf.
        let mut r = [f32::NAN, -0.0, 0.0, f32::INFINITY, f32::NEG_INFINITY];
        k.activation(Activation::Relu, &mut r, 1).unwrap();
        assert!(r[0].is_nan(), "{isa}: relu(NaN) stays NaN");
        assert_eq!(&r[1..], &[0.0, 0.0, f32::INFINITY, 0.0]);
    }
}

#[test]
fn n6_denormal_inputs_and_weights() {
    // No subnormal is produced from normal inputs, and subnormal inputs/weights run to finite
    // results (timing is a benchmark matter, not a unit test).
    for isa in tiers() {
        let cfg = EncoderConfig::new(32, 4).with_activation(Activation::Gelu);
        let w = EncoderWeights::init(&cfg, 16, 1).unwrap();
        let tiny = w.clone().map_values(|_, t| t.fill(1e-39));
        let e = TransformerEncoder::with_isa(cfg.clone(), tiny, isa).unwrap();
        let x = vec![1e-39f32; 2 * 5 * 16];
        let y = e
            .forward(TensorView::new(&x, &[2, 5, 16]), &CallOptions::new())
            .unwrap();
        assert!(y.iter().all(|v| v.is_finite()), "{isa}");
        let e = TransformerEncoder::with_isa(cfg, w, isa).unwrap();
        let x = values(2 * 5 * 16, 1, -1.0, 1.0);
        let (y, s) = e
            .forward_with_scores(TensorView::new(&x, &[2, 5, 16]), &CallOptions::new())
            .unwrap();
        assert!(
            y.iter().chain(&s).all(|v| !v.is_subnormal()),
            "{isa}: a subnormal was produced"
        );
    }
}

#[test]
fn n7_a7_half_precision_storage() {
    // bf16 / f16 storage rounds every weight to nearest-even; NaN stays NaN; a finite weight the
    // format cannot hold is an error naming the tensor, never a silent infinity.
    for h in 0..=u16::MAX {
        let b = half::bf16::from_bits(h);
        let back = half::bf16::from_f32(b.to_f32());
        assert!(
            back.to_bits() == h || (b.is_nan() && back.is_nan()),
            "bf16 {h:#x}"
        );
    }
    assert_eq!(
        half::bf16::from_f32(f32::from_bits(0x3F80_8000)).to_bits(),
        0x3F80,
        "tie to even"
    );
    assert_eq!(
        half::bf16::from_f32(f32::from_bits(0x3F81_8000)).to_bits(),
        0x3F82,
        "tie to even"
    );
    let cfg = EncoderConfig::new(8, 2);
    let w = EncoderWeights::init(&cfg, 4, 1).unwrap();
    let big = w.map_values(|name, t| {
        if name == "feedforward_intermediate_dense/kernel" {
            t[0] = 70000.0;
        }
    });
    let e = TransformerEncoder::new(cfg.clone().with_dtype("float16"), big.clone()).unwrap_err();
    assert!(
        matches!(&e, Error::Weights { name, .. } if name == "feedforward_intermediate_dense/kernel"),
        "{e}"
    );
    assert!(TransformerEncoder::new(cfg.clone().with_dtype("bfloat16"), big.clone()).is_ok());
    let huge = big.clone().map_values(|name, t| {
        if name == "self_attention_layer/query/kernel" {
            t[0] = f32::MAX;
        }
    });
    assert!(
        TransformerEncoder::new(cfg.with_dtype("bfloat16"), huge).is_err(),
        "f32::MAX overflows bf16"
    );
}

#[test]
fn n8_n9_large_values_and_nan_weights_propagate_identically() {
    let (b, s, h) = (2, 6, 24);
    let mut x = values(b * s * h, 3, -1.0, 1.0);
    x.iter_mut().step_by(7).for_each(|v| *v *= 1e4);
    let mut outs = Vec::new();
    for isa in tiers() {
        let e = enc(isa, h, 4, 40, Activation::Gelu, false, 2);
        let y = e
            .forward(TensorView::new(&x, &[b, s, h]), &CallOptions::new())
            .unwrap();
        assert!(
            y.iter().all(|v| v.is_finite()),
            "{isa}: |x| up to 1e4 stays finite"
        );
        // Logit overflow and non-finite weights: no panic; NaN positions the same on every tier
        // and thread count.
        let big: Vec<f32> = x.iter().map(|v| v * 1e16).collect();
        let mut pattern = Vec::new();
        for t in [
            Threads::Single,
            Threads::Pool(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(3)
                    .build()
                    .unwrap(),
            )),
        ] {
            let e = enc(isa, h, 4, 40, Activation::Gelu, false, 2).with_threads(t);
            let y = e
                .forward(TensorView::new(&big, &[b, s, h]), &CallOptions::new())
                .unwrap();
            pattern.push(y.iter().map(|v| v.is_nan()).collect::<Vec<_>>());
        }
        assert_eq!(pattern[0], pattern[1], "{isa}");
        let poisoned = e.weights().map_values(|name, t| match name {
            "self_attention_layer/value/kernel" => t[5] = f32::NAN,
            "feedforward_output_dense/kernel" => t[3] = f32::INFINITY,
            _ => {}
        });
        let e2 = TransformerEncoder::with_isa(e.config().clone(), poisoned, isa).unwrap();
        let y = e2
            .forward(TensorView::new(&x, &[b, s, h]), &CallOptions::new())
            .unwrap();
        outs.push(y.iter().map(|v| v.is_nan()).collect::<Vec<_>>());
    }
    assert!(
        outs.windows(2).all(|w| w[0] == w[1]),
        "NaN positions differ between tiers"
    );
}

// ------------------------------------------------------------------------ 8.2 shapes

#[test]
fn s1_s3_sizes_around_vector_widths_and_blocks() {
    let hiddens = [
        1usize, 2, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257,
    ];
    for isa in tiers() {
        for (i, &h) in hiddens.iter().enumerate() {
            for n in [1, 3, 2, h] {
                if n > h {
                    continue;
                }
                let f = [1, h + 1, 3 * h + 1, 4 * h][i % 4];
                let e = enc(
                    isa,
                    h,
                    n,
                    f,
                    Activation::ALL[i % Activation::ALL.len()],
                    i % 2 == 0,
                    i as u64,
                );
                let (b, s) = (1 + i % 3, 1 + (i * 5) % 9);
                let x = values(b * s * h, i as u64, -2.0, 2.0);
                vs_reference(
                    &e,
                    &x,
                    &[b, s, h],
                    &CallOptions::new(),
                    &format!("{isa} h={h} n={n} f={f}"),
                );
            }
        }
        // head_dim around the widths, and batch == seq == heads (S3).
        for d in [1usize, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65] {
            let e = enc(isa, 2 * d, 2, 8, Activation::Relu, false, d as u64);
            let x = values(2 * 2 * 2 * d, d as u64, -1.0, 1.0);
            vs_reference(
                &e,
                &x,
                &[2, 2, 2 * d],
                &CallOptions::new(),
                &format!("{isa} head_dim={d}"),
            );
        }
        let e = enc(isa, 12, 4, 12, Activation::Gelu, false, 9);
        let x = values(4 * 4 * 12, 9, -1.0, 1.0);
        vs_reference(
            &e,
            &x,
            &[4, 4, 12],
            &CallOptions::new(),
            &format!("{isa} batch == seq == heads"),
        );
        let x = values(12 * 12 * 12, 10, -1.0, 1.0);
        vs_reference(
            &e,
            &x,
            &[12, 12, 12],
            &CallOptions::new(),
            &format!("{isa} batch == seq == hidden"),
        );
    }
}

#[test]
fn s2_sequence_lengths_around_kernel_switch_points() {
    for isa in tiers() {
        let e = enc(isa, 8, 2, 12, Activation::Gelu, false, 5);
        for (k, s) in [
            1usize, 2, 3, 15, 16, 17, 63, 64, 65, 127, 128, 129, 511, 512, 513, 1023, 1024, 1025,
            1026, 1040,
        ]
        .into_iter()
        .enumerate()
        {
            let b = [1usize, 2, 3, 7][k % 4].min(if s > 500 { 1 } else { 7 });
            let x = values(b * s * 8, s as u64, -1.0, 1.0);
            let pad: Vec<u8> = (0..b * s).map(|i| (i % s < s - s / 4) as u8).collect();
            let o = CallOptions::new().padding_mask(Mask::new(&pad, &[b, s]));
            vs_reference(&e, &x, &[b, s, 8], &o, &format!("{isa} seq={s} batch={b}"));
        }
    }
}

#[test]
fn s4_s5_empty_batches_misaligned_and_sentinel_guarded_buffers() {
    for isa in tiers() {
        let e = enc(isa, 33, 3, 17, Activation::Silu, true, 4);
        assert!(
            e.forward(TensorView::new(&[], &[0, 7, 33]), &CallOptions::new())
                .unwrap()
                .is_empty()
        );
        assert!(
            e.forward(TensorView::new(&[], &[3, 0, 33]), &CallOptions::new())
                .unwrap()
                .is_empty()
        );
        let (b, s, h) = (2, 5, 33);
        let n = b * s * h;
        let base = values(n, 4, -1.0, 1.0);
        let want = e
            .forward(TensorView::new(&base, &[b, s, h]), &CallOptions::new())
            .unwrap();
        for off in 0..16 {
            // The input at every element offset; the output between sentinels.
            let mut xin = vec![f32::NAN; off + n + 40];
            xin[off..off + n].copy_from_slice(&base);
            let mut buf = vec![-7.5f32; off + n + 40];
            let mut ws = Workspace::new();
            e.forward_into(
                TensorView::new(&xin[off..off + n], &[b, s, h]),
                &CallOptions::new(),
                &mut buf[off..off + n],
                None,
                &mut ws,
            )
            .unwrap();
            assert_eq!(&buf[off..off + n], &want[..], "{isa} offset {off}");
            assert!(
                buf[..off].iter().chain(&buf[off + n..]).all(|v| *v == -7.5),
                "{isa}: a sentinel was overwritten"
            );
        }
    }
}

// ------------------------------------------------------------------------ 8.3 masks

#[test]
fn m1_polarity_probe() {
    // Each query keeps exactly one key (a different one per row): its context is that key's
    // value row, exactly.
    for isa in tiers() {
        let (s, heads, d) = (9usize, 2usize, 5usize);
        let w = heads * d;
        let qkv = values(s * 3 * w, 8, -1.0, 1.0);
        let mut m = vec![0u8; s * s];
        for i in 0..s {
            m[i * s + (i * 4 + 1) % s] = 1;
        }
        let mut ctx = vec![0.0; s * w];
        let shape = AttentionShape {
            batch: 1,
            seq: s,
            heads,
            key_dim: d,
        };
        Kernels::for_isa(isa)
            .unwrap()
            .attention(
                &qkv,
                shape,
                KeepMask::Full(&m),
                MaskedRows::Zeros,
                None,
                &mut ctx,
                None,
                &mut AttentionScratch::new(),
                None,
                Par::Seq,
            )
            .unwrap();
        for i in 0..s {
            let j = (i * 4 + 1) % s;
            assert_eq!(
                &ctx[i * w..(i + 1) * w],
                &qkv[j * 3 * w + 2 * w..j * 3 * w + 3 * w],
                "{isa} row {i}"
            );
        }
    }
}

#[test]
fn m2_m3_left_right_gapped_padding_causal_and_broadcast_masks() {
    let (b, s, h) = (3, 11, 20);
    let x = values(b * s * h, 12, -1.5, 1.5);
    let right: Vec<u8> = (0..b * s).map(|i| (i % s < 8) as u8).collect();
    let left: Vec<u8> = (0..b * s).map(|i| (i % s >= 3) as u8).collect();
    let gaps: Vec<u8> = (0..b * s).map(|i| ((i % s) % 3 != 1) as u8).collect();
    let lens: Vec<u8> = (0..b * s)
        .map(|i| (i % s < [11, 6, 1][i / s]) as u8)
        .collect();
    let causal: Vec<u8> = (0..b * s * s)
        .map(|i| ((i % s) <= (i / s) % s) as u8)
        .collect();
    let causal1: Vec<u8> = causal[..s * s].to_vec();
    for isa in tiers() {
        for pre in [false, true] {
            let e = enc(isa, h, 4, 30, Activation::GeluApproximate, pre, 13);
            for (name, pad) in [
                ("right", &right),
                ("left", &left),
                ("gaps", &gaps),
                ("lengths", &lens),
            ] {
                let o = CallOptions::new().padding_mask(Mask::new(pad, &[b, s]));
                vs_reference(&e, &x, &[b, s, h], &o, &format!("{isa} {name} padding"));
                let o = o.attention_mask(Mask::new(&causal, &[b, s, s]));
                vs_reference(
                    &e,
                    &x,
                    &[b, s, h],
                    &o,
                    &format!("{isa} causal + {name} padding"),
                );
            }
            let o = CallOptions::new().attention_mask(Mask::new(&causal1, &[1, s, s]));
            let full = CallOptions::new().attention_mask(Mask::new(&causal, &[b, s, s]));
            let xv = TensorView::new(&x, &[b, s, h]);
            assert_eq!(
                e.forward(xv, &o).unwrap(),
                e.forward(xv, &full).unwrap(),
                "{isa} [1,S,S] broadcast"
            );
        }
    }
}

#[test]
fn m5_m8_fully_masked_rows_under_every_policy_tier_and_thread_count() {
    // One query fully masked; a whole batch item padded; padding deeper than a causal band
    // (S = 16, window 4, 12 padded).
    let (b, s, h) = (3, 16, 24);
    let x = values(b * s * h, 21, -1.0, 1.0);
    let pad: Vec<u8> = (0..b * s)
        .map(|i| match i / s {
            0 => 1,
            1 => 0,
            _ => (i % s >= 12) as u8,
        })
        .collect();
    let mut band = vec![0u8; b * s * s];
    for bi in 0..b {
        for i in 0..s {
            for j in 0..s {
                band[(bi * s + i) * s + j] = (j <= i && i - j < 4) as u8;
            }
        }
        band[(bi * s + 5) * s..(bi * s + 6) * s].fill(0); // query 5 attends to nothing
    }
    for policy in [
        MaskedRowPolicy::Keras,
        MaskedRowPolicy::Zeros,
        MaskedRowPolicy::Uniform,
    ] {
        let o = CallOptions::new()
            .padding_mask(Mask::new(&pad, &[b, s]))
            .attention_mask(Mask::new(&band, &[b, s, s]))
            .masked_rows(policy);
        let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
        for isa in tiers() {
            let e = enc(isa, h, 3, 30, Activation::Gelu, false, 3);
            vs_reference(&e, &x, &[b, s, h], &o, &format!("{isa} {policy:?}"));
            for threads in [
                Threads::Single,
                Threads::Pool(Arc::new(
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(3)
                        .build()
                        .unwrap(),
                )),
            ] {
                let e = enc(isa, h, 3, 30, Activation::Gelu, false, 3).with_threads(threads);
                let (y, p) = e
                    .forward_with_scores(TensorView::new(&x, &[b, s, h]), &o)
                    .unwrap();
                assert!(
                    y.iter().chain(&p).all(|v| v.is_finite()),
                    "{isa} {policy:?}: NaN or inf"
                );
                // M8: the probability rows of fully masked queries follow the policy.
                for bi in 0..b {
                    for hd in 0..3 {
                        let row = &p[((bi * 3 + hd) * s + 5) * s..][..s];
                        let want = if policy == MaskedRowPolicy::Uniform {
                            1.0 / s as f32
                        } else {
                            0.0
                        };
                        assert!(row.iter().all(|v| *v == want), "{isa} {policy:?}: {row:?}");
                    }
                }
                match &first {
                    None => first = Some((y, p)),
                    Some((y0, p0)) => {
                        // Different tiers differ only by rounding; threads not at all.
                        let d = y
                            .iter()
                            .zip(y0)
                            .map(|(a, c)| (a - c).abs())
                            .fold(0.0f32, f32::max);
                        assert!(d < 1e-4, "{isa} {policy:?}: {d}");
                        assert_eq!(p.len(), p0.len());
                    }
                }
            }
        }
    }
}

#[test]
fn m6_padding_invariance() {
    // Padded positions filled with 0, NaN, +inf, 1e30 or 1e-10 change nothing in the real rows,
    // bit for bit, on every tier and thread count.
    let (b, s, h) = (2, 13, 32);
    let pad: Vec<u8> = (0..b * s).map(|i| (i % s < [9, 13][i / s]) as u8).collect();
    let base = values(b * s * h, 31, -1.0, 1.0);
    for isa in tiers() {
        for pre in [false, true] {
            for threads in [
                Threads::Single,
                Threads::Pool(Arc::new(
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(2)
                        .build()
                        .unwrap(),
                )),
            ] {
                let e = enc(isa, h, 4, 48, Activation::Gelu, pre, 6).with_threads(threads);
                let o = CallOptions::new().padding_mask(Mask::new(&pad, &[b, s]));
                let mut reference_out: Option<Vec<f32>> = None;
                for fill in [0.0f32, f32::NAN, f32::INFINITY, 1e30, 1e-10] {
                    let mut x = base.clone();
                    for t in 0..b * s {
                        if pad[t] == 0 {
                            x[t * h..(t + 1) * h].fill(fill);
                        }
                    }
                    let (y, p) = e
                        .forward_with_scores(TensorView::new(&x, &[b, s, h]), &o)
                        .unwrap();
                    let real: Vec<f32> = (0..b * s)
                        .filter(|&t| pad[t] != 0)
                        .flat_map(|t| y[t * h..(t + 1) * h].to_vec())
                        .collect();
                    assert!(
                        real.iter().all(|v| v.is_finite()),
                        "{isa} fill {fill}: leaked"
                    );
                    for bi in 0..b {
                        for hd in 0..4 {
                            for i in 0..s {
                                if pad[bi * s + i] != 0 {
                                    let row = &p[((bi * 4 + hd) * s + i) * s..][..s];
                                    assert!(row.iter().all(|v| v.is_finite()));
                                }
                            }
                        }
                    }
                    match &reference_out {
                        None => reference_out = Some(real),
                        Some(r) => {
                            assert!(r == &real, "{isa} pre={pre} fill {fill}: real rows changed")
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn m7_nan_in_a_kept_logit_is_not_masked_away() {
    for isa in tiers() {
        let p = softmax_probs(isa, &[f32::NAN, 1.0, 2.0]);
        assert!(p.iter().all(|v| v.is_nan()), "{isa}: {p:?}");
    }
}

// ------------------------------------------------------------------------ 8.4 concurrency

#[test]
fn c2_sixteen_threads_thousand_calls_each() {
    let e = Arc::new(enc(
        Isa::best_available(),
        24,
        3,
        40,
        Activation::Gelu,
        false,
        8,
    ));
    let cases: Vec<(usize, usize, Vec<f32>, Vec<u8>)> = (0..8)
        .map(|i| {
            let (b, s) = (1 + i % 3, 2 + i * 3);
            (
                b,
                s,
                values(b * s * 24, i as u64, -1.0, 1.0),
                (0..b * s).map(|t| (t % s != 1) as u8).collect(),
            )
        })
        .collect();
    let want: Vec<Vec<f32>> = cases
        .iter()
        .map(|(b, s, x, p)| {
            e.forward(
                TensorView::new(x, &[*b, *s, 24]),
                &CallOptions::new().padding_mask(Mask::new(p, &[*b, *s])),
            )
            .unwrap()
        })
        .collect();
    std::thread::scope(|sc| {
        for t in 0..16 {
            let (e, cases, want) = (&e, &cases, &want);
            sc.spawn(move || {
                let mut ws = Workspace::new();
                for call in 0..1000 {
                    let k = (t + call) % cases.len();
                    let (b, s, x, p) = &cases[k];
                    let mut out = vec![0.0; x.len()];
                    e.forward_into(
                        TensorView::new(x, &[*b, *s, 24]),
                        &CallOptions::new().padding_mask(Mask::new(p, &[*b, *s])),
                        &mut out,
                        None,
                        &mut ws,
                    )
                    .unwrap();
                    assert!(out == want[k], "thread {t} call {call}");
                }
            });
        }
    });
}

// ------------------------------------------------------------------------ 8.5 / 8.6 misuse

#[test]
fn u7_size_overflow_is_an_error() {
    let e = enc(Isa::Portable, 8, 2, 8, Activation::Relu, false, 1);
    for shape in [
        [usize::MAX, 2, 8],
        [2, usize::MAX, 8],
        [usize::MAX / 2, usize::MAX / 2, 8],
    ] {
        assert!(
            e.forward(TensorView::new(&[0.0; 16], &shape), &CallOptions::new())
                .is_err()
        );
    }
    let m = [1u8; 4];
    let o = CallOptions::new().padding_mask(Mask::new(&m[..], &[usize::MAX, 4]));
    assert!(
        e.forward(TensorView::new(&[0.0; 16], &[1, 2, 8]), &o)
            .is_err()
    );
    assert!(implicit_mask_from_ids(&[1u32, 2], usize::MAX, 2, 0).is_err());
    let k = Kernels::for_isa(Isa::Portable).unwrap();
    assert!(k.pack(&[0.0; 4], usize::MAX, 2).is_err());
    assert!(k.pack(&[0.0; 4], 2, usize::MAX).is_err());
    // The gemm: an m whose m * k overflows, with a small packed matrix and empty buffers.
    let p = k.pack(&[0.0; 16], 4, 4).unwrap();
    let ep = transformer_encoder_kernels::Epilogue::default();
    let (wq, ws) = transformer_encoder_kernels::quant::quantize_weights(&[0.5; 16], 4, 4);
    let p8 = k.pack_int8(&wq, &ws, 4, 4).unwrap();
    let none = transformer_encoder_kernels::QuantRows::new();
    let mut q_out = transformer_encoder_kernels::QuantRows::new();
    q_out.arm_for(&p8);
    let mut scratch = transformer_encoder_kernels::ProductScratch::new();
    let (g, b) = ([1.0f32; 4], [0.0f32; 4]);
    for m in [1usize << 62, usize::MAX / 4 + 1, usize::MAX] {
        assert!(
            k.gemm(&[], m, &p, &ep, &mut [], Par::Seq).is_err(),
            "gemm m = {m}"
        );
        for w in [&p, &p8] {
            assert!(
                k.gemm_prepared(&[], &none, m, w, &ep, &mut [], None, Par::Seq)
                    .is_err(),
                "gemm_prepared m = {m}"
            );
            assert!(
                k.gemm_layer_norm(
                    &[],
                    &none,
                    m,
                    w,
                    None,
                    None,
                    (&g, &b, 1e-5),
                    &mut [],
                    &mut [],
                    None,
                    Par::Seq
                )
                .is_err(),
                "gemm_layer_norm m = {m}"
            );
        }
        assert!(
            k.gemm_quantized(&none, m, &p8, &ep, &mut q_out, &mut scratch, Par::Seq)
                .is_err(),
            "gemm_quantized m = {m}"
        );
    }
    // The baseline product: m = 2^62, k = n = 4 once wrapped to an empty `a` and `out` and ran
    // out of bounds; every size product is checked now.
    for (m, kk, n, a, b, o) in [
        (1usize << 62, 4usize, 4usize, 0usize, 16usize, 0usize),
        (4, 1 << 62, 4, 0, 0, 16),
        (4, 4, 1 << 62, 16, 0, 0),
        (usize::MAX, usize::MAX, usize::MAX, 1, 1, 1),
    ] {
        let (a, b, mut o) = (vec![0.0f32; a], vec![0.0f32; b], vec![0.0f32; o]);
        assert!(
            transformer_encoder_kernels::baseline_sgemm(&a, &b, m, kk, n, &mut o).is_err(),
            "baseline_sgemm {m} x {kk} x {n}"
        );
    }
    // Activations and LayerNorm take a row length: a zero or non-dividing one is an error.
    let mut x = [0.0f32; 6];
    assert!(k.activation(Activation::Softmax, &mut x, 0).is_err());
    assert!(
        k.activation(Activation::Softmax, &mut x, usize::MAX)
            .is_err()
    );
    let mut out = [0.0f32; 6];
    assert!(
        k.layer_norm(
            &[0.0; 6],
            None,
            usize::MAX,
            &[],
            &[],
            1e-5,
            &mut out,
            None,
            None,
            Par::Seq
        )
        .is_err()
    );
    let shape = AttentionShape {
        batch: usize::MAX,
        seq: 2,
        heads: 2,
        key_dim: 2,
    };
    let mut ctx = [0.0f32; 4];
    assert!(
        k.attention(
            &[0.0; 4],
            shape,
            KeepMask::All,
            MaskedRows::Zeros,
            None,
            &mut ctx,
            None,
            &mut AttentionScratch::new(),
            None,
            Par::Seq
        )
        .is_err()
    );
}

#[test]
fn a1_a4_kernel_misuse_returns_errors_and_writes_nothing() {
    for isa in tiers() {
        let k = Kernels::for_isa(isa).unwrap();
        let w = k.pack(&[1.0; 12], 3, 4).unwrap();
        let mut out = [9.0f32; 8];
        let ep = transformer_encoder_kernels::Epilogue::default();
        // The product with its LayerNorm: a wrong scale, residual or output length is an error
        // before anything is written.
        let none = transformer_encoder_kernels::QuantRows::new();
        let (g, b, r) = ([1.0f32; 4], [0.0f32; 4], [0.0f32; 8]);
        for (gl, rl, ol) in [(3usize, 8usize, 8usize), (4, 7, 8), (4, 8, 7)] {
            let (mut tmp, mut o) = ([9.0f32; 8], [9.0f32; 8]);
            let res = k.gemm_layer_norm(
                &[1.0; 6],
                &none,
                2,
                &w,
                None,
                Some(&r[..rl]),
                (&g[..gl], &b, 1e-5),
                &mut tmp,
                &mut o[..ol],
                None,
                Par::Seq,
            );
            assert!(res.is_err(), "{isa}: gemm_layer_norm {gl} {rl} {ol}");
            assert!(
                tmp.iter().chain(&o).all(|&v| v == 9.0),
                "{isa}: wrote on error"
            );
        }
        assert!(k.gemm(&[1.0; 5], 2, &w, &ep, &mut out, Par::Seq).is_err());
        assert!(
            k.gemm(&[1.0; 6], 2, &w, &ep, &mut out[..7], Par::Seq)
                .is_err()
        );
        let bad_bias = transformer_encoder_kernels::Epilogue {
            bias: Some(&[1.0; 3]),
            ..ep
        };
        assert!(
            k.gemm(&[1.0; 6], 2, &w, &bad_bias, &mut out, Par::Seq)
                .is_err()
        );
        assert!(out.iter().all(|v| *v == 9.0));
        let other = Isa::ALL
            .iter()
            .copied()
            .find(|i| *i != isa && i.is_available());
        if let Some(o) = other {
            let wo = Kernels::for_isa(o).unwrap().pack(&[1.0; 12], 3, 4).unwrap();
            assert!(
                k.gemm(&[1.0; 6], 2, &wo, &ep, &mut out, Par::Seq).is_err(),
                "weights packed for another tier"
            );
        }
        let mut o2 = [0.0f32; 4];
        assert!(
            k.layer_norm(
                &[1.0; 4],
                None,
                3,
                &[1.0; 3],
                &[0.0; 3],
                1e-5,
                &mut o2,
                None,
                None,
                Par::Seq
            )
            .is_err()
        );
        assert!(
            k.layer_norm(
                &[1.0; 4],
                None,
                0,
                &[],
                &[],
                1e-5,
                &mut o2,
                None,
                None,
                Par::Seq
            )
            .is_err()
        );
        assert!(
            k.layer_norm(
                &[1.0; 4],
                None,
                4,
                &[1.0; 3],
                &[0.0; 4],
                1e-5,
                &mut o2,
                None,
                None,
                Par::Seq
            )
            .is_err()
        );
        assert!(k.activation(Activation::Gelu, &mut [0.0; 5], 2).is_err());
        assert!(k.activation(Activation::Gelu, &mut [0.0; 4], 0).is_err());
        let shape = AttentionShape {
            batch: 1,
            seq: 2,
            heads: 1,
            key_dim: 2,
        };
        let mut ctx = [5.0f32; 4];
        let qkv = [0.0f32; 12];
        let sc = &mut AttentionScratch::new();
        assert!(
            k.attention(
                &qkv[..11],
                shape,
                KeepMask::All,
                MaskedRows::Zeros,
                None,
                &mut ctx,
                None,
                sc,
                None,
                Par::Seq
            )
            .is_err()
        );
        assert!(
            k.attention(
                &qkv,
                shape,
                KeepMask::Keys(&[1]),
                MaskedRows::Zeros,
                None,
                &mut ctx,
                None,
                sc,
                None,
                Par::Seq
            )
            .is_err()
        );
        assert!(
            k.attention(
                &qkv,
                shape,
                KeepMask::Full(&[1; 3]),
                MaskedRows::Zeros,
                None,
                &mut ctx,
                None,
                sc,
                None,
                Par::Seq
            )
            .is_err()
        );
        assert!(
            k.attention(
                &qkv,
                shape,
                KeepMask::All,
                MaskedRows::Zeros,
                Some((1.0, 1)),
                &mut ctx,
                None,
                sc,
                None,
                Par::Seq
            )
            .is_err()
        );
        assert!(
            k.attention(
                &qkv,
                shape,
                KeepMask::All,
                MaskedRows::Zeros,
                None,
                &mut ctx,
                Some(&mut [0.0; 3]),
                sc,
                None,
                Par::Seq
            )
            .is_err()
        );
        assert!(ctx.iter().all(|v| *v == 5.0));
    }
}
