//! The API's contract: every error path of SPEC section 9, the Keras config JSON round trip,
//! the weights export/import round trip, mask semantics, training mode and the stack.

mod common;
use common::{GOLDEN, data, values};
use transformer_encoder::conformance::GoldenCase;
use transformer_encoder::*;

fn enc(h: usize, n: usize, f: usize) -> TransformerEncoder {
    TransformerEncoder::init(EncoderConfig::new(f, n), h, 3).unwrap()
}

fn shape_err(e: Error, arg: &str) {
    match &e {
        Error::Shape { argument, .. } => assert_eq!(argument, arg, "{e}"),
        other => panic!("expected a shape error naming `{arg}`, got {other:?}"),
    }
    assert!(e.to_string().contains(arg));
}

fn config_err(e: Error, arg: &str) {
    match &e {
        Error::Config { argument, .. } => assert_eq!(argument, arg, "{e}"),
        other => panic!("expected a config error naming `{arg}`, got {other:?}"),
    }
}

// ---------------------------------------------------------------- configuration errors

#[test]
fn config_errors_name_the_argument() {
    let bad = |c: EncoderConfig, h: usize, arg: &str| config_err(c.validate(h).unwrap_err(), arg);
    bad(EncoderConfig::new(0, 2), 8, "intermediate_dim");
    bad(EncoderConfig::new(8, 0), 8, "num_heads");
    bad(EncoderConfig::new(8, 2).with_dropout(1.0), 8, "dropout");
    bad(EncoderConfig::new(8, 2).with_dropout(-0.1), 8, "dropout");
    bad(
        EncoderConfig::new(8, 2).with_dropout(f64::NAN),
        8,
        "dropout",
    );
    bad(
        EncoderConfig::new(8, 2).with_layer_norm_epsilon(0.0),
        8,
        "layer_norm_epsilon",
    );
    bad(
        EncoderConfig::new(8, 2).with_layer_norm_epsilon(-1e-5),
        8,
        "layer_norm_epsilon",
    );
    bad(
        EncoderConfig::new(8, 2).with_layer_norm_epsilon(f64::INFINITY),
        8,
        "layer_norm_epsilon",
    );
    bad(EncoderConfig::new(8, 2).with_dtype("int8"), 8, "dtype");
    bad(
        EncoderConfig::new(8, 2).with_kernel_initializer(Initializer::RandomUniform {
            minval: 1.0,
            maxval: 0.0,
            seed: None,
        }),
        8,
        "kernel_initializer",
    );
    // key_dim == 0: Keras' own message.
    let e = EncoderConfig::new(8, 8).validate(4).unwrap_err();
    assert!(
        e.to_string().contains(
            "The `hidden_dim` value of 4 has to be equal to or greater than `num_heads` value of 8"
        ),
        "{e}"
    );
    assert!(TransformerEncoder::init(EncoderConfig::new(8, 8), 4, 0).is_err());
    assert!(TransformerEncoder::init(EncoderConfig::new(8, 2), 0, 0).is_err());
}

#[test]
fn activation_names() {
    for (i, name) in ACTIVATION_NAMES.iter().enumerate() {
        let a = Activation::from_keras_name(name).unwrap();
        if i < Activation::ALL.len() {
            assert_eq!(a.keras_name(), *name);
        }
    }
    for bad in ["glu", "threshold", "gelu_tanh", "", "RELU"] {
        let json = serde_json::json!({"intermediate_dim": 4, "num_heads": 2, "activation": bad});
        let e = EncoderConfig::from_keras_json(&json).unwrap_err();
        config_err(e.clone(), "activation");
        if bad != "glu" && bad != "threshold" {
            assert!(
                e.to_string().contains("gelu_approximate"),
                "lists the accepted names: {e}"
            );
        }
    }
}

// ---------------------------------------------------------------- config JSON round trip

#[test]
fn keras_config_json_round_trips() {
    for name in GOLDEN {
        let case = GoldenCase::load(data(&format!("{name}.safetensors"))).unwrap();
        let st = std::fs::read(data(&format!("{name}.safetensors"))).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&st).unwrap();
        let original: serde_json::Value =
            serde_json::from_str(&meta.metadata().as_ref().unwrap()["config"]).unwrap();
        assert_eq!(case.config.to_keras_json(), original, "{name}");
        let back = EncoderConfig::from_keras_json(&case.config.to_keras_json()).unwrap();
        assert_eq!(back, case.config);
    }
}

