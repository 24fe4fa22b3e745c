//! The bf16 kernels (Keras' `mixed_bfloat16`) on every tier this machine has: activation rows
//! rounded to bf16 bit for bit as `half` rounds them (to nearest, ties to even), and the product
//! of the rounded operands against float64 within the float32 summation bound.

use crate::common::{check_close, config, tiers, values};
use proptest::prelude::*;
use transformer_encoder_kernels::quant::Precision;
use transformer_encoder_kernels::reference as r;
use transformer_encoder_kernels::*;

/// Sizes from 0, biased to the tails of every tier's bf16 panels (8, 16, 32, 48 columns; pairs
/// of inner rows) and register tiles (4, 8 rows).
fn size(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..=max.min(40),
        prop::sample::select(vec![
            0usize, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 48, 49, 95, 97
        ])
        .prop_map(move |v| v.min(max)),
        0usize..=max,
    ]
}

fn bf16(v: f32) -> f64 {
    half::bf16::from_f32(v).to_f64()
}

/// `x` rounded to bf16 by `k` (prepared as the input of a bf16 matrix), row by row, against
/// `half`'s rounding: the same bits, NaN for NaN.
fn check_rounded(k: &Kernels, x: &[f32], cols: usize) -> Result<(), String> {
    let w = k
        .pack_bf16(&vec![0.0; cols], cols, 1)
        .map_err(|e| e.to_string())?;
    let mut q = QuantRows::new();
    q.arm_for(&w);
    k.prepare(x, cols, &mut q, Par::Threads(3))
        .map_err(|e| e.to_string())?;
    for (i, row) in x.chunks_exact(cols).enumerate() {
        let got = q.bf16_row(i).ok_or("missing row")?;
        for (j, (&g, &v)) in got.iter().zip(row).enumerate() {
            let want = half::bf16::from_f32(v);
            let same = if v.is_nan() {
                half::bf16::from_bits(g).is_nan()
            } else {
                g == want.to_bits()
            };
            if !same {
                return Err(format!(
                    "{}: row {i} col {j}: {v:e} ({:#010x}) -> {g:#06x}, half gives {:#06x}",
                    k.isa(),
                    v.to_bits(),
                    want.to_bits()
                ));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn rows_round_to_nearest_even(cols in size(100).prop_map(|c| c.max(1)), rows in 1usize..4, seed in any::<u64>()) {
        // Random floats, and values a half-ulp of bf16 apart from one another (ties).
        let mut x = values(rows * cols, seed, -3.0, 3.0);
        for (i, v) in x.iter_mut().enumerate().filter(|(i, _)| i % 3 == 0) {
            *v = f32::from_bits((v.to_bits() & 0xffff_0000) | if i % 2 == 0 { 0x8000 } else { 0x7fff });
        }
        for isa in tiers() {
            check_rounded(Kernels::for_isa(isa).unwrap(), &x, cols).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn bf16_product_sums_rounded_operands(m in size(30), k in size(300).prop_map(|c| c.max(1)), n in size(70), bias in any::<bool>(), resid in any::<bool>(), act in prop_oneof![Just(None), Just(Some(Activation::Gelu)), Just(Some(Activation::Relu))], seed in any::<u64>()) {
        let a = values(m * k, seed, -2.0, 2.0);
        let w = values(k * n, seed ^ 1, -0.5, 0.5);
        let b = values(n, seed ^ 2, -1.0, 1.0);
        let res = values(m * n, seed ^ 3, -1.0, 1.0);
        // The exact sums of the bf16 operands, and per element the bound of a float32 sum of k
        // products (each exact in float32) plus the bias: (k + 2) u sum |a w| + |b|, u = 2^-24.
        let u = f64::powi(2.0, -24);
        let mut want = vec![0.0f64; m * n];
        let mut bound = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut mag) = (0.0f64, 0.0f64);
                for p in 0..k {
                    let t = bf16(a[i * k + p]) * bf16(w[p * n + j]);
                    s += t;
                    mag += t.abs();
                }
                let bj = if bias { b[j] as f64 } else { 0.0 };
                want[i * n + j] = s + bj;
                bound[i * n + j] = (k as f64 + 2.0) * u * (mag + bj.abs());
            }
        }
        if let Some(act) = act {
            r::activation(act, &mut want, n.max(1));
        }
        for (i, x) in want.iter_mut().enumerate() {
            if resid {
                *x += res[i] as f64;
            }
            // GELU's slope is below 1.13; the float32 activation and residual add a few ulps.
            bound[i] = 1.13 * bound[i] + 4.0 * u * (x.abs() + 1.0);
        }
        for isa in tiers() {
            let kern = Kernels::for_isa(isa).unwrap();
            let packed = kern.pack_bf16(&w, k, n).unwrap();
            prop_assert_eq!(packed.format(), Precision::Bf16);
            let mut q = QuantRows::new();
            q.arm_for(&packed);
            kern.prepare(&a, k, &mut q, Par::Seq).unwrap();
            let ep = Epilogue { bias: bias.then_some(&b[..]), activation: act, residual: resid.then_some(&res[..]) };
            let mut first: Option<Vec<f32>> = None;
            for par in [Par::Seq, Par::Threads(3)] {
                let mut out = vec![f32::NAN; m * n];
                kern.gemm_prepared(&a, &q, m, &packed, &ep, &mut out, None, par).unwrap();
                for (i, (&g, &t)) in out.iter().zip(&want).enumerate() {
                    let err = (g as f64 - t).abs();
                    prop_assert!(err <= bound[i], "bf16 product {} m={} k={} n={} {:?}: element {}: {} vs {} (bound {:e})", isa, m, k, n, act, i, g, t, bound[i]);
                }
                // Bit-identical whatever the thread split.
                match &first {
                    None => first = Some(out),
                    Some(f) => prop_assert!(f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa}: thread split changed the bits"),
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config(32))]

    /// Where the bf16 panels are widened (no bf16 dot product, no tiles), the bf16 product is
    /// the float32 product over the rounded operands: the same arithmetic in the same order, so
    /// the same bits (with cache blocks of an even inner size, as the bf16 pairs need).
    #[test]
    fn widened_bf16_is_float32_on_rounded_operands(m in size(40), k in size(400).prop_map(|c| c.max(1)), n in size(70), act in prop_oneof![Just(None), Just(Some(Activation::Gelu))], resid in any::<bool>(), seed in any::<u64>()) {
        let a = values(m * k, seed, -2.0, 2.0);
        let w = values(k * n, seed ^ 1, -0.5, 0.5);
        let b = values(n, seed ^ 2, -1.0, 1.0);
        let res = values(m * n, seed ^ 3, -1.0, 1.0);
        let round = |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect() };
        let (ar, wr) = (round(&a), round(&w));
        let ep = Epilogue { bias: Some(&b[..]), activation: act, residual: resid.then_some(&res[..]) };
        let (mut ran, mut odd) = (false, false);
        for isa in tiers() {
            let kern = Kernels::for_isa(isa).unwrap();
            odd |= kern.fp32_blocks().kc % 2 == 1;
            if kern.bf16_kernel() != Bf16Kernel::Widen || kern.fp32_blocks().kc % 2 == 1 {
                continue;
            }
            ran = true;
            let packed = kern.pack_bf16(&w, k, n).unwrap();
            let mut q = QuantRows::new();
            q.arm_for(&packed);
            kern.prepare(&a, k, &mut q, Par::Seq).unwrap();
            let mut got = vec![f32::NAN; m * n];
            kern.gemm_prepared(&a, &q, m, &packed, &ep, &mut got, None, Par::Threads(2)).unwrap();
            let mut want = vec![f32::NAN; m * n];
            kern.gemm(&ar, m, &kern.pack(&wr, k, n).unwrap(), &ep, &mut want, Par::Seq).unwrap();
            let same = got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits());
            prop_assert!(same, "{}: m={} k={} n={}: the widened bf16 product differs from float32 on the rounded operands", isa, m, k, n);
        }
        // A run that forces another bf16 kernel (`TRANSFORMER_ENCODER_BF16=dot`) widens on no tier
        // by request; otherwise some tier must have run the check.
        let forced_other = std::env::var(transformer_encoder_kernels::isa::BF16_ENV).is_ok_and(|v| v != "widen");
        prop_assert!(ran || odd || forced_other, "no tier here widens its bf16 panels");
    }
}

/// A product whose A is longer than L2 (200 rows of 3,072 inner values: 1.2 MB in bf16, the
/// tiles then take its rows in chunks of 160 and split the panels one part per thread) against
/// float64 sums of the rounded operands, and int8 against its Seq run, bit for bit whatever the
/// thread split.
#[test]
fn long_products_run_in_chunks() {
    let (m, k, n) = (200, 3072, 40);
    let a = values(m * k, 7, -2.0, 2.0);
    let w = values(k * n, 8, -0.5, 0.5);
    let b = values(n, 9, -1.0, 1.0);
    let u = f64::powi(2.0, -24);
    let ep = Epilogue {
        bias: Some(&b),
        activation: None,
        residual: None,
    };
    for isa in tiers() {
        let kern = Kernels::for_isa(isa).unwrap();
        let (wq, ws) = quant::quantize_weights(&w, k, n);
        for packed in [
            kern.pack_bf16(&w, k, n).unwrap(),
            kern.pack_int8(&wq, &ws, k, n).unwrap(),
        ] {
            let mut q = QuantRows::new();
            q.arm_for(&packed);
            kern.prepare(&a, k, &mut q, Par::Seq).unwrap();
            let mut first: Option<Vec<f32>> = None;
            for par in [Par::Seq, Par::Threads(2), Par::Threads(3)] {
                let mut out = vec![f32::NAN; m * n];
                kern.gemm_prepared(&a, &q, m, &packed, &ep, &mut out, None, par)
                    .unwrap();
                if packed.format() == Precision::Bf16 {
                    for (e, &g) in out.iter().enumerate() {
                        let (i, j) = (e / n, e % n);
                        let (mut s, mut mag) = (b[j] as f64, b[j].abs() as f64);
                        for p in 0..k {
                            let t = bf16(a[i * k + p]) * bf16(w[p * n + j]);
                            s += t;
                            mag += t.abs();
                        }
                        let bound = (k as f64 + 2.0) * u * mag;
                        assert!(
                            (g as f64 - s).abs() <= bound,
                            "{isa}: row {i} col {j}: {g} vs {s} (bound {bound:e})"
                        );
                    }
                }
                match &first {
                    None => first = Some(out),
                    Some(f) => assert!(
                        f.iter().zip(&out).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{isa} {:?}: {par:?} changed the bits",
                        packed.format()
                    ),
                }
            }
        }
    }
}

#[test]
fn special_values_round_as_half_does() {
    // Ties both ways, the largest finite values (rounding past them gives infinity), the
    // infinities, NaNs of both signs, subnormals and signed zeros.
    let x: Vec<f32> = [
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        -(1.0 + 1.0 / 256.0),
        f32::MAX,
        -f32::MAX,
        f32::from_bits(0x7f7f_7fff),
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001),
        f32::from_bits(0x0000_8000),
        f32::from_bits(0x0001_8000),
        f32::MIN_POSITIVE,
        1e-40,
        0.0,
        -0.0,
    ]
    .to_vec();
    for isa in tiers() {
        let k = Kernels::for_isa(isa).unwrap();
        check_rounded(k, &x, x.len()).unwrap();
        // Odd lengths: the pad value after the row is 0 (it meets a zero weight in the panel).
        check_rounded(k, &x[..7], 7).unwrap();
    }
}

#[test]
fn nonfinite_rows_poison_only_their_rows() {
    // A row holding NaN or an infinity gives NaN or an infinity in that row's outputs, never in
    // the others; an all-zero row gives the bias.
    let (m, k, n) = (4, 40, 19);
    let mut a = values(m * k, 3, -1.0, 1.0);
    a[..k].fill(0.0);
    a[k + 7] = f32::NAN;
    a[2 * k + 3] = f32::INFINITY;
    let w = values(k * n, 4, -1.0, 1.0);
    let b = values(n, 5, -1.0, 1.0);
    for isa in tiers() {
        let kern = Kernels::for_isa(isa).unwrap();
        let packed = kern.pack_bf16(&w, k, n).unwrap();
        let mut q = QuantRows::new();
        q.arm_for(&packed);
        kern.prepare(&a, k, &mut q, Par::Seq).unwrap();
        let mut out = vec![0.0f32; m * n];
        let ep = Epilogue {
            bias: Some(&b),
            ..Epilogue::default()
        };
        kern.gemm_prepared(&a, &q, m, &packed, &ep, &mut out, None, Par::Seq)
            .unwrap();
        assert_eq!(&out[..n], &b[..], "{isa}: a zero row gives the bias");
        assert!(out[n..2 * n].iter().all(|v| v.is_nan()), "{isa}: NaN row");
        assert!(
            out[2 * n..3 * n].iter().all(|v| !v.is_finite()),
            "{isa}: infinite row"
        );
        assert!(out[3 * n..].iter().all(|v| v.is_finite()), "{isa}: others");
    }
}

#[test]
fn misuse_is_an_error() {
    for isa in tiers() {
        let k = Kernels::for_isa(isa).unwrap();
        let p = k.pack_bf16(&[1.0; 12], 4, 3).unwrap();
        assert!(k.pack_bf16(&[1.0; 11], 4, 3).is_err(), "length");
        let mut out = [0.0f32; 6];
        // bf16 weights without bf16 rows, with int8 rows, or with rows of another shape.
        assert!(
            k.gemm(&[1.0; 8], 2, &p, &Epilogue::default(), &mut out, Par::Seq)
                .is_err()
        );
        let mut q = QuantRows::new();
        q.arm_for(&p);
        k.quantize_rows(&[1.0; 8], 4, &mut q, Par::Seq).unwrap();
        assert_eq!(q.format(), Some(Precision::Int8), "re-armed for int8");
        let e = Epilogue::default();
        assert!(
            k.gemm_prepared(&[], &q, 2, &p, &e, &mut out, None, Par::Seq)
                .is_err()
        );
        q.arm_for(&p);
        k.prepare(&[1.0; 12], 4, &mut q, Par::Seq).unwrap();
        assert!(
            k.gemm_prepared(&[], &q, 2, &p, &e, &mut out, None, Par::Seq)
                .is_err(),
            "3 rows prepared, 2 asked"
        );
        q.arm_for(&p);
        k.prepare(&[1.0; 8], 4, &mut q, Par::Seq).unwrap();
        k.gemm_prepared(&[], &q, 2, &p, &e, &mut out, None, Par::Seq)
            .unwrap();
        assert_eq!(out, [4.0; 6]);
    }
}

/// Sequence lengths on both sides of the bf16 tiles' threshold (64 keys), with the tails of
/// their 32-row blocks.
fn seq_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        1usize..40,
        prop::sample::select(vec![63usize, 64, 65, 95, 96, 97, 128, 130]),
        60usize..140,
    ]
}

