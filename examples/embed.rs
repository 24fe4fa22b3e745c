//! Text in, sentence embeddings out, from a BERT-family sentence-transformers folder:
//!
//! ```text
//! cargo run --release --example embed -- --model DIR [--threads N] [--precision fp32|bf16|int8]
//!     [--check GOLDEN] [--texts FILE] [--npy OUT] TEXT...
//! ```
//!
//! Prints each text's embedding (first values and norm) and the time taken. `--texts FILE` adds
//! the file's lines as texts; `--npy OUT` also writes the embeddings as a float32 `.npy` array
//! `[texts, dim]` (the Python package's tests compare its own with them bit for bit). With `--check FILE`
//! (the format of `tests/data/minilm/`): tokenizes the file's `sentences`, requires the same
//! `input_ids`, runs the model and compares the hidden states after the embeddings and after each
//! layer with `hidden_states_f64/<i>`, and the final sentence embedding, printing a PASS/FAIL
//! line for each and `N passed, N failed` last (exit 1 on any failure). Tolerance: the float32
//! PyTorch outputs' own distance from the float64 truth, times 4, or 1e-4, whichever is larger.
//! Both precisions print `cosine min=<m> mean=<m>`: each sentence embedding's cosine similarity
//! to PyTorch's float64 one. With `--precision int8` (the layers quantized at load, Keras'
//! int8 mode) that is the check: each cosine at least 0.985, their mean at least 0.99.

mod common;
use std::process::ExitCode;
use std::time::Instant;
use transformer_encoder::conformance::max_abs_diff;
use transformer_encoder::{Pooling, Precision, SentenceEncoder};

const USAGE: &str = "embed --model DIR [--threads N] [--precision fp32|bf16|int8] [--check GOLDEN] \
     [--texts FILE] [--npy OUT] TEXT...";

fn main() -> ExitCode {
    common::run(embed)
}

