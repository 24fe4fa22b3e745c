//! Every golden case (made with the real KerasHub layer), under every masked-row policy, on every
//! instruction-set tier this machine has.

mod common;
use common::{GOLDEN, data, tiers};
use transformer_encoder::conformance::{GoldenCase, max_abs_diff};
use transformer_encoder::{Int8Weights, MaskedRowPolicy, Precision, TransformerEncoder};

#[test]
fn golden_cases_pass_on_every_tier_and_policy() {
    let tiers = tiers();
    assert!(!tiers.is_empty());
    for name in GOLDEN {
        let case = GoldenCase::load(data(&format!("{name}.safetensors"))).unwrap();
        assert_eq!(case.name, name);
        for &isa in &tiers {
            // The forced tier really runs.
            let enc = TransformerEncoder::with_isa(case.config.clone(), case.weights.clone(), isa)
                .unwrap();
            assert_eq!(enc.isa(), isa);
            for policy in [
                MaskedRowPolicy::Keras,
                MaskedRowPolicy::Zeros,
                MaskedRowPolicy::Uniform,
            ] {
                let r = case.run(policy, Some(isa)).unwrap();
                assert!(r.passed(), "{name} on {isa} with {policy:?}: {r:?}");
            }
        }
    }
}

#[test]
fn reference_matches_the_float64_truth() {
    // The naive reference is float64 end to end; it must agree with Keras' float64 truth far
    // inside the f32 tolerance.
    for name in GOLDEN {
        let case = GoldenCase::load(data(&format!("{name}.safetensors"))).unwrap();
        let x = transformer_encoder::TensorView::new(&case.inputs, &case.shape);
        let opts = case.options(MaskedRowPolicy::Keras);
        let r =
            transformer_encoder::reference::forward(&case.config, &case.weights, x, &opts, false)
                .unwrap();
        let err = max_abs_diff(&r.output, &case.outputs_f64);
        let rs =
            transformer_encoder::reference::forward(&case.config, &case.weights, x, &opts, true)
                .unwrap();
        let err2 = max_abs_diff(&rs.output, &case.outputs_scores_path_f64);
        let err3 = max_abs_diff(&rs.scores, &case.attention_scores_f64);
        assert!(
            err < 1e-9 && err2 < 1e-9 && err3 < 1e-9,
            "{name}: {err} {err2} {err3}"
        );
    }
}

#[test]
fn fully_masked_batch_item_differs_between_policies() {
    // gelu_padding_one_empty has a batch item with every key padded: Keras' two paths disagree
    // there by O(1), and the crate reproduces both.
    let case = GoldenCase::load(data("gelu_padding_one_empty.safetensors")).unwrap();
    let d = max_abs_diff(&case.outputs_f64, &case.outputs_scores_path_f64);
    assert!(d > 0.1, "the case must exercise a fully masked row ({d})");
    let enc = TransformerEncoder::new(case.config.clone(), case.weights.clone()).unwrap();
    let x = transformer_encoder::TensorView::new(&case.inputs, &case.shape);
    let zeros = enc
        .forward(x, &case.options(MaskedRowPolicy::Zeros))
        .unwrap();
    let uniform = enc
        .forward(x, &case.options(MaskedRowPolicy::Uniform))
        .unwrap();
    let e0 = max_abs_diff(&zeros, &case.outputs_scores_path_f64);
    let e1 = max_abs_diff(&uniform, &case.outputs_f64);
    assert!(
        e0 <= case.atol_outputs && e1 <= case.atol_outputs,
        "{e0} {e1}"
    );
}

#[test]
fn bf16_is_within_keras_mixed_bfloat16_error_on_every_tier() {
    // Keras' mixed_bfloat16 semantics (bf16 operands, float32 sums): at most 1.25x Keras' own
    // mixed_bfloat16 error against the float64 truth, on every case and tier; and the same
    // layer from a config that says mixed_bfloat16 (or bfloat16) computes in bf16 too.
    for name in GOLDEN {
        let case = GoldenCase::load(data(&format!("{name}.safetensors"))).unwrap();
        let keras = case
            .keras_bf16_err()
            .expect("every golden case has bf16 data");
        for &isa in &tiers() {
            let r = case.run_precision(Precision::Bf16, Some(isa)).unwrap();
            assert!(
                r.passed() && r.atol_outputs == 1.25 * keras,
                "{name} on {isa}: bf16 err {} > 1.25 x Keras mixed_bfloat16 err {keras}",
                r.max_err()
            );
        }
        for policy in ["mixed_bfloat16", "bfloat16"] {
            let cfg = case.config.clone().with_dtype(policy);
            let enc = TransformerEncoder::new(cfg, case.weights.clone()).unwrap();
            assert_eq!(enc.precision(), Precision::Bf16, "{name}: {policy}");
            let x = transformer_encoder::TensorView::new(&case.inputs, &case.shape);
            let y = enc
                .forward(x, &case.options(MaskedRowPolicy::Keras))
                .unwrap();
            let ours = max_abs_diff(&y, &case.outputs_f64);
            assert!(ours <= 1.25 * keras, "{name} {policy}: {ours} vs {keras}");
        }
    }
}

#[test]
fn int8_cases_pass_on_every_tier() {
    // Keras' int8 mode: the layer built from Keras' own quantized variables, against the int8
    // reference (Keras' int8 arithmetic, float parts in float64) under atol_int8.
    for name in GOLDEN {
        let case = GoldenCase::load(data(&format!("{name}.safetensors"))).unwrap();
        assert!(case.weights_int8.is_some(), "{name} has int8 data");
        for &isa in &tiers() {
            let r = case.run_precision(Precision::Int8, Some(isa)).unwrap();
            assert!(r.passed(), "{name} int8 on {isa}: {r:?}");
        }
    }
}

#[test]
fn quantizing_the_float_weights_gives_keras_int8_variables() {
    // Int8Weights::quantize is Keras' quantize("int8"): bit for bit the same int8 kernels and
    // the same float32 kernel_scale as the golden files' weights_int8/.
    for name in GOLDEN {
        let case = GoldenCase::load(data(&format!("{name}.safetensors"))).unwrap();
        let ours = Int8Weights::quantize(&case.weights);
        assert_eq!(Some(&ours), case.weights_int8.as_ref(), "{name}");
        // And an encoder quantized from float weights runs exactly as one built from Keras'
        // variables.
        let x = transformer_encoder::TensorView::new(&case.inputs, &case.shape);
        let opts = case.options(MaskedRowPolicy::Keras);
        let a = TransformerEncoder::new(case.config.clone(), case.weights.clone())
            .unwrap()
            .quantize()
            .unwrap();
        let b = TransformerEncoder::new_int8(case.config.clone(), ours).unwrap();
        assert_eq!(
            a.forward(x, &opts).unwrap(),
            b.forward(x, &opts).unwrap(),
            "{name}"
        );
        assert_eq!(a.int8_weights(), case.weights_int8, "{name}");
    }
}