proptest! {
    #![proptest_config(config(24))]

    /// A bf16 layer's attention (its context armed for a bf16 product): from the table's
    /// threshold on, its products take the bf16-rounded queries, keys and values and the
    /// bf16-rounded probabilities; below it, or without bf16 tiles, float32. Each case against
    /// the float64 reference of the operands it uses, every tier, 1 and 2 threads bit-identical.
    #[test]
    fn bf16_attention_rounds_its_operands(batch in 1usize..3, seq in seq_len(), heads in 1usize..3, d in prop::sample::select(vec![1usize, 8, 24, 32, 33, 40, 64, 70]), mask_kind in 0u8..3, uniform in any::<bool>(), drop in any::<bool>(), poison in any::<bool>(), seed in any::<u64>()) {
        let w = heads * d;
        let m = batch * seq;
        let mut qkv = values(m * 3 * w, seed, -2.0, 2.0);
        let keys: Vec<u8> = values(m, seed ^ 5, 0.0, 1.0).iter().map(|v| (*v > 0.3) as u8).collect();
        let full: Vec<u8> = values(m * seq, seed ^ 6, 0.0, 1.0).iter().map(|v| (*v > 0.4) as u8).collect();
        let mask = match mask_kind {
            0 => KeepMask::All,
            1 => KeepMask::Keys(&keys),
            _ => KeepMask::Full(&full),
        };
        // Poison masked keys' V with NaN / Inf: nothing may leak. (Keys that are not finite in
        // bf16 send their head to the float32 kernel: `nonfinite_bf16_operands_run_float32`.)
        if poison && mask_kind == 1 {
            for t in 0..m {
                if keys[t] == 0 {
                    for c in 2 * w..3 * w {
                        qkv[t * 3 * w + c] = if c % 2 == 0 { f32::NAN } else { f32::INFINITY };
                    }
                }
            }
        }
        let policy = if uniform { MaskedRows::Uniform } else { MaskedRows::Zeros };
        let dropout = (drop && !uniform).then_some((0.25f32, seed));
        let shape = AttentionShape { batch, seq, heads, key_dim: d };
        let split = |round: bool| {
            let at = |t: usize, c: usize| {
                let x = qkv[t * 3 * w + c];
                if round { bf16(x) } else { x as f64 }
            };
            let part = |off: usize| -> Vec<f64> { (0..m).flat_map(|t| (0..w).map(move |c| (t, c))).map(|(t, c)| at(t, off + c)).collect() };
            (part(0), part(w), part(2 * w))
        };
        let vmax = qkv.iter().filter(|x| x.is_finite()).fold(1.0f32, |a, b| a.max(b.abs())) as f64;
        let packed_w = values(w * 2, seed ^ 7, -1.0, 1.0);
        for isa in tiers() {
            let k = Kernels::for_isa(isa).unwrap();
            let tiles = k.bf16_attention_from().is_some_and(|from| seq >= from);
            let (q, kk, v) = split(tiles);
            let (want_ctx, want_p) = r::attention(&q, &kk, &v, shape, mask, policy, dropout);
            // The probabilities: float32 softmax of float32 sums of exact products. The
            // context: each probability rounded to bf16 (bf16's unit roundoff, 2^-8 relative:
            // 8 significant bits), after dropout's 4/3 at most, over values of at most vmax.
            let ctx_tol = if tiles { 1.34 * vmax / 256.0 } else { 0.0 } + 1e-5 * vmax * (seq as f64).sqrt();
            let bf = k.pack_bf16(&packed_w, w, 2).unwrap();
            let mut first: Option<Vec<f32>> = None;
            for par in [Par::Seq, Par::Threads(2)] {
                let mut q_out = QuantRows::new();
                q_out.arm_for(&bf);
                let mut ctx = vec![f32::NAN; m * w];
                let mut p = vec![f32::NAN; batch * heads * seq * seq];
                let mut scratch = AttentionScratch::new();
                k.attention(&qkv, shape, mask, policy, dropout, &mut ctx, Some(&mut p), &mut scratch, Some(&mut q_out), par).unwrap();
                check_close(&p, &want_p, 1e-5, 1e-4, &format!("bf16 probabilities {isa} tiles={tiles}")).map_err(TestCaseError::fail)?;
                check_close(&ctx, &want_ctx, ctx_tol, 1e-4, &format!("bf16 context {isa} tiles={tiles}")).map_err(TestCaseError::fail)?;
                match &first {
                    None => first = Some(ctx),
                    Some(f) => prop_assert!(f.iter().zip(&ctx).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa}: thread split changed the bits"),
                }
            }
        }
    }
}