fn embed() -> Result<ExitCode, common::Failure> {
    let a = common::Args::parse(
        USAGE,
        &["model", "threads", "check", "precision", "texts", "npy"],
        &[],
    )?;
    let precision = common::precision(&a)?;
    let default_model = std::env::var("TRANSFORMER_ENCODER_MODEL")
        .unwrap_or_else(|_| "target/models/all-MiniLM-L6-v2".to_string());
    let model = a.get("model").unwrap_or(&default_model);
    let threads = a.num("threads", 1usize)?;
    let t0 = Instant::now();
    let enc = SentenceEncoder::from_dir_with_precision(model, precision)
        .map_err(|e| {
            format!("cannot load the model from {model}: {e} (fetch it with .ci/fetch_model.sh)")
        })?
        .with_threads(common::threads(threads)?);
    eprintln!(
        "loaded {model} in {:.0} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    if let Some(path) = a.get("check") {
        return run_check(&enc, path, precision);
    }
    let mut texts = a.positional.clone();
    if let Some(file) = a.get("texts") {
        let all = std::fs::read_to_string(file).map_err(|e| format!("--texts {file}: {e}"))?;
        texts.extend(all.lines().map(str::to_string));
    }
    if texts.is_empty() {
        return Err(format!("give some TEXT to embed, or --check GOLDEN (usage: {USAGE})").into());
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let t = Instant::now();
    let embs = enc.embed(&refs)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    for (text, e) in texts.iter().zip(&embs) {
        let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt();
        let head: Vec<String> = e.iter().take(6).map(|v| format!("{v:+.5}")).collect();
        println!(
            "{text:?}: dim={} norm={norm:.5} [{} ...]",
            e.len(),
            head.join(", ")
        );
    }
    println!(
        "{} texts in {ms:.2} ms (tokenization included)",
        texts.len()
    );
    if let Some(out) = a.get("npy") {
        let dim = enc.model().config().hidden_size;
        write_npy(out, &embs.concat(), embs.len(), dim).map_err(|e| format!("--npy {out}: {e}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `values` (`rows x cols`) as a little-endian float32 `.npy` file (format version 1.0).
fn write_npy(path: &str, values: &[f32], rows: usize, cols: usize) -> std::io::Result<()> {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + length (2) + header + '\n', padded to a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes)
}

fn run_check(
    enc: &SentenceEncoder,
    path: &str,
    precision: Precision,
) -> Result<ExitCode, common::Failure> {
    use safetensors::{Dtype, SafeTensors};
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("{path}: {e}"))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| format!("{path}: {e}"))?;
    let md = meta.metadata().clone().unwrap_or_default();
    let sentences: Vec<String> = md
        .get("sentences")
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or("the golden file has no `sentences` metadata")?;
    let f64s = |name: &str| -> Result<Vec<f64>, common::Failure> {
        let t = st
            .tensor(name)
            .map_err(|_| format!("golden file lacks `{name}`"))?;
        let le = |b: &[u8]| -> [u8; 8] { std::array::from_fn(|i| b.get(i).copied().unwrap_or(0)) };
        Ok(match t.dtype() {
            Dtype::F64 => t
                .data()
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(le(b)))
                .collect(),
            Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                .collect(),
            Dtype::I64 => t
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(le(b)) as f64)
                .collect(),
            Dtype::U8 => t.data().iter().map(|&b| b as f64).collect(),
            d => return Err(format!("`{name}` has unexpected dtype {d:?}").into()),
        })
    };
    let (mut passed, mut failed) = (0, 0);
    let mut verdict = |ok: bool, line: String| {
        println!("{} {line}", if ok { "PASS" } else { "FAIL" });
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
    };
    let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let t = Instant::now();
    let b = enc.tokenize(&refs)?;
    let want_ids = f64s("input_ids")?;
    let ids_ok = b.input_ids.len() == want_ids.len()
        && b.input_ids
            .iter()
            .zip(&want_ids)
            .all(|(a, w)| *a as f64 == *w);
    verdict(ids_ok, format!("input_ids shape=[{}, {}]", b.batch, b.seq));
    if !ids_ok {
        println!("{passed} passed, {failed} failed");
        return Ok(ExitCode::FAILURE);
    }
    let states = enc.model().hidden_states(
        &b.input_ids,
        Some(&b.token_type_ids),
        &b.attention_mask,
        b.batch,
        b.seq,
    )?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    // The hidden states are compared for float32 (int8 differs from float by design; its check
    // is the embeddings' cosine below).
    for (i, s) in states.iter().enumerate() {
        if precision != Precision::F32 {
            break;
        }
        let truth = f64s(&format!("hidden_states_f64/{i}"))?;
        let torch: Vec<f32> = f64s(&format!("hidden_states/{i}"))?
            .iter()
            .map(|v| *v as f32)
            .collect();
        let tol = (4.0 * max_abs_diff(&torch, &truth)).max(1e-4);
        let err = max_abs_diff(s, &truth);
        verdict(
            err <= tol,
            format!("hidden_states/{i} max_err={err:.3e} tol={tol:.3e}"),
        );
    }
    // The sentence embedding: mean pooling + L2 normalisation (the model's own modules); its
    // float64 truth is the same pooling of the float64 last hidden state.
    let h = enc.model().config().hidden_size;
    // The embeddings through the ragged path (no padding), which must equal the padded path's
    // and any chunking's to the last bit.
    let ours: Vec<f32> = enc.encode(&refs)?.concat();
    let padded: Vec<f32> = enc.embed_padded(&refs)?.concat();
    let one_each = enc.encode_with(&refs, 1)?.concat();
    let same = |a: &[f32], b: &[f32]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    };
    verdict(
        same(&ours, &padded),
        "ragged embeddings bit-identical to one padded call".into(),
    );
    verdict(
        same(&ours, &one_each),
        "ragged embeddings bit-identical to one text per call".into(),
    );
    let truth_last = f64s(&format!("hidden_states_f64/{}", states.len() - 1))?;
    let truth = pool_f64(
        &truth_last,
        &b.attention_mask,
        b.batch,
        b.seq,
        h,
        enc.pooling(),
    );
    let torch: Vec<f32> = f64s("sentence_embedding")?
        .iter()
        .map(|v| *v as f32)
        .collect();
    if precision == Precision::F32 {
        let tol = (4.0 * max_abs_diff(&torch, &truth)).max(1e-4);
        let err = max_abs_diff(&ours, &truth);
        verdict(
            err <= tol,
            format!("sentence_embedding max_err={err:.3e} tol={tol:.3e}"),
        );
    }
    // Cosine similarity of each sentence embedding to PyTorch's float64 one.
    let cos: Vec<f64> = ours
        .chunks(h.max(1))
        .zip(truth.chunks(h.max(1)))
        .map(|(a, t)| {
            let dot: f64 = a.iter().zip(t).map(|(x, y)| *x as f64 * y).sum();
            let na = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            let nt = t.iter().map(|y| y * y).sum::<f64>().sqrt();
            dot / (na * nt)
        })
        .collect();
    let (min, mean) = (
        cos.iter().cloned().fold(f64::INFINITY, f64::min),
        cos.iter().sum::<f64>() / cos.len().max(1) as f64,
    );
    if precision == Precision::Int8 {
        for (s, c) in sentences.iter().zip(&cos) {
            verdict(*c >= 0.985, format!("cosine {c:.5} (>= 0.985) {s:?}"));
        }
        verdict(mean >= 0.99, format!("cosine mean {mean:.5} (>= 0.99)"));
    }
    if precision == Precision::Bf16 {
        // bf16 operands with float32 sums: a float64 simulation gives 0.99998.
        verdict(min >= 0.999, format!("cosine min {min:.5} (>= 0.999)"));
        verdict(mean >= 0.999, format!("cosine mean {mean:.5} (>= 0.999)"));
    }
    println!("cosine min={min:.5} mean={mean:.5}");
    eprintln!(
        "tokenize + {} layers on {} sentences: {ms:.2} ms",
        states.len() - 1,
        b.batch
    );
    println!("{passed} passed, {failed} failed");
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn pool_f64(
    hs: &[f64],
    mask: &[u8],
    batch: usize,
    seq: usize,
    h: usize,
    pooling: Pooling,
) -> Vec<f64> {
    let mut out = vec![0.0f64; batch * h];
    for b in 0..batch {
        let o = &mut out[b * h..(b + 1) * h];
        let tok = |s: usize| &hs[(b * seq + s) * h..(b * seq + s + 1) * h];
        match pooling {
            Pooling::Cls => o.copy_from_slice(tok(0)),
            Pooling::Mean => {
                let mut n = 0.0;
                for s in (0..seq).filter(|&s| mask[b * seq + s] != 0) {
                    n += 1.0;
                    for (x, v) in o.iter_mut().zip(tok(s)) {
                        *x += v;
                    }
                }
                o.iter_mut().for_each(|x| *x /= f64::max(n, 1e-9));
            }
            Pooling::Max => {
                o.fill(f64::NEG_INFINITY);
                for s in (0..seq).filter(|&s| mask[b * seq + s] != 0) {
                    for (x, v) in o.iter_mut().zip(tok(s)) {
                        *x = x.max(*v);
                    }
                }
            }
        }
        let norm = o.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        o.iter_mut().for_each(|x| *x /= norm);
    }
    out
}