#[test]
fn fresh_configs_write_keras_json() {
    // What Keras 3.15 writes for TransformerEncoder(8, 2, dropout=0.1, activation=gelu_approximate,
    // kernel_initializer="he_normal", dtype="mixed_bfloat16").
    let keras: serde_json::Value = serde_json::from_str(r#"{"name": "transformer_encoder", "trainable": true, "dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "mixed_bfloat16"}, "registered_name": null}, "intermediate_dim": 8, "num_heads": 2, "dropout": 0.1, "activation": {"module": "builtins", "class_name": "function", "config": "keras_hub>gelu_approximate", "registered_name": "function"}, "layer_norm_epsilon": 1e-05, "kernel_initializer": {"module": "keras.initializers", "class_name": "HeNormal", "config": {"seed": null, "input_axes": null, "output_axes": null}, "registered_name": null}, "bias_initializer": {"module": "keras.initializers", "class_name": "Zeros", "config": {}, "registered_name": null}, "normalize_first": false}"#).unwrap();
    let cfg = EncoderConfig::new(8, 2)
        .with_dropout(0.1)
        .with_activation(Activation::GeluApproximate)
        .with_kernel_initializer(Initializer::HeNormal { seed: None })
        .with_dtype("mixed_bfloat16");
    assert_eq!(cfg.to_keras_json(), keras);
    assert_eq!(EncoderConfig::from_keras_json(&keras).unwrap(), cfg);
    assert_eq!(
        EncoderConfig::from_keras_json(&keras)
            .unwrap()
            .to_keras_json(),
        keras
    );
    // Seed example defaults, as in keras-semantics.md section 9 (dropout written as the int 0).
    let seed: serde_json::Value = serde_json::from_str(r#"{"name": "transformer_encoder", "trainable": true, "dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": null}, "intermediate_dim": 64, "num_heads": 8, "dropout": 0, "activation": "relu", "layer_norm_epsilon": 1e-05, "kernel_initializer": {"module": "keras.initializers", "class_name": "GlorotUniform", "config": {"seed": null, "input_axes": null, "output_axes": null}, "registered_name": null}, "bias_initializer": {"module": "keras.initializers", "class_name": "Zeros", "config": {}, "registered_name": null}, "normalize_first": false}"#).unwrap();
    assert_eq!(EncoderConfig::new(64, 8).to_keras_json(), seed);
    // Every initializer writes and reads back.
    for n in INITIALIZER_NAMES {
        let i = Initializer::from_keras_name(n).unwrap();
        assert_eq!(Initializer::from_keras_json(&i.to_keras_json()).unwrap(), i);
        assert_eq!(i.keras_name(), *n);
    }
    assert!(Initializer::from_keras_name("orthogonal").is_err());
}

#[test]
fn swish_is_written_as_silu() {
    let j = serde_json::json!({"intermediate_dim": 4, "num_heads": 2, "activation": "swish"});
    let c = EncoderConfig::from_keras_json(&j).unwrap();
    assert_eq!(c.activation, Activation::Silu);
    assert_eq!(c.to_keras_json()["activation"], "silu");
    let j = serde_json::json!({"intermediate_dim": 4, "num_heads": 2, "activation": null});
    assert_eq!(
        EncoderConfig::from_keras_json(&j).unwrap().activation,
        Activation::Linear
    );
}

#[test]
fn config_json_errors() {
    config_err(
        EncoderConfig::from_keras_json_str("{").unwrap_err(),
        "config",
    );
    config_err(
        EncoderConfig::from_keras_json_str("[]").unwrap_err(),
        "config",
    );
    config_err(
        EncoderConfig::from_keras_json_str(r#"{"num_heads": 2}"#).unwrap_err(),
        "intermediate_dim",
    );
    config_err(
        EncoderConfig::from_keras_json_str(r#"{"intermediate_dim": 2, "num_heads": -1}"#)
            .unwrap_err(),
        "num_heads",
    );
    config_err(
        EncoderConfig::from_keras_json_str(
            r#"{"intermediate_dim": 2, "num_heads": 1, "dropout": "x"}"#,
        )
        .unwrap_err(),
        "dropout",
    );
    config_err(
        EncoderConfig::from_keras_json_str(
            r#"{"intermediate_dim": 2, "num_heads": 1, "kernel_initializer": "orthogonal"}"#,
        )
        .unwrap_err(),
        "initializer",
    );
}

// ---------------------------------------------------------------- weights

#[test]
fn weights_export_import_round_trip() {
    let case = GoldenCase::load(data("heads_not_dividing_hidden.safetensors")).unwrap();
    let e = TransformerEncoder::new(case.config.clone(), case.weights.clone()).unwrap();
    let bytes = e.weights().to_safetensors("").unwrap();
    let back = EncoderWeights::from_safetensors(&bytes, "").unwrap();
    assert_eq!(back, e.weights());
    assert_eq!(back.dims().key_dim, 9);
    let e2 = TransformerEncoder::new(case.config.clone(), back).unwrap();
    let x = TensorView::new(&case.inputs, &case.shape);
    let o = case.options(MaskedRowPolicy::Keras);
    assert_eq!(e.forward(x, &o).unwrap(), e2.forward(x, &o).unwrap());
    // With a prefix, and through a file.
    let dir = std::env::temp_dir().join(format!("te-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("w.safetensors");
    e.weights().save_safetensors(&p, "layer0/").unwrap();
    assert_eq!(
        EncoderWeights::from_safetensors_file(&p, "layer0/").unwrap(),
        e.weights()
    );
    std::fs::remove_dir_all(&dir).ok();
    // Names and shapes follow SPEC section 2.
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), 16);
    assert_eq!(
        st.tensor("self_attention_layer/query/kernel")
            .unwrap()
            .shape(),
        &[48, 5, 9]
    );
    assert_eq!(
        st.tensor("self_attention_layer/attention_output/kernel")
            .unwrap()
            .shape(),
        &[5, 9, 48]
    );
    assert_eq!(
        st.tensor("feedforward_intermediate_dense/kernel")
            .unwrap()
            .shape(),
        &[48, 64]
    );
}

fn rewrite(
    bytes: &[u8],
    f: impl Fn(&str, Vec<usize>, Vec<u8>) -> Option<(String, Vec<usize>, Vec<u8>)>,
) -> Vec<u8> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let mut out: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in st.tensors() {
        if let Some(x) = f(&name, t.shape().to_vec(), t.data().to_vec()) {
            out.push(x);
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = out
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn bad_weight_sets_are_refused_by_name() {
    let w = EncoderWeights::init(&EncoderConfig::new(12, 2), 8, 1).unwrap();
    let bytes = w.to_safetensors("").unwrap();
    let name_of = |e: Error| match e {
        Error::Weights { name, .. } => name,
        other => panic!("expected a weights error, got {other:?}"),
    };
    // Missing.
    let b = rewrite(&bytes, |n, s, d| {
        (n != "feedforward_layer_norm/beta").then(|| (n.to_string(), s, d))
    });
    assert_eq!(
        name_of(EncoderWeights::from_safetensors(&b, "").unwrap_err()),
        "feedforward_layer_norm/beta"
    );
    // Extra.
    let b = rewrite(&bytes, |n, s, d| {
        let n = if n == "feedforward_layer_norm/beta" {
            "feedforward_layer_norm/bogus".to_string()
        } else {
            n.to_string()
        };
        Some((n, s, d))
    });
    let e = EncoderWeights::from_safetensors(&b, "").unwrap_err();
    assert!(
        e.to_string().contains("bogus") || e.to_string().contains("beta"),
        "{e}"
    );
    // Mis-shaped.
    for victim in WEIGHT_NAMES {
        let b = rewrite(&bytes, |n, mut s, mut d| {
            if n == victim {
                s[0] += 1;
                d.resize(s.iter().product::<usize>() * 4, 0);
            }
            Some((n.to_string(), s, d))
        });
        let e = EncoderWeights::from_safetensors(&b, "").unwrap_err();
        assert_eq!(name_of(e.clone()), victim, "{e}");
    }
    // Garbage bytes.
    assert!(matches!(
        EncoderWeights::from_safetensors(b"not a safetensors file", ""),
        Err(Error::Format { .. })
    ));
    // Config that does not match the weights.
    let e = TransformerEncoder::new(EncoderConfig::new(12, 4), w.clone()).unwrap_err();
    assert!(matches!(e, Error::Weights { .. }), "{e}");
    let e = TransformerEncoder::new(EncoderConfig::new(13, 2), w.clone()).unwrap_err();
    assert!(matches!(e, Error::Weights { .. }), "{e}");
    // A sublayer of the wrong length through `new`: the error names the tensor.
    let mut parts = w.sublayers().clone();
    parts.value.bias.pop();
    let e = EncoderWeights::new(w.dims(), parts).unwrap_err();
    assert_eq!(name_of(e), "self_attention_layer/value/bias");
    let mut parts = w.sublayers().clone();
    parts.feedforward_layer_norm.gamma.push(1.0);
    let e = EncoderWeights::new(w.dims(), parts).unwrap_err();
    assert_eq!(name_of(e), "feedforward_layer_norm/gamma");
}

// ---------------------------------------------------------------- call errors

#[test]
fn call_errors_name_the_argument_and_write_nothing() {
    let e = enc(8, 2, 12);
    let x = values(2 * 3 * 8, 1, -1.0, 1.0);
    let ok = TensorView::new(&x, &[2, 3, 8]);
    let o = CallOptions::new();
    shape_err(
        e.forward(TensorView::new(&x, &[6, 8]), &o).unwrap_err(),
        "inputs",
    );
    shape_err(
        e.forward(TensorView::new(&x, &[1, 2, 3, 8]), &o)
            .unwrap_err(),
        "inputs",
    );
    shape_err(
        e.forward(TensorView::new(&x, &[2, 4, 8]), &o).unwrap_err(),
        "inputs",
    );
    shape_err(
        e.forward(TensorView::new(&x, &[2, 8, 3]), &o).unwrap_err(),
        "inputs",
    );
    shape_err(
        e.forward(TensorView::new(&x[..47], &[2, 3, 8]), &o)
            .unwrap_err(),
        "inputs",
    );
    let pad = [1u8; 6];
    let att = [1u8; 18];
    for (m, arg) in [
        (
            CallOptions::new().padding_mask(Mask::new(&pad[..], &[6])),
            "padding_mask",
        ),
        (
            CallOptions::new().padding_mask(Mask::new(&pad[..], &[3, 2])),
            "padding_mask",
        ),
        (
            CallOptions::new().padding_mask(Mask::new(&pad[..5], &[2, 3])),
            "padding_mask",
        ),
        (
            CallOptions::new().padding_mask(Mask::new(&att[..], &[2, 3, 3])),
            "padding_mask",
        ),
        (
            CallOptions::new().attention_mask(Mask::new(&pad[..], &[2, 3])),
            "attention_mask",
        ),
        (
            CallOptions::new().attention_mask(Mask::new(&att[..], &[2, 3, 2, 1])),
            "attention_mask",
        ),
        (
            CallOptions::new().attention_mask(Mask::new(&att[..12], &[2, 3, 2])),
            "attention_mask",
        ),
        (
            CallOptions::new()
                .padding_mask(Mask::new(&pad[..], &[2, 3]))
                .attention_mask(Mask::new(&pad[..], &[2, 3])),
            "attention_mask",
        ),
    ] {
        shape_err(e.forward(ok, &m).unwrap_err(), arg);
    }
    // Keras' attention-mask rank message names the attention mask's own shape.
    let err = e
        .forward(
            ok,
            &CallOptions::new().attention_mask(Mask::new(&pad[..], &[2, 3])),
        )
        .unwrap_err();
    assert!(err.to_string().contains("[2, 3]"), "{err}");
    // Buffers of the wrong size, and nothing written.
    let mut out = vec![7.0f32; 47];
    let mut ws = Workspace::new();
    shape_err(
        e.forward_into(ok, &o, &mut out, None, &mut ws).unwrap_err(),
        "out",
    );
    let mut out = vec![7.0f32; 48];
    let mut sc = vec![7.0f32; 5];
    shape_err(
        e.forward_into(ok, &o, &mut out, Some(&mut sc), &mut ws)
            .unwrap_err(),
        "scores",
    );
    assert!(out.iter().all(|&v| v == 7.0) && sc.iter().all(|&v| v == 7.0));
    let err = e.forward_into(
        ok,
        &CallOptions::new().padding_mask(Mask::new(&pad[..], &[6])),
        &mut out,
        None,
        &mut ws,
    );
    assert!(err.is_err() && out.iter().all(|&v| v == 7.0));
    // Unavailable or unknown tiers are errors, never an illegal instruction.
    for isa in Isa::ALL {
        let r = TransformerEncoder::with_isa(EncoderConfig::new(12, 2), e.weights(), isa);
        assert_eq!(r.is_ok(), isa.is_available());
    }
    assert!("sse9".parse::<Isa>().is_err());
}

#[test]
fn empty_batch_and_empty_sequence() {
    let e = enc(8, 2, 12);
    let y = e
        .forward(TensorView::new(&[], &[0, 5, 8]), &CallOptions::new())
        .unwrap();
    assert!(y.is_empty());
    let (y, s) = e
        .forward_with_scores(TensorView::new(&[], &[0, 5, 8]), &CallOptions::new())
        .unwrap();
    assert!(y.is_empty() && s.is_empty());
    let y = e
        .forward(TensorView::new(&[], &[2, 0, 8]), &CallOptions::new())
        .unwrap();
    assert!(y.is_empty());
    let pad: [u8; 0] = [];
    let y = e
        .forward(
            TensorView::new(&[], &[0, 5, 8]),
            &CallOptions::new().padding_mask(Mask::new(&pad[..], &[0, 5])),
        )
        .unwrap();
    assert!(y.is_empty());
}

// ---------------------------------------------------------------- semantics

fn reference_out(
    e: &TransformerEncoder,
    x: TensorView<'_>,
    o: &CallOptions<'_>,
    scores: bool,
) -> reference::ReferenceOutput {
    reference::forward(e.config(), &e.weights(), x, o, scores).unwrap()
}

fn close(a: &[f32], b: &[f64], tol: f64) {
    let d = conformance::max_abs_diff(a, b);
    assert!(d <= tol, "max diff {d} > {tol}");
}

#[test]
fn mask_values_follow_keras_truncation_and_min() {
    let e = enc(16, 4, 20);
    let x = values(2 * 4 * 16, 5, -2.0, 2.0);
    let xv = TensorView::new(&x, &[2, 4, 16]);
    // Float masks: 0.7 masks, 1.5 and -1 attend.
    let pf = [1.0f32, 0.7, 1.5, -1.0, 1.0, 1.0, 0.2, 0.0];
    let pu = [1u8, 0, 1, 1, 1, 1, 0, 0];
    let a = e
        .forward(
            xv,
            &CallOptions::new().padding_mask(Mask::new(&pf[..], &[2, 4])),
        )
        .unwrap();
    let b = e
        .forward(
            xv,
            &CallOptions::new().padding_mask(Mask::new(&pu[..], &[2, 4])),
        )
        .unwrap();
    assert_eq!(a, b);
    // i32 / i64 / bool agree with u8.
    let pi: Vec<i32> = vec![1, 0, 2, -1, 5, 1, 0, 0];
    let pl: Vec<i64> = pi.iter().map(|&v| v as i64).collect();
    let pb: Vec<bool> = pu.iter().map(|&v| v != 0).collect();
    for o in [
        CallOptions::new().padding_mask(Mask::new(&pi[..], &[2, 4])),
        CallOptions::new().padding_mask(Mask::new(&pl[..], &[2, 4])),
        CallOptions::new().padding_mask(Mask::new(&pb[..], &[2, 4])),
    ] {
        assert_eq!(e.forward(xv, &o).unwrap(), b);
    }
    // min(0, -1) = -1 is nonzero: attend (Keras' min on integers, not a logical AND).
    let p = [0i32, 1, 1, 1, 1, 1, 1, 1];
    let att_neg = [-1i32; 32];
    let att_one = [1i32; 32];
    let with_neg = e
        .forward(
            xv,
            &CallOptions::new()
                .padding_mask(Mask::new(&p[..], &[2, 4]))
                .attention_mask(Mask::new(&att_neg[..], &[2, 4, 4])),
        )
        .unwrap();
    let none = e.forward(xv, &CallOptions::new()).unwrap();
    assert_eq!(with_neg, none);
    let with_one = e
        .forward(
            xv,
            &CallOptions::new()
                .padding_mask(Mask::new(&p[..], &[2, 4]))
                .attention_mask(Mask::new(&att_one[..], &[2, 4, 4])),
        )
        .unwrap();
    let pad_only = e
        .forward(
            xv,
            &CallOptions::new().padding_mask(Mask::new(&p[..], &[2, 4])),
        )
        .unwrap();
    assert_eq!(with_one, pad_only);
    assert_ne!(with_one, none);
    // A [1, S] padding mask broadcasts over the batch.
    let p1 = [1u8, 1, 0, 1];
    let p2 = [1u8, 1, 0, 1, 1, 1, 0, 1];
    assert_eq!(
        e.forward(
            xv,
            &CallOptions::new().padding_mask(Mask::new(&p1[..], &[1, 4]))
        )
        .unwrap(),
        e.forward(
            xv,
            &CallOptions::new().padding_mask(Mask::new(&p2[..], &[2, 4]))
        )
        .unwrap()
    );
}

#[test]
fn padding_masks_keys_only_and_implicit_mask_masks_queries() {
    let e = enc(16, 4, 20);
    let x = values(4 * 16, 8, -1.0, 1.0);
    let xv = TensorView::new(&x, &[1, 4, 16]);
    let ids = [101u32, 7, 0, 0];
    let pad = padding_mask_from_ids(&ids, 0);
    let o = CallOptions::new().padding_mask(Mask::new(&pad, &[1, 4]));
    let (y, s) = e.forward_with_scores(xv, &o).unwrap();
    // Padded query rows still get probability rows summing to 1 over the real keys.
    for h in 0..4 {
        for i in 0..4 {
            let row = &s[(h * 4 + i) * 4..][..4];
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert_eq!(row[2], 0.0);
            assert_eq!(row[3], 0.0);
        }
    }
    let r = reference_out(&e, xv, &o, true);
    close(&y, &r.output, 1e-5);
    // The implicit mask: query rows 2 and 3 become fully masked (zero rows on the scores path).
    let im = implicit_mask_from_ids(&ids, 1, 4, 0).unwrap();
    let o2 = CallOptions::new().attention_mask(Mask::new(&im, &[1, 4, 4]));
    let (_, s2) = e.forward_with_scores(xv, &o2).unwrap();
    for h in 0..4 {
        assert!(s2[(h * 4 + 2) * 4..][..8].iter().all(|&v| v == 0.0));
    }
    assert!(implicit_mask_from_ids(&ids, 2, 4, 0).is_err());
}

#[test]
fn masked_keys_never_leak_nan() {
    let e = enc(16, 2, 24);
    let mut x = values(2 * 5 * 16, 9, -1.0, 1.0);
    // Poison the padded positions of batch item 0 (tokens 3, 4).
    for t in 3..5 {
        for j in 0..16 {
            x[t * 16 + j] = if j % 2 == 0 { f32::NAN } else { f32::INFINITY };
        }
    }
    let pad = [1u8, 1, 1, 0, 0, 1, 1, 1, 1, 1];
    let o = CallOptions::new().padding_mask(Mask::new(&pad[..], &[2, 5]));
    let y = e.forward(TensorView::new(&x, &[2, 5, 16]), &o).unwrap();
    // Rows 0..3 of item 0 and all of item 1 are finite.
    assert!(y[..3 * 16].iter().all(|v| v.is_finite()));
    assert!(y[5 * 16..].iter().all(|v| v.is_finite()));
}

#[test]
fn training_mode_dropout_is_seeded_and_matches_the_reference() {
    let cfg = EncoderConfig::new(24, 4).with_dropout(0.3);
    let e = TransformerEncoder::init(cfg, 16, 11).unwrap();
    let x = values(2 * 6 * 16, 2, -1.0, 1.0);
    let xv = TensorView::new(&x, &[2, 6, 16]);
    let inf = e.forward(xv, &CallOptions::new()).unwrap();
    let t1 = e.forward(xv, &CallOptions::new().training(5)).unwrap();
    let t1b = e.forward(xv, &CallOptions::new().training(5)).unwrap();
    let t2 = e.forward(xv, &CallOptions::new().training(6)).unwrap();
    assert_eq!(t1, t1b);
    assert_ne!(t1, t2);
    assert_ne!(t1, inf);
    let r = reference_out(&e, xv, &CallOptions::new().training(5), false);
    close(&t1, &r.output, 1e-4);
    // Inference ignores dropout; dropout > 0 selects the zero-row policy (Keras' scores path).
    let r0 = reference_out(&e, xv, &CallOptions::new(), false);
    close(&inf, &r0.output, 1e-4);
    // Returned scores are the pre-dropout probabilities.
    let (_, s) = e
        .forward_with_scores(xv, &CallOptions::new().training(5))
        .unwrap();
    for row in s.chunks(6) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    // dropout = 0: training changes nothing.
    let e0 = TransformerEncoder::init(EncoderConfig::new(24, 4), 16, 11).unwrap();
    assert_eq!(
        e0.forward(xv, &CallOptions::new().training(5)).unwrap(),
        e0.forward(xv, &CallOptions::new()).unwrap()
    );
}

#[test]
fn every_activation_matches_the_reference() {
    for act in Activation::ALL {
        for pre in [false, true] {
            let cfg = EncoderConfig::new(20, 3)
                .with_activation(act)
                .with_normalize_first(pre);
            let e = TransformerEncoder::init(cfg, 12, 4).unwrap();
            let x = values(2 * 5 * 12, 3, -3.0, 3.0);
            let xv = TensorView::new(&x, &[2, 5, 12]);
            let y = e.forward(xv, &CallOptions::new()).unwrap();
            let r = reference_out(&e, xv, &CallOptions::new(), false);
            let scale = r.output.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            close(&y, &r.output, 2e-5 * scale);
        }
    }
}

#[test]
fn initializers_are_reproducible_and_scaled() {
    for n in INITIALIZER_NAMES {
        let cfg = EncoderConfig::new(32, 4)
            .with_kernel_initializer(Initializer::from_keras_name(n).unwrap())
            .with_bias_initializer(Initializer::from_keras_name(n).unwrap());
        let a = EncoderWeights::init(&cfg, 64, 1).unwrap();
        let b = EncoderWeights::init(&cfg, 64, 1).unwrap();
        let c = EncoderWeights::init(&cfg, 64, 2).unwrap();
        assert_eq!(a, b, "{n}");
        if *n != "zeros" && *n != "ones" {
            assert_ne!(a, c, "{n}");
        }
        assert!(
            a.get("self_attention_layer_norm/gamma")
                .unwrap()
                .iter()
                .all(|&v| v == 1.0)
        );
    }
    // glorot_uniform on the query kernel: |w| <= sqrt(6 / (64 + 64)) = 0.2165.
    let w = EncoderWeights::init(&EncoderConfig::new(32, 8), 64, 9).unwrap();
    let q = w.get("self_attention_layer/query/kernel").unwrap();
    let m = q.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
    assert!(m <= 0.2166 && m > 0.2, "{m}");
    assert!(
        w.get("self_attention_layer/query/bias")
            .unwrap()
            .iter()
            .all(|&v| v == 0.0)
    );
}

#[test]
fn stack_runs_layers_in_order() {
    let layers: Vec<TransformerEncoder> = (0..3)
        .map(|i| TransformerEncoder::init(EncoderConfig::new(20, 2), 8, i).unwrap())
        .collect();
    let x = values(3 * 8, 4, -1.0, 1.0);
    let xv = TensorView::new(&x, &[1, 3, 8]);
    let o = CallOptions::new();
    let mut manual = x.clone();
    for l in &layers {
        manual = l.forward(TensorView::new(&manual, &[1, 3, 8]), &o).unwrap();
    }
    let stack = EncoderStack::new(layers).unwrap();
    assert_eq!(stack.forward(xv, &o).unwrap(), manual);
    let all = stack.forward_all(xv, &o).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[2], manual);
    assert!(EncoderStack::new(vec![]).is_err());
    let mixed = vec![
        TransformerEncoder::init(EncoderConfig::new(20, 2), 8, 0).unwrap(),
        TransformerEncoder::init(EncoderConfig::new(20, 2), 10, 0).unwrap(),
    ];
    assert!(EncoderStack::new(mixed).is_err());
}

#[test]
fn encoder_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<TransformerEncoder>();
    check::<EncoderStack>();
    let e = std::sync::Arc::new(enc(8, 2, 12));
    let x = values(3 * 8, 4, -1.0, 1.0);
    let want = e
        .forward(TensorView::new(&x, &[1, 3, 8]), &CallOptions::new())
        .unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                assert_eq!(
                    e.forward(TensorView::new(&x, &[1, 3, 8]), &CallOptions::new())
                        .unwrap(),
                    want
                )
            });
        }
    });
}

