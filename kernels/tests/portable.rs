//! Every kernel of the portable tier on small shapes, against the float64 reference: the tests
//! that also run under Miri (`.ci/miri.sh`: `cargo +nightly miri test -p
//! transformer-encoder-kernels --test portable`, tree borrows), so the unsafe code every tier
//! shares (the kernel bodies, the table's safe wrappers, the team of threads, the aligned
//! buffers) is checked for undefined behaviour.

use transformer_encoder_kernels::quant::quantize_weights;
use transformer_encoder_kernels::reference as r;
use transformer_encoder_kernels::*;

fn kern() -> &'static Kernels {
    Kernels::for_isa(Isa::Portable).unwrap()
}

fn vals(n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| rng::uniform(seed, 3, i as u64) as f32 * 2.0 - 1.0)
        .collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "element {i}: {g} vs {w}"
        );
    }
}

#[test]
fn float_product_with_every_epilogue() {
    let (m, k, n) = (5, 9, 11);
    let (a, w, b, res) = (vals(m * k, 1), vals(k * n, 2), vals(n, 3), vals(m * n, 4));
    let p = kern().pack(&w, k, n).unwrap();
    assert_eq!(p.unpack(), w);
    for act in [None, Some(Activation::Gelu), Some(Activation::Softmax)] {
        let ep = Epilogue {
            bias: Some(&b),
            activation: act,
            residual: Some(&res),
        };
        let mut out = vec![0.0; m * n];
        kern()
            .gemm(&a, m, &p, &ep, &mut out, Par::Threads(2))
            .unwrap();
        let mut want = r::linear(&f64s(&a), &f64s(&w), &f64s(&b), m, k, n);
        if let Some(act) = act {
            r::activation(act, &mut want, n);
        }
        for (x, y) in want.iter_mut().zip(&res) {
            *x += *y as f64;
        }
        close(&out, &want, 1e-5);
    }
}

#[test]
fn int8_product_and_quantization() {
    let (m, k, n) = (6, 10, 9); // two row tiles of 4 and 2: run panel by panel
    let (a, w, b) = (vals(m * k, 5), vals(k * n, 6), vals(n, 7));
    let (wq, ws) = quantize_weights(&w, k, n);
    let p = kern().pack_int8(&wq, &ws, k, n).unwrap();
    assert_eq!(p.int8_parts(), Some((wq.clone(), ws.clone())));
    let mut q = QuantRows::new();
    q.arm_for(&p);
    kern().prepare(&a, k, &mut q, Par::Seq).unwrap();
    let (aq, xs) = r::quantize_rows(&a, k);
    for i in 0..m {
        assert_eq!(q.row(i), Some((aq[i * k..(i + 1) * k].to_vec(), xs[i])));
    }
    let mut sums = vec![0i32; m * n];
    kern()
        .gemm_int8_sums(&q, &p, &mut sums, Par::Threads(2))
        .unwrap();
    assert_eq!(sums, r::matmul_i32(&aq, &wq, m, k, n));
    let mut out = vec![0.0; m * n];
    let ep = Epilogue {
        bias: Some(&b),
        ..Epilogue::default()
    };
    let mut next = QuantRows::new();
    next.arm_for(&p);
    kern()
        .gemm_prepared(&a, &q, m, &p, &ep, &mut out, Some(&mut next), Par::Seq)
        .unwrap();
    let want: Vec<f64> = (0..m * n)
        .map(|i| sums[i] as f64 / (xs[i / n] as f64 * ws[i % n] as f64) + b[i % n] as f64)
        .collect();
    close(&out, &want, 1e-5);
    assert_eq!(next.rows(), m);
    // Only the quantized output, the float rows in per-thread scratch: the same quantized rows.
    let mut only = QuantRows::new();
    only.arm_for(&p);
    let mut scratch = ProductScratch::new();
    kern()
        .gemm_quantized(&q, m, &p, &ep, &mut only, &mut scratch, Par::Threads(2))
        .unwrap();
    for i in 0..m {
        assert_eq!(only.row(i), next.row(i));
    }
}

