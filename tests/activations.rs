//! Every activation's vector kernel, on every tier, against Keras' own values
//! (`tests/data/activations/keras_activations.safetensors`, made by `tools/keras_activations.py`
//! with Keras 3.15 in float64): 6,077 inputs (a grid over [-30, 30], points around every kink,
//! tiny, huge, subnormal, +-0, +-inf, NaN) and 12 rows for the row-wise activations.
//!
//! The table's inputs are float64; the kernels take `f32(x)`. Where the two differ, the target is
//! moved by the activation's change between them, `f(f32(x)) - f(x)`, evaluated by the float64
//! reference formula (a first-order correction of the input rounding, not the oracle: the value
//! compared with is Keras'). The target is then rounded to f32 (so Keras' 4.5e38 is `inf`), and
//! the kernel must be within [`Activation::error_bound`]: NaN where Keras gives NaN, the same
//! infinity, else `|y - t| <= max(ulps * ulp(t), abs)`.
//!
//! `sparsemax` is the exception: Keras 3.15's is wrong on the JAX backend (see the README), so
//! the rows are checked against the definition (the float64 reference) instead, and the test
//! also shows that Keras' values differ from it.

mod common;
use safetensors::SafeTensors;
use transformer_encoder::Activation;
use transformer_encoder_kernels::Kernels;
use transformer_encoder_kernels::activation::ulp32;

