//! Every fast kernel, on every tier this machine has, against the naive float64 reference.
//!
//! Tolerance (SPEC section 7): `|fast - ref| <= 1e-5 + 1e-4 |ref|` element-wise; for products,
//! whose sums of `k` terms carry rounding that grows like `sqrt(k)`, the absolute part is scaled
//! by `sqrt(k)` (inputs in [-1, 1]).

use crate::common::{check_close, config, tiers, values};
use proptest::prelude::*;
use transformer_encoder_kernels::reference as r;
use transformer_encoder_kernels::*;

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Sizes from 0, biased to 0, 1 and lane and tile boundaries (7, 8, 9, 15, 16, 17, 31, 32, 33,
/// ...) and past the blocking sizes (KC = 256, MC = 192).
fn size(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..=max.min(40),
        prop::sample::select(vec![
            0usize, 1, 2, 5, 6, 7, 8, 9, 12, 13, 15, 16, 17, 23, 24, 25, 31, 32, 33, 47, 48, 49,
            63, 64, 65
        ])
        .prop_map(move |v| v.min(max)),
        0usize..=max,
    ]
}

/// A row length: at least 1 (a zero row length is an error, tested in tests/adversarial.rs).
fn row_len(max: usize) -> impl Strategy<Value = usize> {
    size(max).prop_map(|v| v.max(1))
}

fn act() -> impl Strategy<Value = Option<Activation>> {
    prop_oneof![
        Just(None),
        Just(Some(Activation::Relu)),
        Just(Some(Activation::Gelu)),
        Just(Some(Activation::GeluApproximate)),
        Just(Some(Activation::Silu)),
        (0..Activation::ALL.len()).prop_map(|i| Some(Activation::ALL[i])),
    ]
}

fn run_gemm(
    m: usize,
    k: usize,
    n: usize,
    bias: bool,
    resid: bool,
    a_act: Option<Activation>,
    seed: u64,
) -> Result<(), TestCaseError> {
    let a = values(m * k, seed, -1.0, 1.0);
    let w = values(k * n, seed ^ 1, -1.0, 1.0);
    let b = values(n, seed ^ 2, -1.0, 1.0);
    let res = values(m * n, seed ^ 3, -1.0, 1.0);
    let mut want = if bias {
        r::linear(&f64s(&a), &f64s(&w), &f64s(&b), m, k, n)
    } else {
        r::matmul(&f64s(&a), &f64s(&w), m, k, n)
    };
    // Products whose activation input lies within the product's tolerance of a jump
    // (hard_shrink's ±0.5) may take either side in float32: those elements are not compared.
    let atol = 1e-5 * (k.max(1) as f64).sqrt();
    let on_jump: Vec<bool> = want
        .iter()
        .map(|&v| a_act.is_some_and(|act| act.near_jump(v, atol + 1e-4 * v.abs())))
        .collect();
    if let Some(act) = a_act {
        r::activation(act, &mut want, n);
    }
    if resid {
        for (x, y) in want.iter_mut().zip(&res) {
            *x += *y as f64;
        }
    }
    for isa in tiers() {
        let kern = Kernels::for_isa(isa).unwrap();
        let packed = kern.pack(&w, k, n).unwrap();
        let ep = Epilogue {
            bias: bias.then_some(&b[..]),
            activation: a_act,
            residual: resid.then_some(&res[..]),
        };
        for par in [Par::Seq, Par::Threads(3)] {
            let mut out = vec![f32::NAN; m * n];
            kern.gemm(&a, m, &packed, &ep, &mut out, par).unwrap();
            let keep = |i: &usize| !on_jump[*i];
            let out: Vec<f32> = (0..m * n).filter(keep).map(|i| out[i]).collect();
            let want: Vec<f64> = (0..m * n).filter(keep).map(|i| want[i]).collect();
            check_close(
                &out,
                &want,
                atol,
                1e-4,
                &format!("gemm {isa} m={m} k={k} n={n} {a_act:?}"),
            )
            .map_err(TestCaseError::fail)?;
        }
    }
    Ok(())
}