#[test]
fn bf16_product_rounding_and_fused_outputs() {
    // An odd k (the last pair padded), rows rounded to bf16, the product of the rounded operands,
    // the output rounded into the next product's rows, and the float rows kept only in scratch.
    let (m, k, n) = (3, 11, 9);
    let (a, w, b) = (vals(m * k, 40), vals(k * n, 41), vals(n, 42));
    let bf =
        |v: f32| f32::from_bits(((v.to_bits() + 0x7fff + ((v.to_bits() >> 16) & 1)) >> 16) << 16);
    let p = kern().pack_bf16(&w, k, n).unwrap();
    assert_eq!(p.unpack(), w.iter().map(|&v| bf(v)).collect::<Vec<_>>());
    let mut q = QuantRows::new();
    q.arm_for(&p);
    kern().prepare(&a, k, &mut q, Par::Seq).unwrap();
    for i in 0..m {
        let row: Vec<u16> = a[i * k..(i + 1) * k]
            .iter()
            .map(|&v| (bf(v).to_bits() >> 16) as u16)
            .collect();
        assert_eq!(q.bf16_row(i), Some(row));
    }
    let ep = Epilogue {
        bias: Some(&b),
        ..Epilogue::default()
    };
    let mut out = vec![0.0; m * n];
    let p_next = kern().pack_bf16(&vals(n * 4, 43), n, 4).unwrap();
    let mut next = QuantRows::new();
    next.arm_for(&p_next);
    kern()
        .gemm_prepared(
            &a,
            &q,
            m,
            &p,
            &ep,
            &mut out,
            Some(&mut next),
            Par::Threads(2),
        )
        .unwrap();
    let want: Vec<f64> = (0..m * n)
        .map(|i| {
            let (r, c) = (i / n, i % n);
            (0..k)
                .map(|j| bf(a[r * k + j]) as f64 * bf(w[j * n + c]) as f64)
                .sum::<f64>()
                + b[c] as f64
        })
        .collect();
    close(&out, &want, 1e-5);
    let mut only = QuantRows::new();
    only.arm_for(&p_next);
    let mut scratch = ProductScratch::new();
    kern()
        .gemm_quantized(&q, m, &p, &ep, &mut only, &mut scratch, Par::Threads(2))
        .unwrap();
    for i in 0..m {
        let row: Vec<u16> = out[i * n..(i + 1) * n]
            .iter()
            .map(|&v| (bf(v).to_bits() >> 16) as u16)
            .collect();
        assert_eq!(next.bf16_row(i), Some(row.clone()));
        assert_eq!(only.bf16_row(i), Some(row));
    }
}

/// An int8 product of 40 rows (row tiles outer) over 5 panels: with `TRANSFORMER_ENCODER_INT8_PASS=1`
/// (as `.ci/miri.sh` runs it) in two passes over the panels, the same sums as the reference.
#[test]
fn int8_product_in_passes() {
    let (m, k, n) = (40, 40, 40);
    let (a, w) = (vals(m * k, 8), vals(k * n, 9));
    let (wq, ws) = quantize_weights(&w, k, n);
    let p = kern().pack_int8(&wq, &ws, k, n).unwrap();
    let mut q = QuantRows::new();
    q.arm_for(&p);
    kern().prepare(&a, k, &mut q, Par::Seq).unwrap();
    let (aq, _) = r::quantize_rows(&a, k);
    let mut sums = vec![0i32; m * n];
    kern().gemm_int8_sums(&q, &p, &mut sums, Par::Seq).unwrap();
    assert_eq!(sums, r::matmul_i32(&aq, &wq, m, k, n));
}

/// A tall product (by row blocks, each finished as it completes), float32 and int8.
#[test]
fn tall_products_by_row_blocks() {
    let (m, k, n) = (1100, 3, 5);
    let (a, w) = (vals(m * k, 20), vals(k * n, 21));
    let p = kern().pack(&w, k, n).unwrap();
    let mut out = vec![0.0; m * n];
    let ep = Epilogue {
        activation: Some(Activation::Softmax),
        ..Epilogue::default()
    };
    kern()
        .gemm(&a, m, &p, &ep, &mut out, Par::Threads(2))
        .unwrap();
    let mut want = r::matmul(&f64s(&a), &f64s(&w), m, k, n);
    r::activation(Activation::Softmax, &mut want, n);
    close(&out, &want, 1e-5);
    let (wq, ws) = quantize_weights(&w, k, n);
    let p8 = kern().pack_int8(&wq, &ws, k, n).unwrap();
    let mut q = QuantRows::new();
    q.arm_for(&p8);
    kern().prepare(&a, k, &mut q, Par::Seq).unwrap();
    let (mut next, mut only) = (QuantRows::new(), QuantRows::new());
    next.arm_for(&p8);
    only.arm_for(&p8);
    let mut out = vec![0.0; m * n];
    let none = Epilogue::default();
    kern()
        .gemm_prepared(
            &a,
            &q,
            m,
            &p8,
            &none,
            &mut out,
            Some(&mut next),
            Par::Threads(2),
        )
        .unwrap();
    let mut scratch = ProductScratch::new();
    kern()
        .gemm_quantized(&q, m, &p8, &none, &mut only, &mut scratch, Par::Threads(2))
        .unwrap();
    for i in (0..m).step_by(97) {
        assert_eq!(only.row(i), next.row(i));
    }
}

