//! BERT-family checkpoints: a tiny random checkpoint under Hugging Face names, loaded and
//! checked against an independent float64 BERT written here from the `[out, in]` weights;
//! every missing or mis-shaped tensor is named; poolings.

mod common;
use common::values;
use std::collections::BTreeMap;
use transformer_encoder::*;

const H: usize = 16;
const N: usize = 4;
const F: usize = 24;
const V: usize = 30;
const P: usize = 12;
const L: usize = 2;

fn shapes() -> Vec<(String, Vec<usize>)> {
    let mut v = vec![
        ("embeddings.word_embeddings.weight".to_string(), vec![V, H]),
        (
            "embeddings.position_embeddings.weight".to_string(),
            vec![P, H],
        ),
        (
            "embeddings.token_type_embeddings.weight".to_string(),
            vec![2, H],
        ),
        ("embeddings.LayerNorm.weight".to_string(), vec![H]),
        ("embeddings.LayerNorm.bias".to_string(), vec![H]),
    ];
    for l in 0..L {
        let p = format!("encoder.layer.{l}.");
        for (n, s) in [
            ("attention.self.query.weight", vec![H, H]),
            ("attention.self.query.bias", vec![H]),
            ("attention.self.key.weight", vec![H, H]),
            ("attention.self.key.bias", vec![H]),
            ("attention.self.value.weight", vec![H, H]),
            ("attention.self.value.bias", vec![H]),
            ("attention.output.dense.weight", vec![H, H]),
            ("attention.output.dense.bias", vec![H]),
            ("attention.output.LayerNorm.weight", vec![H]),
            ("attention.output.LayerNorm.bias", vec![H]),
            ("intermediate.dense.weight", vec![F, H]),
            ("intermediate.dense.bias", vec![F]),
            ("output.dense.weight", vec![H, F]),
            ("output.dense.bias", vec![H]),
            ("output.LayerNorm.weight", vec![H]),
            ("output.LayerNorm.bias", vec![H]),
        ] {
            v.push((format!("{p}{n}"), s));
        }
    }
    v
}