fn f64s(st: &SafeTensors<'_>, name: &str) -> Vec<f64> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("table has {name}"));
    assert_eq!(t.dtype(), safetensors::Dtype::F64, "{name}");
    t.data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Within the bound? `None` if so, else a description. `slack` is the float64 error of the
/// target itself (Keras' own rounding, and its input-rounding correction).
fn check(act: Activation, y: f32, t64: f64, slack: f64) -> Option<String> {
    // f64::MIN_POSITIVE: XLA flushes float64 subnormals, so Keras' 5e-324 inputs give 0.
    let b = act.error_bound();
    (!b.admits(y, t64, slack + f64::MIN_POSITIVE)).then(|| {
        format!(
            "got {y}, Keras {t64} (error {:e} = {:.2} ulp, allowed {:e})",
            (y as f64 - t64).abs(),
            (y as f64 - t64).abs() / ulp32(t64),
            b.allowed(t64) + slack
        )
    })
}

/// Activations whose Keras float64 formula cancels, losing about `eps * |x|` absolute: their
/// table values carry that much error of their own (`tanh_shrink(1e-7)` is off by 4 %).
fn cancels(act: Activation) -> bool {
    matches!(
        act,
        Activation::TanhShrink | Activation::GeluApproximate | Activation::Squareplus
    )
}

const TABLE: &str = "activations/keras_activations.safetensors";

#[test]
fn every_elementwise_activation_matches_keras_on_every_tier() {
    let bytes = std::fs::read(common::data(TABLE)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let x = f64s(&st, "x");
    assert_eq!(x.len(), 6077);
    let tiers = common::tiers();
    let mut report = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for act in Activation::ALL.iter().copied().filter(|a| !a.is_rowwise()) {
        let keras = f64s(&st, act.keras_name());
        assert_eq!(keras.len(), x.len());
        // (target, the float64 rounding error of forming it)
        let target: Vec<(f64, f64)> = x
            .iter()
            .zip(&keras)
            .map(|(&xi, &ki)| {
                let x32 = xi as f32 as f64;
                let corr = act.eval_f64(x32) - act.eval_f64(xi);
                // Keras' own float64 error: a few ulps of the result, and of x where its
                // formula cancels (x - tanh x; 0.5 x (1 + tanh u); x + sqrt(x^2 + 4)).
                let keras_err =
                    4.0 * f64::EPSILON * (ki.abs() + if cancels(act) { xi.abs() } else { 0.0 });
                if x32 != xi && ki.is_finite() && corr.is_finite() {
                    (ki + corr, keras_err + 4.0 * f64::EPSILON * corr.abs())
                } else {
                    (ki, keras_err)
                }
            })
            .collect();
        for &isa in &tiers {
            let k = Kernels::for_isa(isa).unwrap();
            let mut y: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let len = y.len();
            k.activation(act, &mut y, len).unwrap();
            let mut worst = (0.0f64, 0.0f64);
            for i in 0..x.len() {
                let (t64, slack) = target[i];
                // Up to three failures per activation and tier, all reported at the end.
                let here = format!("{act} on {isa} ");
                if let Some(e) = check(act, y[i], t64, slack)
                    && failures.iter().filter(|f| f.starts_with(&here)).count() < 3
                {
                    failures.push(format!("{here}at x = {:e}: {e}", x[i]));
                }
                // The worst error in ulps, where the ulp bound (not `abs`) is what applies.
                let b = act.error_bound();
                let t = t64 as f32;
                if t.is_finite() && b.ulps as f64 * ulp32(t64) > b.abs as f64 {
                    let u = ((y[i] as f64 - t64).abs() - slack).max(0.0) / ulp32(t64);
                    if u > worst.0 {
                        worst = (u, x[i]);
                    }
                }
            }
            report.push(format!(
                "{act:>16} {isa:>10}: {:.2} ulp (at x = {:e})",
                worst.0, worst.1
            ));
        }
    }
    // The measured worst cases, for the record (`--nocapture`).
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn rowwise_activations_match_keras_and_the_definition() {
    let bytes = std::fs::read(common::data(TABLE)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let rows = f64s(&st, "rows");
    let n = 16;
    assert_eq!(rows.len(), 12 * n);
    for act in [
        Activation::Softmax,
        Activation::LogSoftmax,
        Activation::Sparsemax,
    ] {
        let keras = f64s(&st, act.keras_name());
        // The definition, in float64, from the f32 inputs (`def`) and from the table's own
        // float64 inputs (`def64`): their difference is the input-rounding correction.
        let eval = |v: &[f64]| -> Vec<f64> {
            let mut d = v.to_vec();
            for r in d.chunks_mut(n) {
                act.eval_row_f64(r);
            }
            d
        };
        let def = eval(&rows.iter().map(|&v| v as f32 as f64).collect::<Vec<_>>());
        let def64 = eval(&rows);
        if act == Activation::Sparsemax {
            // Keras' sparsemax is not the definition (it sums the cumulative sums): the rows
            // disagree, which is why the crate is checked against the definition here.
            let differ = keras
                .iter()
                .zip(&def64)
                .filter(|(k, d)| (*k - *d).abs() > 1e-3)
                .count();
            assert!(
                differ > 0,
                "Keras' sparsemax now agrees with the definition"
            );
        }
        let target: Vec<f64> = (0..rows.len())
            .map(|i| {
                if act == Activation::Sparsemax {
                    def[i]
                } else if keras[i].is_finite() && (def[i] - def64[i]).is_finite() {
                    keras[i] + (def[i] - def64[i])
                } else {
                    keras[i]
                }
            })
            .collect();
        for isa in common::tiers() {
            let k = Kernels::for_isa(isa).unwrap();
            let mut y: Vec<f32> = rows.iter().map(|&v| v as f32).collect();
            k.activation(act, &mut y, n).unwrap();
            for (i, (&yi, &t)) in y.iter().zip(&target).enumerate() {
                // sparsemax: ulps of the row's largest finite magnitude (see `error_bound`).
                let slack = if act == Activation::Sparsemax {
                    let r = &rows[i / n * n..][..n];
                    let big = r
                        .iter()
                        .filter(|v| v.is_finite())
                        .fold(0.0f64, |m, v| m.max(v.abs()));
                    act.error_bound().ulps as f64 * ulp32(big)
                } else {
                    0.0
                };
                if let Some(e) = check(act, yi, t, slack + 4.0 * f64::EPSILON * t.abs()) {
                    panic!("{act} on {isa}, row {}, entry {}: {e}", i / n, i % n);
                }
            }
        }
    }
}
