//! BERT-family checkpoints as Hugging Face writes them (`config.json` + safetensors), the
//! embeddings in front of the encoder stack, the poolings sentence-transformers uses, and text in
//! through the model's `tokenizer.json`.
//!
//! A BERT layer is exactly a post-norm Keras `TransformerEncoder`: the loader transposes the
//! `[out, in]` PyTorch weights into the Keras `[in, out]` layout and builds an [`EncoderStack`].
//! The attention mask (1 = real token) is passed as a key padding mask, as BERT does.

use crate::encoder::{CallOptions, RaggedView, TensorView, Threads, TransformerEncoder};
use crate::error::{Error, Result, dims};
use crate::mask::Mask;
use crate::stack::{EncoderStack, StackWorkspace};
use crate::store::TensorStore;
use crate::weights::{DenseWeights, EncoderWeights, NormWeights, Sublayers, WeightDims};
use crate::{Precision, Workspace};
use serde_json::Value;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use transformer_encoder_kernels::{Kernels, Par};

mod config;
mod pool;
mod sentence;

pub use config::BertConfig;
pub use pool::{Pooling, pool, pool_ragged};
pub use sentence::{Batch, DEFAULT_MAX_BATCH_TOKENS, SentenceEncoder, Tokens};

/// Token, position and token-type embeddings followed by LayerNorm.
#[derive(Debug)]
struct Embeddings {
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

/// A BERT encoder: embeddings plus a stack of encoder layers.
#[derive(Debug)]
pub struct BertModel {
    config: BertConfig,
    embeddings: Embeddings,
    stack: EncoderStack,
    kernels: &'static Kernels,
}

/// Reads tensors by name from a checkpoint, as f32, with shape checks naming the tensor.
struct Tensors<'a> {
    st: TensorStore<'a>,
    prefix: &'static str,
}

impl Tensors<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let full = format!("{}{name}", self.prefix);
        let t = self
            .st
            .info(&full)
            .ok_or_else(|| Error::weights(&full, "missing from the checkpoint"))?;
        if t.shape != shape {
            return Err(Error::weights(
                &full,
                format!("expected shape {}, got {}", dims(shape), dims(&t.shape)),
            ));
        }
        self.st.f32(&full, &full)
    }

    /// A LayerNorm's (gamma, beta), under `weight`/`bias` or the older `gamma`/`beta` names.
    fn layer_norm(&self, base: &str, h: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let has = |n: &str| {
            self.st
                .info(&format!("{}{base}.{n}", self.prefix))
                .is_some()
        };
        if !has("weight") && has("gamma") {
            Ok((
                self.get(&format!("{base}.gamma"), &[h])?,
                self.get(&format!("{base}.beta"), &[h])?,
            ))
        } else {
            Ok((
                self.get(&format!("{base}.weight"), &[h])?,
                self.get(&format!("{base}.bias"), &[h])?,
            ))
        }
    }

    /// A linear layer's weight `[out, in]` transposed to Keras' `[in, out]`, and its bias.
    fn linear(&self, base: &str, out: usize, inp: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let w = self.get(&format!("{base}.weight"), &[out, inp])?;
        let b = self.get(&format!("{base}.bias"), &[out])?;
        let mut t = vec![0.0f32; out * inp];
        for o in 0..out {
            for i in 0..inp {
                t[i * out + o] = w[o * inp + i];
            }
        }
        Ok((t, b))
    }
}