fn checkpoint(
    prefix: &str,
    rename: impl Fn(&str) -> Option<String>,
    reshape: impl Fn(&str, Vec<usize>) -> Vec<usize>,
) -> (Vec<u8>, BTreeMap<String, Vec<f32>>) {
    let mut tensors = BTreeMap::new();
    for (i, (n, s)) in shapes().into_iter().enumerate() {
        let len: usize = s.iter().product();
        let mut t = values(len, 100 + i as u64, -0.5, 0.5);
        if n.ends_with("LayerNorm.weight") {
            t.iter_mut().for_each(|x| *x += 1.0);
        }
        tensors.insert(n.clone(), (s, t));
    }
    let mut bytes_src: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (n, (s, t)) in &tensors {
        if let Some(name) = rename(n) {
            let s2 = reshape(n, s.clone());
            let count: usize = s2.iter().product();
            let mut data: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
            data.resize(count * 4, 0);
            bytes_src.push((format!("{prefix}{name}"), s2, data));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes_src
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    (
        bytes,
        tensors.into_iter().map(|(n, (_, t))| (n, t)).collect(),
    )
}

fn config(act: &str) -> String {
    format!(
        r#"{{"vocab_size": {V}, "hidden_size": {H}, "num_hidden_layers": {L}, "num_attention_heads": {N}, "intermediate_size": {F}, "hidden_act": "{act}", "layer_norm_eps": 1e-12, "max_position_embeddings": {P}, "type_vocab_size": 2, "pad_token_id": 0}}"#
    )
}

/// An independent float64 BERT from the [out, in] weights, as PyTorch computes it.
fn bert_f64(
    w: &BTreeMap<String, Vec<f32>>,
    ids: &[i64],
    tt: &[i64],
    mask: &[u8],
    b: usize,
    s: usize,
    act: Activation,
) -> Vec<f64> {
    let g = |n: &str| -> Vec<f64> { w[n].iter().map(|&v| v as f64).collect() };
    let ln = |x: &[f64], gm: &[f64], bt: &[f64]| -> Vec<f64> {
        let m = x.iter().sum::<f64>() / x.len() as f64;
        let var = x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / x.len() as f64;
        x.iter()
            .zip(gm.iter().zip(bt))
            .map(|(v, (gg, bb))| (v - m) / (var + 1e-12).sqrt() * gg + bb)
            .collect()
    };
    let lin = |x: &[f64], wt: &[f64], bias: &[f64], out: usize, inp: usize| -> Vec<f64> {
        (0..out)
            .map(|o| bias[o] + (0..inp).map(|i| wt[o * inp + i] * x[i]).sum::<f64>())
            .collect()
    };
    let (we, pe, te) = (
        g("embeddings.word_embeddings.weight"),
        g("embeddings.position_embeddings.weight"),
        g("embeddings.token_type_embeddings.weight"),
    );
    let mut hs: Vec<Vec<f64>> = (0..b * s)
        .map(|t| {
            let x: Vec<f64> = (0..H)
                .map(|j| {
                    we[ids[t] as usize * H + j] + pe[(t % s) * H + j] + te[tt[t] as usize * H + j]
                })
                .collect();
            ln(
                &x,
                &g("embeddings.LayerNorm.weight"),
                &g("embeddings.LayerNorm.bias"),
            )
        })
        .collect();
    let d = H / N;
    for l in 0..L {
        let p = |n: &str| g(&format!("encoder.layer.{l}.{n}"));
        let q: Vec<Vec<f64>> = hs
            .iter()
            .map(|x| {
                lin(
                    x,
                    &p("attention.self.query.weight"),
                    &p("attention.self.query.bias"),
                    H,
                    H,
                )
            })
            .collect();
        let k: Vec<Vec<f64>> = hs
            .iter()
            .map(|x| {
                lin(
                    x,
                    &p("attention.self.key.weight"),
                    &p("attention.self.key.bias"),
                    H,
                    H,
                )
            })
            .collect();
        let v: Vec<Vec<f64>> = hs
            .iter()
            .map(|x| {
                lin(
                    x,
                    &p("attention.self.value.weight"),
                    &p("attention.self.value.bias"),
                    H,
                    H,
                )
            })
            .collect();
        let mut next = Vec::new();
        for bi in 0..b {
            for i in 0..s {
                let t = bi * s + i;
                let mut ctx = vec![0.0; H];
                for n in 0..N {
                    let sc: Vec<f64> = (0..s)
                        .map(|j| {
                            let dot: f64 = (0..d)
                                .map(|e| q[t][n * d + e] * k[bi * s + j][n * d + e])
                                .sum();
                            dot / (d as f64).sqrt()
                                + if mask[bi * s + j] == 0 {
                                    f64::NEG_INFINITY
                                } else {
                                    0.0
                                }
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for j in 0..s {
                        for c in 0..d {
                            ctx[n * d + c] += e[j] / z * v[bi * s + j][n * d + c];
                        }
                    }
                }
                let a = lin(
                    &ctx,
                    &p("attention.output.dense.weight"),
                    &p("attention.output.dense.bias"),
                    H,
                    H,
                );
                let x1: Vec<f64> = a.iter().zip(&hs[t]).map(|(a, r)| a + r).collect();
                let x1 = ln(
                    &x1,
                    &p("attention.output.LayerNorm.weight"),
                    &p("attention.output.LayerNorm.bias"),
                );
                let mut inter = lin(
                    &x1,
                    &p("intermediate.dense.weight"),
                    &p("intermediate.dense.bias"),
                    F,
                    H,
                );
                inter.iter_mut().for_each(|z| *z = act.eval_f64(*z));
                let f = lin(
                    &inter,
                    &p("output.dense.weight"),
                    &p("output.dense.bias"),
                    H,
                    F,
                );
                let y: Vec<f64> = f.iter().zip(&x1).map(|(a, r)| a + r).collect();
                next.push(ln(
                    &y,
                    &p("output.LayerNorm.weight"),
                    &p("output.LayerNorm.bias"),
                ));
            }
        }
        hs = next;
    }
    hs.concat()
}

#[test]
fn tiny_bert_matches_an_independent_float64_bert() {
    let (b, s) = (2, 7);
    let ids: Vec<i64> = (0..b * s).map(|i| ((i * 7 + 3) % V) as i64).collect();
    let tt: Vec<i64> = (0..b * s).map(|i| (i % s >= 4) as i64).collect();
    let mask: Vec<u8> = (0..b * s)
        .map(|i| (i % s < if i < s { 7 } else { 5 }) as u8)
        .collect();
    for (act_name, act) in [
        ("gelu", Activation::Gelu),
        ("gelu_new", Activation::GeluApproximate),
        ("relu", Activation::Relu),
        ("silu", Activation::Silu),
    ] {
        for prefix in ["", "bert."] {
            let (bytes, w) = checkpoint(prefix, |n| Some(n.to_string()), |_, s| s);
            let m = BertModel::from_parts(&config(act_name), &bytes).unwrap();
            let states = m.hidden_states(&ids, Some(&tt), &mask, b, s).unwrap();
            assert_eq!(states.len(), L + 1);
            let want = bert_f64(&w, &ids, &tt, &mask, b, s, act);
            let err = conformance::max_abs_diff(states.last().unwrap(), &want);
            assert!(err < 1e-4, "{act_name} {prefix:?}: {err}");
            let mut ws = StackWorkspace::new();
            assert_eq!(
                &m.forward(&ids, Some(&tt), &mask, b, s, &mut ws).unwrap(),
                states.last().unwrap()
            );
        }
    }
    // Older checkpoints name LayerNorm parameters gamma / beta.
    let (bytes, w) = checkpoint(
        "",
        |n| {
            Some(
                n.replace("LayerNorm.weight", "LayerNorm.gamma")
                    .replace("LayerNorm.bias", "LayerNorm.beta"),
            )
        },
        |_, s| s,
    );
    let m = BertModel::from_parts(&config("gelu"), &bytes).unwrap();
    let got = m.hidden_states(&ids, Some(&tt), &mask, b, s).unwrap();
    let err = conformance::max_abs_diff(
        got.last().unwrap(),
        &bert_f64(&w, &ids, &tt, &mask, b, s, Activation::Gelu),
    );
    assert!(err < 1e-4, "{err}");
}

#[test]
fn missing_or_misshaped_tensors_are_named() {
    let name_of = |e: Error| match e {
        Error::Weights { name, .. } => name,
        other => panic!("expected a weights error, got {other}"),
    };
    for (victim, _) in shapes() {
        let (bytes, _) = checkpoint("", |n| (n != victim).then(|| n.to_string()), |_, s| s);
        let e = BertModel::from_parts(&config("gelu"), &bytes).unwrap_err();
        assert_eq!(name_of(e), victim);
        let (bytes, _) = checkpoint(
            "bert.",
            |n| Some(n.to_string()),
            |n, mut s| {
                if n == victim {
                    s[0] += 1;
                }
                s
            },
        );
        let e = BertModel::from_parts(&config("gelu"), &bytes).unwrap_err();
        assert_eq!(name_of(e.clone()), format!("bert.{victim}"), "{e}");
    }
    let (bytes, _) = checkpoint("", |n| Some(n.to_string()), |_, s| s);
    assert!(matches!(
        BertModel::from_parts(&config("tanh"), &bytes),
        Err(Error::Config { .. })
    ));
    assert!(BertModel::from_parts("{", &bytes).is_err());
    assert!(BertModel::from_parts(&config("gelu"), b"garbage").is_err());
    let m = BertModel::from_parts(&config("gelu"), &bytes).unwrap();
    assert!(
        m.embed(&[V as i64], None, 1, 1).is_err(),
        "id past the vocabulary"
    );
    assert!(m.embed(&[-1], None, 1, 1).is_err());
    assert!(
        m.embed(&[1], Some(&[2]), 1, 1).is_err(),
        "token type past the table"
    );
    assert!(
        m.embed(&[1; P + 1], None, 1, P + 1).is_err(),
        "longer than the position table"
    );
    assert!(m.embed(&[1, 2, 3], None, 1, 2).is_err());
    assert!(m.embed(&[], None, 0, 3).unwrap().is_empty());
}

#[test]
fn poolings() {
    let h = [
        1.0f32, -2.0, 3.0, 4.0, 100.0, 100.0, 0.5, 0.5, 7.0, 7.0, 9.0, -9.0,
    ];
    let mask = [1u8, 1, 0, 1, 1, 1];
    assert_eq!(
        pool(&h, &mask, 2, 3, 2, Pooling::Mean, false).unwrap(),
        vec![2.0, 1.0, 5.5, -0.5]
    );
    assert_eq!(
        pool(&h, &mask, 2, 3, 2, Pooling::Cls, false).unwrap(),
        vec![1.0, -2.0, 0.5, 0.5]
    );
    assert_eq!(
        pool(&h, &mask, 2, 3, 2, Pooling::Max, false).unwrap(),
        vec![3.0, 4.0, 9.0, 7.0]
    );
    let n = pool(&h, &mask, 2, 3, 2, Pooling::Max, true).unwrap();
    assert!((n[0] - 0.6).abs() < 1e-7 && (n[1] - 0.8).abs() < 1e-7);
    assert!(pool(&h, &mask[..5], 2, 3, 2, Pooling::Mean, false).is_err());
    // A text with no real token pools to zeros, never NaN.
    let z = pool(&h[..6], &[0, 0, 0], 1, 3, 2, Pooling::Mean, true).unwrap();
    assert_eq!(z, vec![0.0, 0.0]);
}

/// `BertModel::forward_ragged`: each sequence's rows are bit-identical to the model run on it
/// alone and to its real rows in a padded batch; `pool_ragged` gives what `pool` gives.
#[test]
fn ragged_bert_is_bit_identical_to_each_sequence_alone_and_to_padding() {
    let (bytes, _) = checkpoint("", |n| Some(n.to_string()), |_, s| s);
    let m = BertModel::from_parts(&config("gelu"), &bytes).unwrap();
    let h = m.config().hidden_size;
    let lengths = [7usize, 1, 0, 4];
    let seq = 7;
    let total: usize = lengths.iter().sum();
    let ids: Vec<i64> = (0..total).map(|i| ((i * 5 + 1) % V) as i64).collect();
    let tt: Vec<i64> = (0..total).map(|i| (i % 3 == 0) as i64).collect();
    let mut ws = StackWorkspace::new();
    let ragged = m
        .forward_ragged(&ids, Some(&tt), &lengths, &mut ws)
        .unwrap();
    // The same sequences padded to 7 with a padding mask.
    let n = lengths.len();
    let (mut pids, mut ptt, mut mask) =
        (vec![0i64; n * seq], vec![0i64; n * seq], vec![0u8; n * seq]);
    let mut start = 0;
    for (b, &len) in lengths.iter().enumerate() {
        for s in 0..len {
            pids[b * seq + s] = ids[start + s];
            ptt[b * seq + s] = tt[start + s];
            mask[b * seq + s] = 1;
        }
        let alone = m
            .forward(
                &ids[start..start + len],
                Some(&tt[start..start + len]),
                &vec![1; len],
                1,
                len,
                &mut ws,
            )
            .unwrap();
        assert_eq!(
            &ragged[start * h..(start + len) * h],
            &alone[..],
            "sequence {b} alone"
        );
        start += len;
    }
    let padded = m
        .forward(&pids, Some(&ptt), &mask, n, seq, &mut ws)
        .unwrap();
    let mut start = 0;
    for (b, &len) in lengths.iter().enumerate() {
        assert_eq!(
            &ragged[start * h..(start + len) * h],
            &padded[b * seq * h..(b * seq + len) * h],
            "sequence {b} padded"
        );
        start += len;
    }
    for pooling in [Pooling::Mean, Pooling::Cls, Pooling::Max] {
        let a = pool_ragged(&ragged, &lengths, h, pooling, true).unwrap();
        let b = pool(&padded, &mask, n, seq, h, pooling, true).unwrap();
        // A sequence of length 0 has no [CLS] state: its padded row 0 is a pad token's.
        for s in [0, 1, 3] {
            assert_eq!(
                &a[s * h..(s + 1) * h],
                &b[s * h..(s + 1) * h],
                "{pooling:?} sequence {s}"
            );
        }
    }
    // Errors name the argument.
    let e = m
        .forward_ragged(&ids, Some(&tt), &[7, 1], &mut ws)
        .unwrap_err();
    assert!(e.to_string().contains("input_ids"), "{e}");
    let e = pool_ragged(&ragged, &[7, 1], h, Pooling::Mean, true).unwrap_err();
    assert!(e.to_string().contains("hidden"), "{e}");
}

/// A sentence-transformers folder of the tiny checkpoint, with a small WordPiece tokenizer,
/// `max_position_embeddings = positions` and, if given, `sentence_bert_config.json`'s
/// `max_seq_length`.
fn sentence_dir(name: &str, positions: usize, max_seq_length: Option<usize>) -> std::path::PathBuf {
    let dir = probe_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = config("gelu").replace(
        &format!(r#""max_position_embeddings": {P}"#),
        &format!(r#""max_position_embeddings": {positions}"#),
    );
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let (bytes, _) = checkpoint(
        "",
        |n| Some(n.to_string()),
        |n, s| {
            if n.starts_with("embeddings.position") {
                vec![positions, s[1]]
            } else {
                s
            }
        },
    );
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    let tok = r###"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
      "normalizer":{"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":true,"strip_accents":null,"lowercase":true},
      "pre_tokenizer":{"type":"BertPreTokenizer"},
      "post_processor":{"type":"BertProcessing","sep":["[SEP]",3],"cls":["[CLS]",2]},
      "decoder":null,
      "model":{"type":"WordPiece","unk_token":"[UNK]","continuing_subword_prefix":"##","max_input_chars_per_word":100,
        "vocab":{"[PAD]":0,"[UNK]":1,"[CLS]":2,"[SEP]":3,"hello":4,"world":5,"the":6,"router":7}}}"###;
    std::fs::write(dir.join("tokenizer.json"), tok).unwrap();
    if let Some(n) = max_seq_length {
        std::fs::write(
            dir.join("sentence_bert_config.json"),
            format!(r#"{{"max_seq_length": {n}, "do_lower_case": false}}"#),
        )
        .unwrap();
    }
    dir
}

/// Where [`sentence_dir`] writes the folder `name` (removed by the test that made it).
fn probe_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("te-probe-{}-{name}", std::process::id()))
}

/// A sequence length below the tokenizer's special tokens and one more is refused, naming
/// the setting, wherever it comes from (it used to panic inside `tokenizers` with overflow
/// checks, and to give all-zero embeddings without them).
#[test]
fn too_short_sequence_lengths_are_errors() {
    let texts = ["hello world", "the router"];
    let ok = SentenceEncoder::from_dir(sentence_dir("ok", P, None)).unwrap();
    let want = ok.encode(&texts).unwrap();
    for n in [0, 1, 2] {
        let e = SentenceEncoder::from_dir(sentence_dir("ok", P, None))
            .unwrap()
            .with_max_seq_length(n)
            .err()
            .unwrap_or_else(|| panic!("with_max_seq_length({n}) accepted"))
            .to_string();
        assert!(
            e.contains("max_seq_length") && e.contains("at least 3"),
            "{e}"
        );
        let e = SentenceEncoder::from_dir(sentence_dir(&format!("sb{n}"), P, Some(n)))
            .err()
            .unwrap_or_else(|| panic!("max_seq_length {n} in the folder accepted"))
            .to_string();
        assert!(
            e.contains("max_seq_length") && e.contains("sentence_bert_config"),
            "{e}"
        );
    }
    for p in [1, 2] {
        let e = SentenceEncoder::from_dir(sentence_dir(&format!("p{p}"), p, None))
            .err()
            .unwrap_or_else(|| panic!("max_position_embeddings {p} accepted"))
            .to_string();
        assert!(e.contains("max_position_embeddings"), "{e}");
    }
    // The shortest length works: [CLS], one token, [SEP]; above the positions, clamped.
    let fresh = || SentenceEncoder::from_dir(sentence_dir("ok", P, None)).unwrap();
    let short = fresh()
        .with_max_seq_length(3)
        .unwrap()
        .encode(&texts)
        .unwrap();
    assert!(short.iter().flatten().all(|v| v.is_finite()));
    assert!(short.iter().any(|v| v.iter().any(|&x| x != 0.0)));
    let long = fresh()
        .with_max_seq_length(10_000)
        .unwrap()
        .encode(&texts)
        .unwrap();
    assert_eq!(long, want);
    for name in ["ok", "sb0", "sb1", "sb2", "p1", "p2"] {
        std::fs::remove_dir_all(probe_dir(name)).unwrap();
    }
}