/// A head whose queries or keys are not finite once rounded to bf16 (a finite float32 past the
/// largest bf16, about 3.3961e38, rounds to infinity), or whose kept values are not, runs the
/// float32 kernel: bit for bit the attention of a float32 layer, where bf16 tiles would make
/// 0 x inf = NaN from a zero operand.
#[test]
fn nonfinite_bf16_operands_run_float32() {
    let (seq, heads, d) = (80, 2, 40);
    let w = heads * d;
    let shape = AttentionShape {
        batch: 1,
        seq,
        heads,
        key_dim: d,
    };
    for (what, col, row) in [("query", 3, 5), ("key", w + 3, 7), ("value", 2 * w + 3, 9)] {
        let mut qkv = values(seq * 3 * w, 9, -1.0, 1.0);
        qkv[row * 3 * w + col] = 3.4e38;
        // A zero partner for the huge value: the other operand's matching entries.
        for t in 0..seq {
            if col < w {
                qkv[t * 3 * w + w + col] = 0.0;
            } else if col < 2 * w {
                qkv[t * 3 * w + col - w] = 0.0;
            }
        }
        for isa in tiers() {
            let k = Kernels::for_isa(isa).unwrap();
            let bf = k.pack_bf16(&vec![0.5; w * 2], w, 2).unwrap();
            let mut runs = Vec::new();
            for armed in [false, true] {
                let mut q_out = QuantRows::new();
                q_out.arm_for(&bf);
                let mut ctx = vec![0.0f32; seq * w];
                let mut scratch = AttentionScratch::new();
                let q = armed.then_some(&mut q_out);
                k.attention(
                    &qkv,
                    shape,
                    KeepMask::All,
                    MaskedRows::Zeros,
                    None,
                    &mut ctx,
                    None,
                    &mut scratch,
                    q,
                    Par::Seq,
                )
                .unwrap();
                runs.push(ctx);
            }
            // Head 0 holds the huge value (its columns 0..d); head 1 may use the tiles.
            let head0 = |r: &Vec<f32>| -> Vec<u32> {
                (0..seq)
                    .flat_map(|t| {
                        r[t * w..t * w + d]
                            .iter()
                            .map(|x| x.to_bits())
                            .collect::<Vec<_>>()
                    })
                    .collect()
            };
            let same = head0(&runs[0]) == head0(&runs[1]);
            assert!(
                same,
                "{isa}: a huge {what} in a bf16 layer's attention: head 0 differs from float32"
            );
        }
    }
}
