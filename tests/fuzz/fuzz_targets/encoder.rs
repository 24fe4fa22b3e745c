//! Fuzz the public API with arbitrary shapes, masks, values and tiers: no panic, no sanitizer
//! report, and results equal to the float64 reference whenever the input is valid and finite.
//!
//! `cargo +nightly fuzz run encoder --fuzz-dir tests/fuzz` (see README, "Reliability").
#![no_main]

use libfuzzer_sys::fuzz_target;
use transformer_encoder::*;

/// Reads small integers and floats from the fuzzer's bytes.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn float(&mut self) -> f32 {
        let code = self.byte();
        match code {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => f32::NEG_INFINITY,
            3 => 1e30,
            4 => -1e30,
            5 => 1e-39,
            6 => 0.0,
            7 => -0.0,
            _ => (code as f32 - 128.0) / 16.0 * (1 + self.byte() % 4) as f32,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let batch = (b.byte() % 4) as usize;
    let seq = (b.byte() % 20) as usize;
    let heads = 1 + (b.byte() % 5) as usize;
    let hidden = (b.byte() % 40) as usize;
    let inter = (b.byte() % 50) as usize;
    let act = Activation::ALL[b.byte() as usize % Activation::ALL.len()];
    let pre = b.byte() % 2 == 1;
    let isa = Isa::ALL[b.byte() as usize % 3];
    let policy = [MaskedRowPolicy::Keras, MaskedRowPolicy::Zeros, MaskedRowPolicy::Uniform][b.byte() as usize % 3];
    let dropout = if b.byte() % 4 == 0 { 0.25 } else { 0.0 };
    let mask_kind = b.byte() % 4;
    // Shapes are sometimes deliberately wrong (to exercise the errors).
    let shape_noise = b.byte() % 8;
    let cfg = EncoderConfig::new(inter, heads).with_activation(act).with_normalize_first(pre).with_dropout(dropout);
    let enc = match EncoderWeights::init(&cfg, hidden, 7).and_then(|w| TransformerEncoder::with_isa(cfg.clone(), w, isa)) {
        Ok(e) => e,
        Err(_) => return, // invalid configurations (zero sizes, unavailable tier) are errors, never panics
    };
    let finite_only = b.byte() % 2 == 0;
    let n = batch * seq * hidden;
    let x: Vec<f32> = (0..n).map(|_| if finite_only { (b.byte() as f32 - 128.0) / 32.0 } else { b.float() }).collect();
    let pad: Vec<u8> = (0..batch * seq).map(|_| b.byte() % 3).collect();
    let att: Vec<f32> = (0..batch * seq * seq).map(|_| (b.byte() as f32 - 100.0) / 50.0).collect();
    let shape = match shape_noise {
        0 => vec![batch, seq + 1, hidden],
        1 => vec![batch * seq, hidden],
        _ => vec![batch, seq, hidden],
    };
    let mut opts = CallOptions::new().masked_rows(policy);
    if mask_kind & 1 == 1 {
        opts = opts.padding_mask(Mask::new(&pad[..], &[batch, seq]));
    }
    if mask_kind & 2 == 2 {
        opts = opts.attention_mask(Mask::new(&att[..], &[batch, seq, seq]));
    }
    if b.byte() % 3 == 0 {
        opts = opts.training(11);
    }
    let xv = TensorView::new(&x, &shape);
    let res = enc.forward_with_scores(xv, &opts);
    match shape_noise {
        // Rank 2 is always refused.
        1 => {
            assert!(res.is_err(), "a rank-2 input was accepted");
            return;
        }
        // [B, S + 1, H] holds the wrong number of values unless it is empty; either way only a
        // Result may come back.
        0 => return,
        _ => {}
    }
    let (y, s) = res.expect("a valid call failed");
    assert_eq!(y.len(), n);
    if finite_only {
        let r = reference::forward(&cfg, &enc.weights(), xv, &opts, true).expect("reference");
        let scale = r.output.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (i, (a, w)) in y.iter().zip(&r.output).enumerate() {
            // A token whose activation input sits on a jump (hard_shrink's ±0.5) may take
            // either side in float32.
            if r.near_jump[i / hidden] {
                continue;
            }
            let d = (*a as f64 - w).abs();
            assert!(d <= 1e-4 * scale + 1e-3 * w.abs(), "output {i}: {a} vs {w}");
        }
        for (a, w) in s.iter().zip(&r.scores) {
            assert!((*a as f64 - w).abs() <= 1e-5 + 1e-4 * w.abs());
        }
    }
});
