//! The int8 kernels (Keras' int8 mode) on every tier this machine has: the quantization of
//! activation rows and the int32 sums are checked bit for bit against the integer reference
//! (no tolerance: the integer part is exact), the dequantizing epilogue against float64 from the
//! same integers.

use crate::common::{config, tiers, values};
use proptest::prelude::*;
use transformer_encoder_kernels::quant::quantize_weights;
use transformer_encoder_kernels::reference as r;
use transformer_encoder_kernels::*;

/// Sizes from 0, biased to the tails of every tier's int8 panels (8, 16, 32 columns; groups of
/// 4 inner rows) and register tiles (4, 6, 8 rows).
fn size(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..=max.min(40),
        prop::sample::select(vec![
            0usize, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129
        ])
        .prop_map(move |v| v.min(max)),
        0usize..=max,
    ]
}

/// Every tier's quantized rows equal the reference quantization (values and scales).
fn check_quantized(k: &Kernels, x: &[f32], cols: usize, what: &str) -> Result<(), String> {
    let mut q = QuantRows::new();
    k.quantize_rows(x, cols, &mut q, Par::Threads(3))
        .map_err(|e| e.to_string())?;
    let (want_q, want_s) = r::quantize_rows(x, cols);
    for i in 0..x.len() / cols {
        let (got, s) = q.row(i).ok_or("missing row")?;
        if got[..] != want_q[i * cols..(i + 1) * cols]
            || !(s == want_s[i] || (s.is_nan() && want_s[i].is_nan()))
        {
            return Err(format!(
                "{what} on {}: row {i}: scale {s} vs {}, values differ",
                k.isa(),
                want_s[i]
            ));
        }
    }
    Ok(())
}