#[test]
fn weights_written_by_the_export_script_load_and_match_keras() {
    // tests/data/export/keras_export.safetensors was written by examples/keras_to_safetensors.py from a
    // fresh keras_hub TransformerEncoder(32, 4, activation="gelu"); keras_export_io.json holds
    // Keras' own input and output for it.
    let bytes = std::fs::read(data("export/keras_export.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let cfg =
        EncoderConfig::from_keras_json_str(&meta.metadata().as_ref().unwrap()["config"]).unwrap();
    let w = EncoderWeights::from_safetensors(&bytes, "").unwrap();
    let e = TransformerEncoder::new(cfg, w).unwrap();
    let io: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data("export/keras_export_io.json")).unwrap(),
    )
    .unwrap();
    let x: Vec<f32> = io["x"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let y: Vec<f64> = io["y"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let out = e
        .forward(TensorView::new(&x, &[2, 5, 16]), &CallOptions::new())
        .unwrap();
    close(&out, &y, 1e-5);
}

#[test]
fn a_layer_loads_from_a_file_as_from_its_weights() {
    let case = GoldenCase::load(data("heads_not_dividing_hidden.safetensors")).unwrap();
    let w = case.weights.clone();
    let dir = std::env::temp_dir().join(format!("te-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (float, int8) = (dir.join("f.safetensors"), dir.join("q.safetensors"));
    w.save_safetensors(&float, "layer0/").unwrap();
    Int8Weights::quantize(&w)
        .save_safetensors(&int8, "layer0/")
        .unwrap();
    let x = TensorView::new(&case.inputs, &case.shape);
    let o = case.options(MaskedRowPolicy::Keras);
    // Every float policy (its rounding, its compute precision) and Keras' int8 variables: the
    // layer read projection by projection equals the one built from the weights in memory.
    for dtype in ["float32", "mixed_bfloat16", "bfloat16", "float16"] {
        let cfg = case.config.clone().with_dtype(dtype);
        let from_file = TransformerEncoder::from_safetensors_file(cfg.clone(), &float, "layer0/");
        let from_file = from_file.unwrap();
        let direct = TransformerEncoder::new(cfg, w.clone()).unwrap();
        assert_eq!(from_file.precision(), direct.precision(), "{dtype}");
        assert_eq!(
            from_file.forward(x, &o).unwrap(),
            direct.forward(x, &o).unwrap(),
            "{dtype}"
        );
    }
    let from_file =
        TransformerEncoder::from_safetensors_file(case.config.clone(), &int8, "layer0/").unwrap();
    let direct =
        TransformerEncoder::new_int8(case.config.clone(), Int8Weights::quantize(&w)).unwrap();
    assert_eq!(from_file.precision(), Precision::Int8);
    assert_eq!(
        from_file.forward(x, &o).unwrap(),
        direct.forward(x, &o).unwrap()
    );
    // Errors name what is wrong: the file, a tensor outside the prefix's names, a value the
    // storage cannot hold, an int8 scale out of Keras' range.
    let missing = dir.join("none.safetensors");
    let e =
        TransformerEncoder::from_safetensors_file(case.config.clone(), &missing, "").unwrap_err();
    assert!(e.to_string().contains("none.safetensors"), "{e}");
    let e = TransformerEncoder::from_safetensors_file(case.config.clone(), &float, "").unwrap_err();
    assert!(e.to_string().contains("layer0/"), "{e}");
    let big = w.clone().map_values(|name, t| {
        if name == "feedforward_output_dense/kernel" {
            t[3] = 1e6;
        }
    });
    big.save_safetensors(&float, "").unwrap();
    let cfg16 = case.config.clone().with_dtype("float16");
    let e = TransformerEncoder::from_safetensors_file(cfg16.clone(), &float, "").unwrap_err();
    let e2 = TransformerEncoder::new(cfg16, big).unwrap_err();
    assert_eq!(e.to_string(), e2.to_string());
    assert!(
        e.to_string().contains("feedforward_output_dense/kernel"),
        "{e}"
    );
    // A weight of 1e9 gives its column the scale 127 / 1e9, below Keras' range.
    let wide = w.clone().map_values(|name, t| {
        if name == "self_attention_layer/query/kernel" {
            t[0] = 1e9;
        }
    });
    Int8Weights::quantize(&wide)
        .save_safetensors(&int8, "")
        .unwrap();
    let e = TransformerEncoder::from_safetensors_file(case.config.clone(), &int8, "").unwrap_err();
    assert!(
        e.to_string()
            .contains("self_attention_layer/query/kernel_scale"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bf16_attention_is_an_option_of_every_layer() {
    // Float32 and int8 layers with the attention's products in bf16 (an option beyond Keras):
    // from 64 tokens on, near the layer without it (bf16 operands, 2^-8 relative each); shorter
    // sequences bit for bit as without it; a ragged batch bit for bit as each sequence alone.
    let (h, heads, f) = (64, 4, 128);
    for precision in [Precision::F32, Precision::Int8] {
        let base = enc(h, heads, f).with_precision(precision).unwrap();
        assert!(!base.bf16_attention());
        let with = match base.clone().with_bf16_attention() {
            Ok(e) => e,
            Err(e) => {
                // No bf16 tiles on this tier: refused by name.
                config_err(e, "bf16_attention");
                continue;
            }
        };
        assert!(with.bf16_attention() && with.precision() == precision);
        let o = CallOptions::new();
        let lengths = [96usize, 40, 70];
        let total: usize = lengths.iter().sum();
        let x = values(total * h, 11, -2.0, 2.0);
        let mut start = 0;
        let mut alone = Vec::new();
        for &len in &lengths {
            let xs = &x[start * h..(start + len) * h];
            let view = TensorView::new(xs, &[1, len, h]);
            let (a, b) = (
                with.forward(view, &o).unwrap(),
                base.forward(view, &o).unwrap(),
            );
            let d = a
                .iter()
                .zip(&b)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0f32, f32::max);
            if len >= 64 {
                assert!(
                    d > 0.0,
                    "{precision}: the option changed nothing at {len} tokens"
                );
                assert!(d < 0.05, "{precision}: {d} at {len} tokens");
            } else {
                assert_eq!(a, b, "{precision}: {len} tokens");
            }
            alone.extend(a);
            start += len;
        }
        let ragged = with
            .forward_ragged(RaggedView::new(&x, &lengths), &o)
            .unwrap();
        assert_eq!(
            ragged, alone,
            "{precision}: ragged against each sequence alone"
        );
        // The stack sets every layer.
        let stack = EncoderStack::new(vec![base.clone(), base])
            .unwrap()
            .with_bf16_attention()
            .unwrap();
        assert!(stack.layers().iter().all(|l| l.bf16_attention()));
    }
}