/// The product and its LayerNorm in one call (row blocks: 300 int8 rows), against the two calls.
#[test]
fn product_then_layer_norm_fused() {
    let (m, k, n) = (300, 3, 4);
    let (a, w, res) = (vals(m * k, 30), vals(k * n, 31), vals(m * n, 32));
    let (g, b, bias) = (vals(n, 33), vals(n, 34), vals(n, 35));
    let (wq, ws) = quantize_weights(&w, k, n);
    let p8 = kern().pack_int8(&wq, &ws, k, n).unwrap();
    let mut qa = QuantRows::new();
    qa.arm_for(&p8);
    kern().prepare(&a, k, &mut qa, Par::Seq).unwrap();
    let ep = Epilogue {
        bias: Some(&bias),
        ..Epilogue::default()
    };
    let (mut t1, mut o1, mut t2, mut o2) = (
        vec![0.0; m * n],
        vec![0.0; m * n],
        vec![0.0; m * n],
        vec![0.0; m * n],
    );
    let (mut q1, mut q2) = (QuantRows::new(), QuantRows::new());
    q1.arm_for(&p8);
    q2.arm_for(&p8);
    let par = Par::Threads(2);
    kern()
        .gemm_prepared(&a, &qa, m, &p8, &ep, &mut t1, None, par)
        .unwrap();
    kern()
        .layer_norm(
            &t1,
            Some(&res),
            n,
            &g,
            &b,
            1e-3,
            &mut o1,
            None,
            Some(&mut q1),
            par,
        )
        .unwrap();
    kern()
        .gemm_layer_norm(
            &a,
            &qa,
            m,
            &p8,
            Some(&bias),
            Some(&res),
            (&g, &b, 1e-3),
            &mut t2,
            &mut o2,
            Some(&mut q2),
            par,
        )
        .unwrap();
    assert_eq!(t1, t2);
    assert_eq!(o1, o2);
    for i in (0..m).step_by(37) {
        assert_eq!(q1.row(i), q2.row(i));
    }
}

