//! Findings from probing the API as a new user would, each a clear error naming its argument.

mod common;
use common::values;
use transformer_encoder::*;

/// Keras' `kernel_scale` is `127 / (max |W| + 1e-7)`, whose reciprocal scales the int32 sums
/// back: 1e-40 gave NaN outputs without an error, and so did 1e-30 (weights of about 1e32).
/// Accepted: 1e-6 to 1e10 (Keras' own are at most 1.27e9, an all-zero column).
#[test]
fn int8_scales_out_of_range_are_errors() {
    let cfg = EncoderConfig::new(32, 2);
    let w = EncoderWeights::init(&cfg, 16, 1).unwrap();
    let q = Int8Weights::quantize(&w);
    let x = values(2 * 3 * 16, 2, -1.0, 1.0);
    for bad in [
        1e-40f32,
        1e-30,
        1e-7,
        1e-15,
        2e10,
        0.0,
        -1.0,
        f32::NAN,
        f32::INFINITY,
        f32::MAX,
    ] {
        let mut layers = q.sublayers().clone();
        layers.dense_mut(Dense::Intermediate).kernel_scale[3] = bad;
        let e = Int8Weights::new(q.dims(), layers)
            .err()
            .unwrap_or_else(|| panic!("kernel_scale {bad:e} accepted"))
            .to_string();
        assert!(
            e.contains("feedforward_intermediate_dense/kernel_scale") && e.contains("1e-6 to 1e10"),
            "{e}"
        );
    }
    // Values in range still give finite outputs, every scale of every projection at once.
    for ok in [1e-6f32, 1e-3, 1.3e9, 1e10] {
        let mut layers = q.sublayers().clone();
        for d in Dense::ALL {
            layers
                .dense_mut(d)
                .kernel_scale
                .iter_mut()
                .for_each(|s| *s = ok);
        }
        let q2 = Int8Weights::new(q.dims(), layers).unwrap();
        let enc = TransformerEncoder::new_int8(cfg.clone(), q2).unwrap();
        let y = enc
            .forward(TensorView::new(&x, &[2, 3, 16]), &CallOptions::new())
            .unwrap();
        assert!(y.iter().all(|v| v.is_finite()), "kernel_scale {ok:e}");
        assert!(y.iter().any(|&v| v != 0.0), "kernel_scale {ok:e}");
    }
}

/// An int8 intermediate size above 65,536 (the int32 sums' exact range) names
/// `intermediate_dim` and the tensor.
#[test]
fn int8_intermediate_too_large_names_intermediate_dim() {
    let cfg = EncoderConfig::new(70_000, 1);
    let w = EncoderWeights::init(&cfg, 2, 1).unwrap();
    let e = match TransformerEncoder::new(cfg, w).unwrap().quantize() {
        Ok(_) => panic!("a 70,000-row int8 kernel accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("intermediate_dim = 70000") && e.contains("feedforward_output_dense/kernel"),
        "{e}"
    );
}

/// A stack called with another rank prints the shape, as the single encoder does.
#[test]
fn a_stack_names_the_shape_of_a_wrong_rank() {
    let cfg = EncoderConfig::new(32, 2);
    let layer = TransformerEncoder::init(cfg, 16, 1).unwrap();
    let stack = EncoderStack::new(vec![layer.clone(), layer]).unwrap();
    let x = values(3 * 16, 1, -1.0, 1.0);
    let calls: [&dyn Fn() -> Result<Vec<f32>, Error>; 2] = [
        &|| stack.forward(TensorView::new(&x, &[3, 16]), &CallOptions::new()),
        &|| {
            stack
                .forward_all(TensorView::new(&x, &[3, 16]), &CallOptions::new())
                .map(|v| v.concat())
        },
    ];
    for call in calls {
        let e = call().unwrap_err().to_string();
        assert!(e.contains("inputs") && e.contains("[3, 16]"), "{e}");
    }
}