/// Both block orders of the float32 product (`ops/gemm.rs`): a row block whose A fits in
/// L2 runs panel by panel, a longer one inner block by inner block (k = 700 on 200 rows: 548 KiB
/// of A in its first block of 192 rows, 22 KiB in the second), over several inner blocks, with
/// every epilogue.
#[test]
fn gemm_block_orders() {
    for (act, resid) in [
        (None, true),
        (Some(Activation::Gelu), true),
        (Some(Activation::Relu), false),
    ] {
        run_gemm(200, 700, 40, true, resid, act, 7).unwrap();
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn gemm_with_epilogues(m in size(70), k in size(300), n in size(100), bias in any::<bool>(), resid in any::<bool>(), a in act(), seed in any::<u64>()) {
        run_gemm(m, k, n, bias, resid, a, seed)?;
    }

    #[test]
    fn activation_kernel(n in row_len(100), rows in 1usize..4, a in act(), scale in prop_oneof![Just(1.0f32), Just(6.0), Just(30.0)], seed in any::<u64>()) {
        let Some(a) = a else { return Ok(()) };
        let x = values(rows * n, seed, -scale, scale);
        let mut want = f64s(&x);
        r::activation(a, &mut want, n);
        for isa in tiers() {
            let mut y = x.clone();
            Kernels::for_isa(isa).unwrap().activation(a, &mut y, n).unwrap();
            check_close(&y, &want, 1e-5, 1e-4, &format!("{a} on {isa}")).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn layer_norm_kernel(n in row_len(800), rows in 1usize..5, resid in any::<bool>(), offset in prop_oneof![Just(0.0f32), Just(3000.0), Just(-40000.0), Just(1e5)], spread in prop_oneof![Just(1.0f32), Just(0.01), Just(100.0)], eps in prop_oneof![Just(1e-5f32), Just(1e-12)], seed in any::<u64>()) {
        let x = values(rows * n, seed, -spread, spread);
        let res: Vec<f32> = values(rows * n, seed ^ 9, -spread, spread).iter().map(|v| v + offset).collect();
        let g = values(n, seed ^ 1, 0.5, 1.5);
        let b = values(n, seed ^ 2, -0.5, 0.5);
        let t: Vec<f64> = x.iter().zip(&res).map(|(a, c)| *a as f64 + if resid { *c as f64 } else { 0.0 }).collect();
        // The reference normalises the exact float64 sum; with a large offset and no residual the
        // input itself is the offset row.
        let t = if resid { t } else { res.iter().map(|&v| v as f64).collect() };
        let xin = if resid { x.clone() } else { res.clone() };
        let want = r::layer_norm(&t, n, &f64s(&g), &f64s(&b), eps as f64);
        // A constant row (n == 1, or all-equal values) normalises to beta exactly.
        for isa in tiers() {
            let k = Kernels::for_isa(isa).unwrap();
            let mut out = vec![f32::NAN; rows * n];
            let mut sum = vec![f32::NAN; rows * n];
            k.layer_norm(&xin, resid.then_some(&res[..]), n, &g, &b, eps, &mut out, Some(&mut sum), None, Par::Threads(2)).unwrap();
            check_close(&out, &want, 1e-5, 1e-4, &format!("layer_norm {isa} n={n} offset={offset} spread={spread}")).map_err(TestCaseError::fail)?;
            for (i, s) in sum.iter().enumerate() {
                let e = xin[i] + if resid { res[i] } else { 0.0 };
                prop_assert_eq!(*s, e);
            }
        }
    }

    #[test]
    fn attention_kernel(batch in 1usize..3, seq in size(40), heads in 1usize..4, d in row_len(40), mask_kind in 0u8..3, uniform in any::<bool>(), scale in prop_oneof![Just(1.0f32), Just(8.0)], drop in any::<bool>(), poison in any::<bool>(), seed in any::<u64>()) {
        let w = heads * d;
        let m = batch * seq;
        let mut qkv = values(m * 3 * w, seed, -scale, scale);
        let keys: Vec<u8> = values(m, seed ^ 5, 0.0, 1.0).iter().map(|v| (*v > 0.3) as u8).collect();
        let full: Vec<u8> = values(m * seq, seed ^ 6, 0.0, 1.0).iter().map(|v| (*v > 0.4) as u8).collect();
        let mask = match mask_kind {
            0 => KeepMask::All,
            1 => KeepMask::Keys(&keys),
            _ => KeepMask::Full(&full),
        };
        // Poison masked keys' K and V with NaN / Inf: nothing may leak.
        if poison && mask_kind == 1 {
            for t in 0..m {
                if keys[t] == 0 {
                    for c in w..3 * w {
                        qkv[t * 3 * w + c] = if c % 2 == 0 { f32::NAN } else { f32::INFINITY };
                    }
                }
            }
        }
        let policy = if uniform { MaskedRows::Uniform } else { MaskedRows::Zeros };
        let dropout = (drop && !uniform).then_some((0.25f32, seed));
        let q: Vec<f64> = (0..m).flat_map(|t| (0..w).map(move |c| (t, c))).map(|(t, c)| qkv[t * 3 * w + c] as f64).collect();
        let kk: Vec<f64> = (0..m).flat_map(|t| (0..w).map(move |c| (t, c))).map(|(t, c)| qkv[t * 3 * w + w + c] as f64).collect();
        let v: Vec<f64> = (0..m).flat_map(|t| (0..w).map(move |c| (t, c))).map(|(t, c)| qkv[t * 3 * w + 2 * w + c] as f64).collect();
        let shape = AttentionShape { batch, seq, heads, key_dim: d };
        let (want_ctx, want_p) = r::attention(&q, &kk, &v, shape, mask, policy, dropout);
        // The kernel applies 1/sqrt(D) itself, as the reference does.
        let vmax = v.iter().filter(|x| x.is_finite()).fold(1.0f64, |a, b| a.max(b.abs()));
        for isa in tiers() {
            let k = Kernels::for_isa(isa).unwrap();
            let mut ctx = vec![f32::NAN; m * w];
            let mut p = vec![f32::NAN; batch * heads * seq * seq];
            let mut scratch = AttentionScratch::new();
            for par in [Par::Seq, Par::Threads(2)] {
                k.attention(&qkv, shape, mask, policy, dropout, &mut ctx, Some(&mut p), &mut scratch, None, par).unwrap();
                check_close(&p, &want_p, 1e-6, 1e-4, &format!("probabilities {isa}")).map_err(TestCaseError::fail)?;
                check_close(&ctx, &want_ctx, 1e-5 * vmax * (seq as f64).sqrt(), 1e-4, &format!("context {isa}")).map_err(TestCaseError::fail)?;
            }
        }
    }

    /// Ragged attention against the reference (each sequence alone), and bit for bit against the
    /// kernel run on each sequence alone.
    #[test]
    fn attention_ragged_kernel(lengths in prop::collection::vec(size(40), 0..6), heads in 1usize..4, d in row_len(24), mask_kind in 0u8..3, uniform in any::<bool>(), drop in any::<bool>(), seed in any::<u64>()) {
        let w = heads * d;
        let m: usize = lengths.iter().sum();
        let squares: usize = lengths.iter().map(|l| l * l).sum();
        let qkv = values(m * 3 * w, seed, -2.0, 2.0);
        let keys: Vec<u8> = values(m, seed ^ 5, 0.0, 1.0).iter().map(|v| (*v > 0.3) as u8).collect();
        let full: Vec<u8> = values(squares, seed ^ 6, 0.0, 1.0).iter().map(|v| (*v > 0.4) as u8).collect();
        let mask = match mask_kind {
            0 => KeepMask::All,
            1 => KeepMask::Keys(&keys),
            _ => KeepMask::Full(&full),
        };
        let policy = if uniform { MaskedRows::Uniform } else { MaskedRows::Zeros };
        let dropout = drop.then_some((0.25f32, seed));
        let part = |o: usize| -> Vec<f64> { (0..m).flat_map(|t| (0..w).map(move |c| (t, c))).map(|(t, c)| qkv[t * 3 * w + o * w + c] as f64).collect() };
        let (q, kk, v) = (part(0), part(1), part(2));
        let (want_ctx, want_p) = r::attention_ragged(&q, &kk, &v, &lengths, heads, d, mask, policy, dropout);
        let shape = RaggedShape { lengths: &lengths, heads, key_dim: d };
        for isa in tiers() {
            let k = Kernels::for_isa(isa).unwrap();
            let mut scratch = AttentionScratch::new();
            // Each sequence alone, as a uniform batch of one.
            let (mut alone_ctx, mut alone_p) = (Vec::new(), Vec::new());
            let (mut start, mut square) = (0, 0);
            for &len in &lengths {
                let one = AttentionShape { batch: 1, seq: len, heads, key_dim: d };
                let sm = match mask {
                    KeepMask::All => KeepMask::All,
                    KeepMask::Keys(f) => KeepMask::Keys(&f[start..start + len]),
                    KeepMask::Full(f) => KeepMask::Full(&f[square..square + len * len]),
                };
                let mut c = vec![f32::NAN; len * w];
                let mut p = vec![f32::NAN; heads * len * len];
                let x = &qkv[start * 3 * w..(start + len) * 3 * w];
                k.attention(x, one, sm, policy, dropout, &mut c, Some(&mut p), &mut scratch, None, Par::Seq).unwrap();
                alone_ctx.extend(c);
                alone_p.extend(p);
                start += len;
                square += len * len;
            }
            for par in [Par::Seq, Par::Threads(2), Par::Threads(3)] {
                let mut ctx = vec![f32::NAN; m * w];
                let mut p = vec![f32::NAN; heads * squares];
                k.attention_ragged(&qkv, shape, mask, policy, dropout, &mut ctx, Some(&mut p), &mut scratch, None, par).unwrap();
                check_close(&p, &want_p, 1e-6, 1e-4, &format!("ragged probabilities {isa}")).map_err(TestCaseError::fail)?;
                check_close(&ctx, &want_ctx, 1e-5 * 2.0 * 7.0, 1e-4, &format!("ragged context {isa}")).map_err(TestCaseError::fail)?;
                prop_assert!(ctx.iter().zip(&alone_ctx).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa} {par:?}: ragged context differs from each sequence alone");
                prop_assert!(p.iter().zip(&alone_p).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa} {par:?}: ragged scores differ from each sequence alone");
            }
        }
    }
}

/// The float32 cache blocks this run uses: those `TRANSFORMER_ENCODER_FP32_BLOCKS` forces (CI
/// runs the product tests again under forced extremes: a forced choice that silently did not
/// apply fails here), else this CPU's, within their bounds.
#[test]
fn fp32_blocks_are_the_forced_ones() {
    let forced = std::env::var(blocks::FP32_BLOCKS_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty());
    for isa in tiers() {
        let b = Kernels::for_isa(isa).unwrap().fp32_blocks();
        match &forced {
            Some(v) => assert_eq!(b, v.parse::<Blocks>().unwrap(), "{isa}"),
            None => assert!(
                (64..=512).contains(&b.kc) && (96..=768).contains(&b.mc),
                "{isa}: {b}"
            ),
        }
        eprintln!("note: {isa} float32 blocks {b}");
    }
}

/// The float32 register tile each tier's products use: the one `TRANSFORMER_ENCODER_FP32_TILE`
/// forces on every tier that has it (CI runs the product tests under each tile: a forced tile
/// that silently did not apply fails here), else the tier's first.
#[test]
fn fp32_tile_is_the_forced_one() {
    let forced = std::env::var(blocks::FP32_TILE_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty());
    for isa in tiers() {
        let k = Kernels::for_isa(isa).unwrap();
        let (tiles, tile) = (k.fp32_tiles(), k.tile(Precision::F32));
        assert!(tiles.contains(&tile), "{isa}: {tile:?} not in {tiles:?}");
        match forced.as_deref().and_then(|v| v.split_once('x')) {
            Some((r, c)) => {
                let want = (r.parse().unwrap(), c.parse().unwrap());
                if tiles.contains(&want) {
                    assert_eq!(tile, want, "{isa}: the forced tile did not apply");
                }
            }
            None => assert_eq!(tile, tiles[0], "{isa}: not the tier's first tile"),
        }
        eprintln!(
            "note: {isa} float32 tile {}x{} of {tiles:?}",
            tile.0, tile.1
        );
    }
}

#[test]
fn gemm_past_the_cache_blocks() {
    // m > mc (192 here), k > kc (256) and not a multiple, n with a tail on every tier's panel
    // width (CI runs these again with the blocks forced small and large).
    run_gemm(203, 777, 131, true, true, Some(Activation::Gelu), 1).unwrap();
    // k = 0: act(bias) + residual, for an element-wise and a row-wise activation.
    run_gemm(5, 0, 19, true, true, Some(Activation::Silu), 4).unwrap();
    run_gemm(3, 0, 7, true, true, Some(Activation::Softmax), 5).unwrap();
    run_gemm(3, 0, 7, false, true, None, 6).unwrap();
    run_gemm(400, 1030, 40, true, false, None, 2).unwrap();
    run_gemm(1, 3072, 769, true, false, Some(Activation::Silu), 3).unwrap();
}

#[test]
fn attention_long_sequence() {
    // A long sequence: memory per call grows with S (scratch of a few rows of S), and results
    // still match the reference.
    let (batch, seq, heads, d) = (1, 700, 2, 24);
    let w = heads * d;
    let qkv = values(seq * 3 * w, 11, -2.0, 2.0);
    let q: Vec<f64> = (0..seq)
        .flat_map(|t| (0..w).map(move |c| (t, c)))
        .map(|(t, c)| qkv[t * 3 * w + c] as f64)
        .collect();
    let kk: Vec<f64> = (0..seq)
        .flat_map(|t| (0..w).map(move |c| (t, c)))
        .map(|(t, c)| qkv[t * 3 * w + w + c] as f64)
        .collect();
    let v: Vec<f64> = (0..seq)
        .flat_map(|t| (0..w).map(move |c| (t, c)))
        .map(|(t, c)| qkv[t * 3 * w + 2 * w + c] as f64)
        .collect();
    let shape = AttentionShape {
        batch,
        seq,
        heads,
        key_dim: d,
    };
    let (want, _) = r::attention(&q, &kk, &v, shape, KeepMask::All, MaskedRows::Zeros, None);
    for isa in tiers() {
        let mut ctx = vec![0.0; seq * w];
        let mut scratch = AttentionScratch::new();
        Kernels::for_isa(isa)
            .unwrap()
            .attention(
                &qkv,
                shape,
                KeepMask::All,
                MaskedRows::Zeros,
                None,
                &mut ctx,
                None,
                &mut scratch,
                None,
                Par::Seq,
            )
            .unwrap();
        check_close(&ctx, &want, 1e-4, 1e-4, &format!("long attention {isa}")).unwrap();
    }
}

#[test]
fn exp_error_bound() {
    // Stated bound: relative error <= 3e-7 where e^x >= FLT_MIN; 0 below -87.33; inf above 88.73.
    let mut xs: Vec<f32> = (0..200_001)
        .map(|i| -87.3 + (88.7 + 87.3) * i as f32 / 200_000.0)
        .collect();
    xs.extend([0.0, -0.0, 1e-30, -1e-30, 88.72]);
    for isa in tiers() {
        let mut y = xs.clone();
        Kernels::for_isa(isa).unwrap().exp(&mut y);
        let mut worst = 0.0f64;
        for (x, v) in xs.iter().zip(&y) {
            let want = (*x as f64).exp();
            worst = worst.max(((*v as f64) - want).abs() / want);
        }
        assert!(worst <= 3e-7, "{isa}: exp relative error {worst}");
        let mut s = [
            -87.34f32,
            -100.0,
            -1e30,
            f32::NEG_INFINITY,
            88.73,
            1e30,
            f32::INFINITY,
            f32::NAN,
        ];
        Kernels::for_isa(isa).unwrap().exp(&mut s);
        assert_eq!(&s[..4], &[0.0; 4], "{isa}");
        assert!(s[4..7].iter().all(|v| *v == f32::INFINITY), "{isa}");
        assert!(s[7].is_nan());
    }
}

#[test]
fn activation_error_bounds_and_special_values() {
    // Every element-wise activation's stated bound (`Activation::error_bound`), on 100,001 points
    // of [-20, 20] and on special values, against the float64 formula of the reference (an
    // independent implementation: the kernels use vector polynomials). The Keras table
    // (tests/activations.rs) checks the same bounds against Keras' own values.
    let xs: Vec<f32> = (0..100_001)
        .map(|i| -20.0 + 40.0 * i as f32 / 100_000.0)
        .chain([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            1e30,
            -1e30,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
        ])
        .collect();
    for isa in tiers() {
        let k = Kernels::for_isa(isa).unwrap();
        for a in Activation::ALL.iter().copied().filter(|a| !a.is_rowwise()) {
            let mut y = xs.clone();
            k.activation(a, &mut y, 1).unwrap();
            let b = a.error_bound();
            for (x, v) in xs.iter().zip(&y) {
                let want = a.eval_f64(*x as f64);
                assert!(
                    b.admits(*v, want, 0.0),
                    "{a} on {isa} at {x}: {v} vs {want} (allowed {:e})",
                    b.allowed(want)
                );
            }
        }
    }
}

/// `gemm_layer_norm` is bit for bit `gemm_prepared` (bias only) then `layer_norm` (residual,
/// quantized output), whatever the plan (column panels, row blocks in float32 and int8), on
/// every tier, one thread or two, with and without a residual, with an edge size (k = 0).
#[test]
fn gemm_layer_norm_is_the_two_calls_bit_for_bit() {
    for isa in tiers() {
        let kern = Kernels::for_isa(isa).unwrap();
        for &(m, k, n) in &[(5, 24, 40), (300, 64, 48), (1100, 16, 24), (7, 0, 9)] {
            let a = values(m * k, 1, -1.0, 1.0);
            let w = values(k * n, 2, -1.0, 1.0);
            let bias = values(n, 3, -1.0, 1.0);
            let res = values(m * n, 4, -2.0, 2.0);
            let (g, b) = (values(n, 5, 0.5, 1.5), values(n, 6, -0.5, 0.5));
            let (wq, ws) = quant::quantize_weights(&w, k, n);
            let f32w = kern.pack(&w, k, n).unwrap();
            let i8w = kern.pack_int8(&wq, &ws, k, n).unwrap();
            // (An int8 input of k = 0 values has no quantized form: float32 weights only.)
            let formats = if k == 0 {
                vec![&f32w]
            } else {
                vec![&f32w, &i8w]
            };
            for p in formats {
                let mut qa = QuantRows::new();
                qa.arm_for(p);
                kern.prepare(&a, k.max(1), &mut qa, Par::Seq).unwrap();
                for residual in [Some(&res[..]), None] {
                    for par in [Par::Seq, Par::Threads(2)] {
                        let what = format!("{isa} {:?} {m}x{k}x{n} {par:?}", p.format());
                        let ep = Epilogue {
                            bias: Some(&bias),
                            activation: None,
                            residual: None,
                        };
                        let (mut t1, mut o1) = (vec![0.0; m * n], vec![0.0; m * n]);
                        let mut q1 = QuantRows::new();
                        q1.arm_for(&i8w);
                        kern.gemm_prepared(&a, &qa, m, p, &ep, &mut t1, None, par)
                            .unwrap();
                        kern.layer_norm(
                            &t1,
                            residual,
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
                        let (mut t2, mut o2) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
                        let mut q2 = QuantRows::new();
                        q2.arm_for(&i8w);
                        kern.gemm_layer_norm(
                            &a,
                            &qa,
                            m,
                            p,
                            Some(&bias),
                            residual,
                            (&g, &b, 1e-3),
                            &mut t2,
                            &mut o2,
                            Some(&mut q2),
                            par,
                        )
                        .unwrap();
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&t1), bits(&t2), "{what}: product");
                        assert_eq!(bits(&o1), bits(&o2), "{what}: layer norm");
                        assert_eq!(q1.rows(), q2.rows(), "{what}: quantized rows");
                        for i in 0..m {
                            assert_eq!(q1.row(i), q2.row(i), "{what}: quantized row {i}");
                        }
                    }
                }
            }
        }
    }
}