#[test]
fn layer_norm_attention_and_activations() {
    let (rows, n) = (4, 13);
    let (x, res, g, bt) = (
        vals(rows * n, 8),
        vals(rows * n, 9),
        vals(n, 10),
        vals(n, 11),
    );
    let mut out = vec![0.0; rows * n];
    let mut sum = vec![0.0; rows * n];
    let p = kern().pack_int8(&[1; 26], &[1.0; 2], n, 2).unwrap();
    let mut q = QuantRows::new();
    q.arm_for(&p);
    kern()
        .layer_norm(
            &x,
            Some(&res),
            n,
            &g,
            &bt,
            1e-5,
            &mut out,
            Some(&mut sum),
            Some(&mut q),
            Par::Threads(2),
        )
        .unwrap();
    let t: Vec<f64> = x.iter().zip(&res).map(|(a, b)| (a + b) as f64).collect();
    close(
        &out,
        &r::layer_norm(&t, n, &f64s(&g), &f64s(&bt), 1e-5),
        1e-5,
    );
    assert_eq!(q.rows(), rows);

    let shape = AttentionShape {
        batch: 2,
        seq: 3,
        heads: 2,
        key_dim: 2,
    };
    let qkv = vals(2 * 3 * 3 * 4, 12);
    let mut ctx = vec![0.0; 2 * 3 * 4];
    let mut scores = vec![0.0; 2 * 2 * 3 * 3];
    let keep = [1u8, 1, 0, 1, 0, 1];
    kern()
        .attention(
            &qkv,
            shape,
            KeepMask::Keys(&keep),
            MaskedRows::Zeros,
            None,
            &mut ctx,
            Some(&mut scores),
            &mut AttentionScratch::new(),
            None,
            Par::Threads(2),
        )
        .unwrap();
    let col = |off: usize| -> Vec<f64> {
        (0..6)
            .flat_map(|t| (0..4).map(move |c| (t, c)))
            .map(|(t, c)| qkv[t * 12 + off + c] as f64)
            .collect()
    };
    let (want, want_p) = r::attention(
        &col(0),
        &col(4),
        &col(8),
        shape,
        KeepMask::Keys(&keep),
        MaskedRows::Zeros,
        None,
    );
    close(&ctx, &want, 1e-5);
    close(&scores, &want_p, 1e-5);

    // Ragged: sequences of 2, 0 and 3 tokens with their own [len, len] masks.
    let lengths = [2usize, 0, 3];
    let full = [1u8, 0, 1, 1, 1, 0, 0, 1, 1, 0, 1, 1, 1];
    let qkv = vals(5 * 3 * 4, 13);
    let shape = RaggedShape {
        lengths: &lengths,
        heads: 2,
        key_dim: 2,
    };
    let run = |scores: Option<&mut [f32]>, quant: Option<&mut QuantRows>| {
        let mut ctx = vec![0.0; 5 * 4];
        kern()
            .attention_ragged(
                &qkv,
                shape,
                KeepMask::Full(&full),
                MaskedRows::Uniform,
                None,
                &mut ctx,
                scores,
                &mut AttentionScratch::new(),
                quant,
                Par::Threads(2),
            )
            .unwrap();
        ctx
    };
    let mut scores = vec![0.0; 2 * 13];
    let ctx = run(Some(&mut scores), None);
    let col = |off: usize| -> Vec<f64> {
        (0..5)
            .flat_map(|t| (0..4).map(move |c| (t, c)))
            .map(|(t, c)| qkv[t * 12 + off + c] as f64)
            .collect()
    };
    let (want, want_p) = r::attention_ragged(
        &col(0),
        &col(4),
        &col(8),
        &lengths,
        2,
        2,
        KeepMask::Full(&full),
        MaskedRows::Uniform,
        None,
    );
    close(&ctx, &want, 1e-5);
    close(&scores, &want_p, 1e-5);
    // The context quantized by the attention call itself (whoever finishes a sequence quantizes
    // its rows) is the context quantized afterwards.
    let p4 = kern().pack_int8(&[1; 8], &[1.0; 2], 4, 2).unwrap();
    let (mut qc, mut qr) = (QuantRows::new(), QuantRows::new());
    qc.arm_for(&p4);
    qr.arm_for(&p4);
    let ctx2 = run(None, Some(&mut qc));
    assert_eq!(ctx2, ctx);
    kern().quantize_rows(&ctx2, 4, &mut qr, Par::Seq).unwrap();
    for i in 0..5 {
        assert_eq!(qc.row(i), qr.row(i), "row {i}");
    }

    for act in [
        Activation::Mish,
        Activation::Sparsemax,
        Activation::LogSoftmax,
    ] {
        let mut y = vals(12, 13);
        let mut want = f64s(&y);
        kern().activation(act, &mut y, 6).unwrap();
        r::activation(act, &mut want, 6);
        close(&y, &want, 1e-5);
    }
}

#[test]
fn a_team_runs_the_kernels() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let (m, k, n) = (4, 6, 40);
    let (a, w) = (vals(m * k, 14), vals(k * n, 15));
    let p = kern().pack(&w, k, n).unwrap();
    let mut alone = vec![0.0; m * n];
    kern()
        .gemm(&a, m, &p, &Epilogue::default(), &mut alone, Par::Seq)
        .unwrap();
    let together = pool.install(|| {
        team::with_team(2, || {
            let mut out = vec![0.0; m * n];
            for _ in 0..3 {
                kern()
                    .gemm(&a, m, &p, &Epilogue::default(), &mut out, Par::Threads(2))
                    .unwrap();
            }
            out
        })
    });
    assert_eq!(alone, together);
    // Parts claimed on the team: each exactly once, over several jobs in a row.
    let hits: Vec<std::sync::atomic::AtomicUsize> = (0..7)
        .map(|_| std::sync::atomic::AtomicUsize::new(0))
        .collect();
    pool.install(|| {
        team::with_team(2, || {
            for _ in 0..4 {
                team::for_parts(7, &|i| {
                    hits[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                });
            }
        })
    });
    assert!(
        hits.iter()
            .all(|h| h.load(std::sync::atomic::Ordering::Relaxed) == 4)
    );
}