/// The int32 sums of `a [m, k]` (quantized per row) and `w_q [k, n]`, every tier and split,
/// against the integer reference.
fn check_sums(a: &[f32], wq: &[i8], m: usize, kk: usize, n: usize) -> Result<(), String> {
    let scale = vec![1.0f32; n];
    let (aq, _) = r::quantize_rows(a, kk.max(1));
    let want = r::matmul_i32(&aq, wq, m, kk, n);
    for isa in tiers() {
        let k = Kernels::for_isa(isa).unwrap();
        let packed = k.pack_int8(wq, &scale, kk, n).map_err(|e| e.to_string())?;
        let mut q = QuantRows::new();
        k.quantize_rows(a, kk.max(1), &mut q, Par::Seq)
            .map_err(|e| e.to_string())?;
        if kk == 0 {
            continue;
        }
        for par in [Par::Seq, Par::Threads(3)] {
            let mut out = vec![i32::MIN; m * n];
            k.gemm_int8_sums(&q, &packed, &mut out, par)
                .map_err(|e| e.to_string())?;
            if out != want {
                let i = out.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
                return Err(format!(
                    "int8 sums on {isa} ({par:?}) m={m} k={kk} n={n}: element {i}: {} vs {}",
                    out[i], want[i]
                ));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn quantized_rows_are_keras_bit_for_bit(cols in size(300).prop_map(|c| c.max(1)), rows in 1usize..5, spread in prop_oneof![Just(1.0f32), Just(1e-3), Just(3e4)], ties in any::<bool>(), seed in any::<u64>()) {
        let mut x = values(rows * cols, seed, -spread, spread);
        if ties {
            // Values whose x * s lands half-way: with max |x| = 127 (s = 127 / (127 + 1e-7),
            // which rounds to 1.0 in float32), k + 0.5 rounds to even.
            for (i, v) in x.iter_mut().enumerate() {
                *v = if i % cols == 0 { 127.0 } else { (i % 7) as f32 - 3.5 };
            }
        }
        for isa in tiers() {
            check_quantized(Kernels::for_isa(isa).unwrap(), &x, cols, "random rows").map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn int8_sums_are_exact(m in size(40), k in size(600), n in size(100), seed in any::<u64>()) {
        let a = values(m * k.max(1), seed, -1.0, 1.0);
        let w = values(k * n, seed ^ 5, -1.0, 1.0);
        let (wq, _) = quantize_weights(&w, k, n);
        check_sums(&a[..m * k], &wq, m, k, n).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn int8_product_dequantizes_like_keras(m in size(60), k in size(300).prop_map(|c| c.max(1)), n in size(70), bias in any::<bool>(), resid in any::<bool>(), act in prop_oneof![Just(None), Just(Some(Activation::Gelu)), Just(Some(Activation::Relu)), Just(Some(Activation::Softmax))], seed in any::<u64>()) {
        let a = values(m * k, seed, -2.0, 2.0);
        let w = values(k * n, seed ^ 1, -0.5, 0.5);
        let b = values(n, seed ^ 2, -1.0, 1.0);
        let res = values(m * n, seed ^ 3, -1.0, 1.0);
        let (wq, ws) = quantize_weights(&w, k, n);
        let (aq, xs) = r::quantize_rows(&a, k);
        let sums = r::matmul_i32(&aq, &wq, m, k, n);
        let mut want: Vec<f64> = (0..m * n)
            .map(|i| {
                let (row, col) = (i / n.max(1), i % n.max(1));
                sums[i] as f64 / (xs[row] as f64 * ws[col] as f64) + if bias { b[col] as f64 } else { 0.0 }
            })
            .collect();
        if let Some(act) = act {
            r::activation(act, &mut want, n.max(1));
        }
        if resid {
            for (x, y) in want.iter_mut().zip(&res) {
                *x += *y as f64;
            }
        }
        for isa in tiers() {
            let kern = Kernels::for_isa(isa).unwrap();
            let packed = kern.pack_int8(&wq, &ws, k, n).unwrap();
            let mut q = QuantRows::new();
            q.arm_for(&packed);
            kern.prepare(&a, k, &mut q, Par::Seq).unwrap();
            let ep = Epilogue { bias: bias.then_some(&b[..]), activation: act, residual: resid.then_some(&res[..]) };
            let mut first: Option<Vec<f32>> = None;
            for par in [Par::Seq, Par::Threads(3)] {
                let mut out = vec![f32::NAN; m * n];
                kern.gemm_prepared(&a, &q, m, &packed, &ep, &mut out, None, par).unwrap();
                crate::common::check_close(&out, &want, 1e-5, 1e-5, &format!("int8 product {isa} m={m} k={k} n={n} {act:?}"))
                    .map_err(TestCaseError::fail)?;
                // Bit-identical whatever the thread split.
                match &first {
                    None => first = Some(out),
                    Some(f) => prop_assert!(f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa}: thread split changed the bits"),
                }
            }
        }
    }
}

#[test]
fn extreme_operands_are_exact_at_k_4096() {
    // All +127 and all -127 on both sides, and alternating signs, at k = 4,096: the largest sums
    // (+-66M) and, on the tiers without VNNI, pairs of products at the int16 limit (2 x 127 x 127
    // = 32,258) that a saturating sum would clip.
    let (m, k, n) = (9, 4096, 37);
    for (av, wv) in [(1.0f32, 127i8), (-1.0, 127), (1.0, -127), (-1.0, -127)] {
        let a = vec![av; m * k];
        let w = vec![wv; k * n];
        check_sums(&a, &w, m, k, n).unwrap();
    }
    let a: Vec<f32> = (0..m * k)
        .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
        .collect();
    let w: Vec<i8> = (0..k * n)
        .map(|i| if i % 5 < 2 { -127 } else { 127 })
        .collect();
    check_sums(&a, &w, m, k, n).unwrap();
}

#[test]
fn sums_are_exact_past_the_stack_tile() {
    // k = 4,100: the AVX2 kernel's widened row tile no longer fits its stack buffer (6 rows of
    // 4,096) and goes to the thread's own buffer.
    let (m, k, n) = (6, 4100, 21);
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 37 % 255) as f32) - 127.0)
        .collect();
    let w: Vec<i8> = (0..k * n)
        .map(|i| ((i * 53 % 255) as i32 - 127) as i8)
        .collect();
    check_sums(&a, &w, m, k, n).unwrap();
}

#[test]
fn degenerate_rows() {
    // An all-zero row (scale from the 1e-7 epsilon) gives the bias; a row with NaN or an
    // infinity gives NaN in that row only; one huge value among tiny ones (most quantize to 0)
    // matches the reference.
    let (m, k, n) = (5, 40, 19);
    let mut a = values(m * k, 3, -1.0, 1.0);
    a[..k].fill(0.0);
    a[k + 7] = f32::NAN;
    a[2 * k + 3] = f32::INFINITY;
    a[3 * k..4 * k].fill(1e-6);
    a[3 * k + 11] = 1e6;
    let w = values(k * n, 4, -1.0, 1.0);
    let (wq, ws) = quantize_weights(&w, k, n);
    let b = values(n, 5, -1.0, 1.0);
    for isa in tiers() {
        let kern = Kernels::for_isa(isa).unwrap();
        check_quantized(kern, &a, k, "degenerate rows").unwrap();
        let packed = kern.pack_int8(&wq, &ws, k, n).unwrap();
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
        assert!(out[n..3 * n].iter().all(|v| v.is_nan()), "{isa}: NaN rows");
        assert!(
            out[3 * n..].iter().all(|v| v.is_finite()),
            "{isa}: other rows"
        );
    }
}

#[test]
fn misuse_is_an_error() {
    for isa in tiers() {
        let k = Kernels::for_isa(isa).unwrap();
        let w = vec![1i8; 12];
        assert!(k.pack_int8(&w, &[1.0; 3], 4, 3).is_ok());
        assert!(k.pack_int8(&w, &[1.0; 2], 4, 3).is_err(), "scale length");
        assert!(
            k.pack_int8(&w[..11], &[1.0; 3], 4, 3).is_err(),
            "kernel length"
        );
        assert!(k.pack_int8(&[-128; 12], &[1.0; 3], 4, 3).is_err(), "-128");
        assert!(
            k.pack_int8(&w, &[1.0, 0.0, 1.0], 4, 3).is_err(),
            "zero scale"
        );
        assert!(
            k.pack_int8(&w, &[1.0, f32::NAN, 1.0], 4, 3).is_err(),
            "NaN scale"
        );
        assert!(
            k.pack_int8(&vec![0; 65_537], &[1.0], 65_537, 1).is_err(),
            "k too large for exact sums"
        );
        let p = k.pack_int8(&w, &[1.0; 3], 4, 3).unwrap();
        let mut out = [0.0f32; 6];
        // int8 weights without quantized rows, or with rows for another shape or tier.
        assert!(
            k.gemm(&[1.0; 8], 2, &p, &Epilogue::default(), &mut out, Par::Seq)
                .is_err()
        );
        let mut q = QuantRows::new();
        k.quantize_rows(&[1.0; 10], 5, &mut q, Par::Seq).unwrap();
        assert!(
            k.gemm_prepared(
                &[],
                &q,
                2,
                &p,
                &Epilogue::default(),
                &mut out,
                None,
                Par::Seq
            )
            .is_err()
        );
        for other in tiers().into_iter().filter(|&o| o != isa) {
            let ko = Kernels::for_isa(other).unwrap();
            let mut qo = QuantRows::new();
            ko.quantize_rows(&[1.0; 8], 4, &mut qo, Par::Seq).unwrap();
            assert!(
                k.gemm_prepared(
                    &[],
                    &qo,
                    2,
                    &p,
                    &Epilogue::default(),
                    &mut out,
                    None,
                    Par::Seq
                )
                .is_err(),
                "rows quantized for {other} used on {isa}"
            );
            assert!(
                ko.gemm_prepared(
                    &[],
                    &qo,
                    2,
                    &p,
                    &Epilogue::default(),
                    &mut out,
                    None,
                    Par::Seq
                )
                .is_err(),
                "panels of {isa} used on {other}"
            );
        }
        // Float panels through the int8 sums.
        let pf = k.pack(&[1.0; 12], 4, 3).unwrap();
        let mut s = [0i32; 6];
        assert!(k.gemm_int8_sums(&q, &pf, &mut s, Par::Seq).is_err());
    }
}

/// The int8 pass this run uses: the one `TRANSFORMER_ENCODER_INT8_PASS` forces (CI runs the int8
/// tests again under passes of one panel: a forced pass that silently did not apply fails here),
/// else a quarter of this CPU's L2, within bounds.
#[test]
fn int8_pass_is_the_forced_one() {
    let forced = std::env::var(blocks::INT8_PASS_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty());
    for isa in tiers() {
        let pass = Kernels::for_isa(isa).unwrap().int8_pass();
        match &forced {
            Some(v) => assert_eq!(pass, v.trim().parse::<usize>().unwrap() << 10, "{isa}"),
            None => assert!((64 << 10..=64 << 20).contains(&pass), "{isa}: {pass}"),
        }
        eprintln!("note: {isa} int8 pass {} KiB", pass >> 10);
    }
}
