//! The whole encoder, fast against reference.

use crate::common::{check_close, check_close_rows, config, tiers, values};
use proptest::prelude::*;
use transformer_encoder::*;

fn activation() -> impl Strategy<Value = Activation> {
    prop_oneof![
        Just(Activation::Relu),
        Just(Activation::Gelu),
        Just(Activation::GeluApproximate),
        Just(Activation::Silu),
        (0..Activation::ALL.len()).prop_map(|i| Activation::ALL[i]),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    batch: usize,
    seq: usize,
    heads: usize,
    hidden: usize,
    inter: usize,
    act: Activation,
    pre: bool,
    mask_kind: u8,
    seed: u64,
    scale: f32,
}

fn case() -> impl Strategy<Value = Case> {
    (
        0usize..4,
        1usize..20,
        1usize..6,
        1usize..40,
        1usize..70,
        activation(),
        any::<bool>(),
        0u8..4,
        any::<u64>(),
        prop_oneof![Just(1.0f32), Just(10.0), Just(0.1)],
    )
        .prop_map(
            |(batch, seq, heads, hk, inter, act, pre, mask_kind, seed, scale)| Case {
                batch,
                seq,
                heads,
                hidden: heads * (1 + hk % 20) + hk % 3,
                inter,
                act,
                pre,
                mask_kind,
                seed,
                scale,
            },
        )
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn encoder_matches_reference(c in case()) {
        let cfg = EncoderConfig::new(c.inter, c.heads).with_activation(c.act).with_normalize_first(c.pre);
        let w = EncoderWeights::init(&cfg, c.hidden, c.seed).unwrap();
        let x = values(c.batch * c.seq * c.hidden, c.seed, -c.scale, c.scale);
        let xv = TensorView::new(&x, &[c.batch, c.seq, c.hidden]);
        // Masks with fully masked rows: random key padding (some items all padded), or a
        // random attention mask combined with padding.
        let pad: Vec<u8> = values(c.batch * c.seq, c.seed ^ 1, 0.0, 1.0).iter().map(|v| (*v > 0.35) as u8).collect();
        let att: Vec<u8> = values(c.batch * c.seq * c.seq, c.seed ^ 2, 0.0, 1.0).iter().map(|v| (*v > 0.3) as u8).collect();
        let mut opts = CallOptions::new();
        if c.mask_kind & 1 == 1 {
            opts = opts.padding_mask(Mask::new(&pad, &[c.batch, c.seq]));
        }
        if c.mask_kind & 2 == 2 {
            opts = opts.attention_mask(Mask::new(&att, &[c.batch, c.seq, c.seq]));
        }
        let r = reference::forward(&cfg, &w, xv, &opts, false).unwrap();
        let rs = reference::forward(&cfg, &w, xv, &opts, true).unwrap();
        let scale = r.output.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for isa in tiers() {
            let e = TransformerEncoder::with_isa(cfg.clone(), w.clone(), isa).unwrap();
            prop_assert_eq!(e.isa(), isa);
            let y = e.forward(xv, &opts).unwrap();
            // Tokens whose activation input sits on a jump (hard_shrink's ±0.5, within the
            // oracle's margin) may take either side in float32: skipped.
            check_close_rows(&y, &r.output, c.hidden, &r.near_jump, 1e-5 * scale, 1e-4, &format!("{isa} output")).map_err(TestCaseError::fail)?;
            let (y2, s) = e.forward_with_scores(xv, &opts).unwrap();
            check_close_rows(&y2, &rs.output, c.hidden, &rs.near_jump, 1e-5 * scale, 1e-4, &format!("{isa} scores-call output")).map_err(TestCaseError::fail)?;
            check_close(&s, &rs.scores, 1e-6, 1e-4, &format!("{isa} scores")).map_err(TestCaseError::fail)?;
        }
    }
}