impl BertModel {
    /// Load `config.json` and `model.safetensors` from a directory. The checkpoint is read one
    /// tensor at a time: loading holds the model and one layer's float weights, never the file.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<BertModel> {
        BertModel::from_dir_with_precision(dir, Precision::F32)
    }

    /// Load as [`from_dir`](BertModel::from_dir) does, each layer built in `precision` as it is
    /// read: the same model as `from_dir(dir)?.with_precision(precision)`, without holding the
    /// float32 layers on the way (an int8 BERT-base peaks near its int8 size, not its float one).
    ///
    /// ```no_run
    /// use transformer_encoder::{BertModel, Precision};
    /// let model = BertModel::from_dir_with_precision("all-MiniLM-L6-v2", Precision::Int8)?;
    /// assert_eq!(model.stack().layers()[0].precision(), Precision::Int8);
    /// # Ok::<(), transformer_encoder::Error>(())
    /// ```
    pub fn from_dir_with_precision(
        dir: impl AsRef<Path>,
        precision: Precision,
    ) -> Result<BertModel> {
        let dir = dir.as_ref();
        let p = dir.join("config.json");
        let cfg = std::fs::read_to_string(&p)
            .map_err(|e| Error::format(&p.display().to_string(), e.to_string()))?;
        let st = TensorStore::open(&dir.join("model.safetensors"))?;
        BertModel::from_store(&cfg, st, precision)
    }

    /// Build from a `config.json` text and a safetensors buffer. Tensors are named as Hugging
    /// Face names them, with or without the `bert.` prefix; a missing or mis-shaped tensor is an
    /// error that names it.
    pub fn from_parts(config_json: &str, safetensors: &[u8]) -> Result<BertModel> {
        BertModel::from_store(
            config_json,
            TensorStore::from_bytes(safetensors)?,
            Precision::F32,
        )
    }

    fn from_store(
        config_json: &str,
        st: TensorStore<'_>,
        precision: Precision,
    ) -> Result<BertModel> {
        let config = BertConfig::from_json_str(config_json)?;
        let prefix = if st.info("bert.embeddings.word_embeddings.weight").is_some() {
            "bert."
        } else {
            ""
        };
        let t = Tensors { st, prefix };
        let (h, f, n) = (
            config.hidden_size,
            config.intermediate_size,
            config.num_attention_heads,
        );
        if n == 0 || h % n != 0 {
            return Err(Error::config(
                "num_attention_heads",
                format!("a divisor of hidden_size {h}, got {n}"),
            ));
        }
        let (gamma, beta) = t.layer_norm("embeddings.LayerNorm", h)?;
        let embeddings = Embeddings {
            word: t.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            position: t.get(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, h],
            )?,
            token_type: t.get(
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size, h],
            )?,
            gamma,
            beta,
        };
        let dims = WeightDims {
            hidden_dim: h,
            num_heads: n,
            key_dim: h / n,
            intermediate_dim: f,
        };
        let kernels = Kernels::best()?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}.");
            let (wq, bq) = t.linear(&format!("{p}attention.self.query"), h, h)?;
            let (wk, bk) = t.linear(&format!("{p}attention.self.key"), h, h)?;
            let (wv, bv) = t.linear(&format!("{p}attention.self.value"), h, h)?;
            let (wo, bo) = t.linear(&format!("{p}attention.output.dense"), h, h)?;
            let (g1, b1n) = t.layer_norm(&format!("{p}attention.output.LayerNorm"), h)?;
            let (w1, b1) = t.linear(&format!("{p}intermediate.dense"), f, h)?;
            let (w2, b2) = t.linear(&format!("{p}output.dense"), h, f)?;
            let (g2, b2n) = t.layer_norm(&format!("{p}output.LayerNorm"), h)?;
            let dense = |(kernel, bias)| DenseWeights { kernel, bias };
            let norm = |(gamma, beta)| NormWeights { gamma, beta };
            let w = EncoderWeights::new(
                dims,
                Sublayers {
                    query: dense((wq, bq)),
                    key: dense((wk, bk)),
                    value: dense((wv, bv)),
                    attention_output: dense((wo, bo)),
                    self_attention_layer_norm: norm((g1, b1n)),
                    feedforward_layer_norm: norm((g2, b2n)),
                    feedforward_intermediate_dense: dense((w1, b1)),
                    feedforward_output_dense: dense((w2, b2)),
                },
            )?;
            layers.push(TransformerEncoder::from_float_in(
                config.layer_config(),
                w,
                kernels,
                precision,
            )?);
        }
        let stack = EncoderStack::new(layers)?;
        Ok(BertModel {
            config,
            embeddings,
            stack,
            kernels,
        })
    }

    /// Run the encoder layers in `precision` (int8: each layer quantized at load, as Keras'
    /// `quantize("int8")` does; the embeddings stay float).
    pub fn with_precision(self, precision: crate::Precision) -> Result<BertModel> {
        Ok(BertModel {
            stack: self.stack.with_precision(precision)?,
            ..self
        })
    }

    /// Run every layer's attention products on bf16 tiles from 64 tokens
    /// ([`TransformerEncoder::with_bf16_attention`]: an option beyond Keras for float32 and int8
    /// layers; an error naming `bf16_attention` where the CPU has no bf16 tiles).
    pub fn with_bf16_attention(self) -> Result<BertModel> {
        Ok(BertModel {
            stack: self.stack.with_bf16_attention()?,
            ..self
        })
    }

    /// Choose where the layers run their threads.
    pub fn with_threads(self, threads: Threads) -> BertModel {
        BertModel {
            stack: self.stack.with_threads(threads),
            ..self
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The encoder layers.
    pub fn stack(&self) -> &EncoderStack {
        &self.stack
    }

    /// The embeddings output `[B, S, H]` (word + position + token type, then LayerNorm).
    /// `token_type_ids` defaults to zeros.
    pub fn embed(
        &self,
        input_ids: &[i64],
        token_type_ids: Option<&[i64]>,
        batch: usize,
        seq: usize,
    ) -> Result<Vec<f32>> {
        let n = batch.checked_mul(seq).ok_or_else(|| {
            Error::shape("input_ids", "batch * seq to fit in usize", "an overflow")
        })?;
        check_ids(input_ids, token_type_ids, n, || {
            format!("{n} ids ([{batch}, {seq}])")
        })?;
        if seq > self.config.max_position_embeddings {
            return Err(Error::shape(
                "input_ids",
                format!(
                    "at most max_position_embeddings = {} tokens",
                    self.config.max_position_embeddings
                ),
                format!("{seq} tokens"),
            ));
        }
        let mut e = EmbedScratch::default();
        let spans = &mut (0..batch).map(|b| (b * seq, seq));
        self.embed_rows(input_ids, token_type_ids, spans, Par::Seq, &mut e)?;
        Ok(e.out)
    }

    /// The embeddings output `[T, H]` of sequences of `lengths` packed end to end
    /// (`T = sum(lengths)`): positions count from 0 in each sequence, so each sequence's rows
    /// are those of [`embed`](BertModel::embed) on it alone.
    pub fn embed_ragged(
        &self,
        input_ids: &[i64],
        token_type_ids: Option<&[i64]>,
        lengths: &[usize],
    ) -> Result<Vec<f32>> {
        let mut e = EmbedScratch::default();
        self.embed_ragged_into(input_ids, token_type_ids, lengths, Par::Seq, &mut e)?;
        Ok(e.out)
    }

    /// [`embed_ragged`](BertModel::embed_ragged) split between the threads of `par`, into
    /// reusable buffers (`e.out`).
    fn embed_ragged_into(
        &self,
        input_ids: &[i64],
        token_type_ids: Option<&[i64]>,
        lengths: &[usize],
        par: Par,
        e: &mut EmbedScratch,
    ) -> Result<()> {
        let total = lengths
            .iter()
            .try_fold(0usize, |t, &l| t.checked_add(l))
            .ok_or_else(|| Error::shape("lengths", "a total that fits in usize", "an overflow"))?;
        check_ids(input_ids, token_type_ids, total, || {
            format!("sum(lengths) = {total} ids")
        })?;
        let max = self.config.max_position_embeddings;
        if let Some((i, l)) = lengths.iter().enumerate().find(|(_, l)| **l > max) {
            return Err(Error::shape(
                "lengths",
                format!("at most max_position_embeddings = {max} tokens per sequence"),
                format!("{l} tokens in sequence {i}"),
            ));
        }
        let mut start = 0;
        self.embed_rows(
            input_ids,
            token_type_ids,
            &mut lengths.iter().map(|&len| {
                start += len;
                (start - len, len)
            }),
            par,
            e,
        )
    }

    /// Word + position + token type, then LayerNorm, for the sequences `(first row, length)`
    /// (ids and lengths already checked against each other and the position table), split
    /// between the threads of `par`, into reusable buffers (`e.out` holds the result).
    fn embed_rows(
        &self,
        input_ids: &[i64],
        token_type_ids: Option<&[i64]>,
        spans: &mut dyn Iterator<Item = (usize, usize)>,
        par: Par,
        e: &mut EmbedScratch,
    ) -> Result<()> {
        let h = self.config.hidden_size;
        let n = input_ids.len();
        let tab = &self.embeddings;
        // Every id checked first; each row's word, position and token type rows noted.
        let rows = grow_to(&mut e.rows, n, (0, 0, 0));
        for (start, len) in spans {
            for s in 0..len {
                let i = start + s;
                let id = input_ids[i];
                if id < 0 || id as u64 >= self.config.vocab_size as u64 {
                    return Err(Error::shape(
                        "input_ids",
                        format!("ids in 0..{}", self.config.vocab_size),
                        format!("{id} at position {i}"),
                    ));
                }
                let tt = token_type_ids.map_or(0, |t| t[i]);
                if tt < 0 || tt as u64 >= self.config.type_vocab_size as u64 {
                    return Err(Error::shape(
                        "token_type_ids",
                        format!("ids in 0..{}", self.config.type_vocab_size),
                        format!("{tt} at position {i}"),
                    ));
                }
                rows[i] = (id as usize, s, tt as usize);
            }
        }
        // The sums, a block of rows per thread (the word rows are scattered over a table of
        // tens of MB: their reads wait on memory, so two threads fetch twice as many).
        let sum = grow_to(&mut e.sum, n * h, 0.0);
        let parts = match par {
            Par::Threads(t) if n * h >= 1 << 15 => t.clamp(1, n),
            _ => 1,
        };
        let per = n.div_ceil(parts.max(1)).max(1);
        let blocks: Vec<std::sync::Mutex<(usize, &mut [f32])>> = sum
            .chunks_mut(per * h.max(1))
            .enumerate()
            .map(|(b, c)| std::sync::Mutex::new((b * per, c)))
            .collect();
        let fill = |part: usize| {
            let Some(Ok(mut block)) = blocks.get(part).map(|b| b.lock()) else {
                return;
            };
            let (r0, ref mut out) = *block;
            for (k, row) in out.chunks_mut(h.max(1)).enumerate() {
                let (id, s, tt) = rows[r0 + k];
                let w = &tab.word[id * h..][..h];
                let p = &tab.position[s * h..][..h];
                let t = &tab.token_type[tt * h..][..h];
                for j in 0..h {
                    row[j] = (w[j] + t[j]) + p[j];
                }
            }
        };
        transformer_encoder_kernels::team::for_parts(blocks.len(), &fill);
        drop(blocks);
        let out = grow_to(&mut e.out, n * h, 0.0);
        if n > 0 {
            self.kernels.layer_norm(
                sum,
                None,
                h,
                &tab.gamma,
                &tab.beta,
                self.config.layer_norm_eps as f32,
                out,
                None,
                None,
                par,
            )?;
        }
        Ok(())
    }

    /// Hidden states after the embeddings (`[0]`) and after each layer (`[i]`), each
    /// `[B, S, H]`. `attention_mask [B, S]` (1 = real token) masks keys, as BERT does.
    pub fn hidden_states(
        &self,
        input_ids: &[i64],
        token_type_ids: Option<&[i64]>,
        attention_mask: &[u8],
        batch: usize,
        seq: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let x = self.embed(input_ids, token_type_ids, batch, seq)?;
        let h = self.config.hidden_size;
        let opts = CallOptions::new().padding_mask(Mask::new(attention_mask, &[batch, seq]));
        let mut states = vec![x];
        let mut ws = Workspace::new();
        for layer in self.stack.layers() {
            let mut out = vec![0.0f32; batch * seq * h];
            let prev = states.last().map(Vec::as_slice).unwrap_or(&[]);
            layer.forward_into(
                TensorView::new(prev, &[batch, seq, h]),
                &opts,
                &mut out,
                None,
                &mut ws,
            )?;
            states.push(out);
        }
        Ok(states)
    }

    /// The last hidden state `[B, S, H]`, reusing `ws` between calls.
    pub fn forward(
        &self,
        input_ids: &[i64],
        token_type_ids: Option<&[i64]>,
        attention_mask: &[u8],
        batch: usize,
        seq: usize,
        ws: &mut StackWorkspace,
    ) -> Result<Vec<f32>> {
        let x = self.embed(input_ids, token_type_ids, batch, seq)?;
        let h = self.config.hidden_size;
        let opts = CallOptions::new().padding_mask(Mask::new(attention_mask, &[batch, seq]));
        let mut out = vec![0.0f32; x.len()];
        self.stack
            .forward_into(TensorView::new(&x, &[batch, seq, h]), &opts, &mut out, ws)?;
        Ok(out)
    }

    /// The last hidden state `[T, H]` of sequences of `lengths` packed end to end
    /// (`T = sum(lengths)`, no padding, no mask), reusing `ws` between calls. Each sequence's
    /// rows are bit-identical to [`forward`](BertModel::forward) on that sequence alone.
    pub fn forward_ragged(
        &self,
        input_ids: &[i64],
        token_type_ids: Option<&[i64]>,
        lengths: &[usize],
        ws: &mut StackWorkspace,
    ) -> Result<Vec<f32>> {
        let n = self.forward_ragged_in(input_ids, token_type_ids, lengths, ws)?;
        Ok(ws.hidden[..n].to_vec())
    }

    /// [`forward_ragged`](BertModel::forward_ragged) into `ws.hidden[..n]` (`n` returned): after
    /// the first call, nothing is allocated or zeroed.
    pub(crate) fn forward_ragged_in(
        &self,
        input_ids: &[i64],
        token_type_ids: Option<&[i64]>,
        lengths: &[usize],
        ws: &mut StackWorkspace,
    ) -> Result<usize> {
        // The embeddings on the stack's threads too, in the same team as the layers.
        let Some(first) = self.stack.layers().first() else {
            return Err(Error::config("layers", "at least one layer, got 0"));
        };
        first.on_threads(|par| {
            // (Out of the workspace while the stack borrows it.)
            let mut e = std::mem::take(&mut ws.embed);
            let r = self.embed_ragged_into(input_ids, token_type_ids, lengths, par, &mut e);
            let n = input_ids.len() * self.config.hidden_size;
            let mut hidden = std::mem::take(&mut ws.hidden);
            let out = grow_to(&mut hidden, n, 0.0);
            let r = r.and_then(|()| {
                self.stack.forward_ragged_into(
                    RaggedView::new(&e.out[..n], lengths),
                    &CallOptions::new(),
                    out,
                    ws,
                )
            });
            ws.embed = e;
            ws.hidden = hidden;
            r.map(|()| n)
        })
    }
}

/// `input_ids`, and `token_type_ids` if given, hold `n` ids each (`expected` says how `n` is
/// made, for the error).
fn check_ids(
    input_ids: &[i64],
    token_type_ids: Option<&[i64]>,
    n: usize,
    expected: impl Fn() -> String,
) -> Result<()> {
    let given = [
        ("input_ids", Some(input_ids)),
        ("token_type_ids", token_type_ids),
    ];
    for (arg, ids) in given {
        if let Some(ids) = ids
            && ids.len() != n
        {
            return Err(Error::shape(arg, expected(), format!("{} ids", ids.len())));
        }
    }
    Ok(())
}

/// Where the embeddings are computed, reused from call to call: each row's word, position and
/// token type rows, their sums, the normalised rows (the result).
#[derive(Debug, Default)]
pub(crate) struct EmbedScratch {
    rows: Vec<(usize, usize, usize)>,
    sum: Vec<f32>,
    out: Vec<f32>,
}

/// The first `n` values of `v`, grown with `fill` if it is shorter (never shrunk: a reused
/// buffer is not written again).
fn grow_to<T: Copy>(v: &mut Vec<T>, n: usize, fill: T) -> &mut [T] {
    if v.len() < n {
        v.resize(n, fill);
    }
    &mut v[..n]
}
