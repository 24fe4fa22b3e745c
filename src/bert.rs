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
use crate::{EncoderConfig, Precision, Workspace};
use serde_json::Value;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use transformer_encoder_kernels::activation::Activation;
use transformer_encoder_kernels::{Kernels, Par};

/// The fields of a Hugging Face BERT `config.json` the model needs.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// FFN size.
    pub intermediate_size: usize,
    /// `hidden_act`: `gelu` (exact), `gelu_new` / `gelu_pytorch_tanh` / `gelu_fast` (tanh form),
    /// `relu`, `silu` / `swish`.
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Position table size.
    pub max_position_embeddings: usize,
    /// Token type table size.
    pub type_vocab_size: usize,
    /// The padding token id.
    pub pad_token_id: i64,
}

impl BertConfig {
    /// Parse a Hugging Face `config.json`.
    ///
    /// ```
    /// let c = transformer_encoder::BertConfig::from_json_str(r#"{"vocab_size": 10,
    ///   "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
    ///   "intermediate_size": 16, "hidden_act": "gelu_new"}"#).unwrap();
    /// assert_eq!(c.hidden_act, transformer_encoder::Activation::GeluApproximate);
    /// assert_eq!(c.layer_norm_eps, 1e-12);
    /// ```
    pub fn from_json_str(s: &str) -> Result<BertConfig> {
        let v: Value =
            serde_json::from_str(s).map_err(|e| Error::format("config.json", e.to_string()))?;
        let uint = |k: &str, d: Option<usize>| -> Result<usize> {
            match v.get(k) {
                Some(x) => x
                    .as_u64()
                    .and_then(|u| usize::try_from(u).ok())
                    .ok_or_else(|| Error::config(k, format!("a non-negative integer, got {x}"))),
                None => d.ok_or_else(|| Error::config(k, "present in config.json (required)")),
            }
        };
        let act = match v
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("gelu")
        {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluApproximate,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => {
                return Err(Error::config(
                    "hidden_act",
                    format!(
                        "one of gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, silu, swish, got `{other}`"
                    ),
                ));
            }
        };
        let eps = match v.get("layer_norm_eps") {
            None => 1e-12,
            Some(x) => x
                .as_f64()
                .ok_or_else(|| Error::config("layer_norm_eps", format!("a number, got {x}")))?,
        };
        if let Some(t) = v.get("position_embedding_type").and_then(Value::as_str)
            && t != "absolute"
        {
            return Err(Error::config(
                "position_embedding_type",
                format!("\"absolute\" (the only kind supported), got \"{t}\""),
            ));
        }
        Ok(BertConfig {
            vocab_size: uint("vocab_size", None)?,
            hidden_size: uint("hidden_size", None)?,
            num_hidden_layers: uint("num_hidden_layers", None)?,
            num_attention_heads: uint("num_attention_heads", None)?,
            intermediate_size: uint("intermediate_size", None)?,
            hidden_act: act,
            layer_norm_eps: eps,
            max_position_embeddings: uint("max_position_embeddings", Some(512))?,
            type_vocab_size: uint("type_vocab_size", Some(2))?,
            pad_token_id: v.get("pad_token_id").and_then(Value::as_i64).unwrap_or(0),
        })
    }

    /// The encoder configuration of one layer (post-norm, as BERT is).
    pub fn layer_config(&self) -> EncoderConfig {
        EncoderConfig::new(self.intermediate_size, self.num_attention_heads)
            .with_activation(self.hidden_act)
            .with_layer_norm_epsilon(self.layer_norm_eps)
    }
}

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

/// How token states become one sentence vector (sentence-transformers' pooling modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the real tokens (attention mask 1).
    Mean,
    /// The first token (`[CLS]`).
    Cls,
    /// Element-wise maximum over the real tokens.
    Max,
}

/// Pool `hidden [B, S, H]` to `[B, H]` under `attention_mask [B, S]`, optionally L2-normalised.
///
/// ```
/// use transformer_encoder::{pool, Pooling};
/// let h = [1.0f32, 2.0, 3.0, 4.0, 100.0, 100.0]; // B = 1, S = 3, H = 2
/// let v = pool(&h, &[1, 1, 0], 1, 3, 2, Pooling::Mean, false).unwrap();
/// assert_eq!(v, vec![2.0, 3.0]);
/// ```
pub fn pool(
    hidden: &[f32],
    attention_mask: &[u8],
    batch: usize,
    seq: usize,
    h: usize,
    pooling: Pooling,
    normalize: bool,
) -> Result<Vec<f32>> {
    if hidden.len() != batch * seq * h {
        return Err(Error::shape(
            "hidden",
            format!("{} values ([{batch}, {seq}, {h}])", batch * seq * h),
            format!("{}", hidden.len()),
        ));
    }
    if attention_mask.len() != batch * seq {
        return Err(Error::shape(
            "attention_mask",
            format!("{} values ([{batch}, {seq}])", batch * seq),
            format!("{}", attention_mask.len()),
        ));
    }
    let mut out = vec![0.0f32; batch * h];
    for (b, o) in out.chunks_mut(h.max(1)).enumerate().take(batch) {
        let tok = |s: usize| &hidden[(b * seq + s) * h..(b * seq + s + 1) * h];
        let real = (0..seq)
            .filter(|&s| attention_mask[b * seq + s] != 0)
            .map(tok);
        pool_one(o, real, (seq > 0).then(|| tok(0)), pooling, normalize);
    }
    Ok(out)
}

/// Pool the hidden states `[T, H]` of sequences of `lengths` packed end to end (every token
/// real) to `[lengths.len(), H]`, optionally L2-normalised: each sequence's vector is what
/// [`pool`] gives for it alone.
///
/// ```
/// use transformer_encoder::{pool_ragged, Pooling};
/// let h = [1.0f32, 2.0, 3.0, 4.0, 10.0, 20.0]; // two sequences: 2 tokens, 1 token; H = 2
/// let v = pool_ragged(&h, &[2, 1], 2, Pooling::Mean, false).unwrap();
/// assert_eq!(v, vec![2.0, 3.0, 10.0, 20.0]);
/// ```
pub fn pool_ragged(
    hidden: &[f32],
    lengths: &[usize],
    h: usize,
    pooling: Pooling,
    normalize: bool,
) -> Result<Vec<f32>> {
    let total = lengths.iter().try_fold(0usize, |t, &l| t.checked_add(l));
    if total.and_then(|t| t.checked_mul(h)) != Some(hidden.len()) {
        return Err(Error::shape(
            "hidden",
            format!("sum(lengths) * {h} values"),
            format!("{}", hidden.len()),
        ));
    }
    let mut out = vec![0.0f32; lengths.len() * h];
    let mut start = 0;
    for (o, &len) in out.chunks_mut(h.max(1)).zip(lengths) {
        let rows = &hidden[start * h..(start + len) * h];
        let toks = rows.chunks(h.max(1)).take(len);
        pool_one(
            o,
            toks,
            rows.get(..h).filter(|_| len > 0),
            pooling,
            normalize,
        );
        start += len;
    }
    Ok(out)
}

/// One sentence vector from its real tokens' states (`first`: the `[CLS]` state).
fn pool_one<'a>(
    o: &mut [f32],
    real: impl Iterator<Item = &'a [f32]>,
    first: Option<&[f32]>,
    pooling: Pooling,
    normalize: bool,
) {
    let h = o.len();
    match pooling {
        Pooling::Cls => {
            if let Some(t) = first {
                o.copy_from_slice(t);
            }
        }
        Pooling::Mean => {
            let mut acc = vec![0.0f64; h];
            let mut count = 0usize;
            for t in real {
                count += 1;
                for (a, v) in acc.iter_mut().zip(t) {
                    *a += *v as f64;
                }
            }
            // sentence-transformers clamps the token count at 1e-9.
            let c = (count as f64).max(1e-9);
            for (x, a) in o.iter_mut().zip(&acc) {
                *x = (a / c) as f32;
            }
        }
        Pooling::Max => {
            let mut any = false;
            o.fill(f32::NEG_INFINITY);
            for t in real {
                any = true;
                for (x, v) in o.iter_mut().zip(t) {
                    *x = x.max(*v);
                }
            }
            if !any {
                o.fill(0.0);
            }
        }
    }
    if normalize {
        let norm = o
            .iter()
            .map(|v| (*v as f64) * (*v as f64))
            .sum::<f64>()
            .sqrt();
        // torch.nn.functional.normalize divides by max(norm, 1e-12).
        let d = norm.max(1e-12);
        for x in o.iter_mut() {
            *x = (*x as f64 / d) as f32;
        }
    }
}

/// Tokenized texts without padding: ids end to end, and each text's length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// `[T]` token ids, every text's after the one before.
    pub input_ids: Vec<i64>,
    /// `[T]` token type ids.
    pub token_type_ids: Vec<i64>,
    /// Each text's number of tokens.
    pub lengths: Vec<usize>,
}

/// Tokenized, padded input for a batch of texts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// `[B, S]` token ids (padded with the pad id).
    pub input_ids: Vec<i64>,
    /// `[B, S]` token type ids.
    pub token_type_ids: Vec<i64>,
    /// `[B, S]` 1 for real tokens.
    pub attention_mask: Vec<u8>,
    /// Batch size.
    pub batch: usize,
    /// Padded sequence length (the longest text, after truncation).
    pub seq: usize,
}

/// The default token budget of one ragged batch in [`SentenceEncoder::encode`]: small enough that
/// a chunk's activations stay in cache between the kernels, and that a call of many texts makes
/// enough chunks to give each thread its own (measured on an Intel Xeon with 2 threads and
/// all-MiniLM-L6-v2 over the 64-text corpus, interleaved runs: int8 82-88 ms against 87-92 with
/// 1,024 and 83-88 with 768; float32 321 ms against 337-346 for one chunk at a time of 1,024).
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 512;

/// A sentence-transformers model: tokenizer, BERT model, pooling and optional normalisation.
pub struct SentenceEncoder {
    tokenizer: tokenizers::Tokenizer,
    model: BertModel,
    pooling: Pooling,
    normalize: bool,
    max_seq_length: usize,
    max_batch_tokens: usize,
}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEncoder")
            .field("model", &self.model.config)
            .field("pooling", &self.pooling)
            .field("normalize", &self.normalize)
            .field("max_seq_length", &self.max_seq_length)
            .field("max_batch_tokens", &self.max_batch_tokens)
            .finish()
    }
}

/// The shortest truncation a tokenizer takes: the special tokens it adds to one text, and one
/// token of the text (below the special tokens `tokenizers` underflows).
fn shortest_truncation(tokenizer: &tokenizers::Tokenizer) -> usize {
    use tokenizers::PostProcessor;
    tokenizer
        .get_post_processor()
        .map_or(0, |p| p.added_tokens(false))
        + 1
}

impl SentenceEncoder {
    /// Load a sentence-transformers folder: `config.json`, `model.safetensors`,
    /// `tokenizer.json`, and if present `1_Pooling/config.json` (default mean pooling),
    /// `modules.json` (a `Normalize` module turns on L2 normalisation) and
    /// `sentence_bert_config.json` (`max_seq_length`, default 512 capped by the positions).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<SentenceEncoder> {
        SentenceEncoder::from_dir_with_precision(dir, Precision::F32)
    }

    /// Load as [`from_dir`](SentenceEncoder::from_dir) does, the model's layers built in
    /// `precision` as they are read ([`BertModel::from_dir_with_precision`]): the same encoder as
    /// `from_dir(dir)?.with_precision(precision)`, loaded in less memory.
    ///
    /// ```no_run
    /// use transformer_encoder::{Precision, SentenceEncoder};
    /// let enc = SentenceEncoder::from_dir_with_precision("all-MiniLM-L6-v2", Precision::Bf16)?;
    /// let e = enc.encode(&["hello"])?;
    /// # Ok::<(), transformer_encoder::Error>(())
    /// ```
    pub fn from_dir_with_precision(
        dir: impl AsRef<Path>,
        precision: Precision,
    ) -> Result<SentenceEncoder> {
        let dir = dir.as_ref();
        let model = BertModel::from_dir_with_precision(dir, precision)?;
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::format(&tok_path.display().to_string(), e.to_string()))?;
        let json = |n: &str| -> Option<Value> {
            std::fs::read_to_string(dir.join(n))
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok())
        };
        let pooling = match json("1_Pooling/config.json") {
            Some(p) if p.get("pooling_mode_cls_token").and_then(Value::as_bool) == Some(true) => {
                Pooling::Cls
            }
            Some(p) if p.get("pooling_mode_max_tokens").and_then(Value::as_bool) == Some(true) => {
                Pooling::Max
            }
            _ => Pooling::Mean,
        };
        let normalize = json("modules.json")
            .and_then(|m| m.as_array().cloned())
            .is_some_and(|mods| {
                mods.iter().any(|m| {
                    m.get("type")
                        .and_then(Value::as_str)
                        .is_some_and(|t| t.ends_with("Normalize"))
                })
            });
        let min = shortest_truncation(&tokenizer);
        if model.config.max_position_embeddings < min {
            return Err(Error::config(
                "max_position_embeddings",
                format!(
                    "config.json: at least {min} (the tokenizer's special tokens and one more), got {}",
                    model.config.max_position_embeddings
                ),
            ));
        }
        let asked = json("sentence_bert_config.json")
            .and_then(|c| c.get("max_seq_length").and_then(Value::as_u64))
            .map_or(512, |v| v as usize);
        if asked < min {
            return Err(Error::config(
                "max_seq_length",
                format!(
                    "sentence_bert_config.json: at least {min} (the tokenizer's special tokens and one more), got {asked}"
                ),
            ));
        }
        let max_seq_length = asked.min(model.config.max_position_embeddings);
        // The model's own truncation (keeps the final [SEP]); padding is done per batch here.
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_seq_length,
                ..Default::default()
            }))
            .map_err(|e| Error::format("tokenizer.json", e.to_string()))?;
        tokenizer.with_padding(None);
        Ok(SentenceEncoder {
            tokenizer,
            model,
            pooling,
            normalize,
            max_seq_length,
            max_batch_tokens: DEFAULT_MAX_BATCH_TOKENS,
        })
    }

    /// Run the model's encoder layers in `precision` (see [`BertModel::with_precision`]).
    pub fn with_precision(self, precision: crate::Precision) -> Result<SentenceEncoder> {
        Ok(SentenceEncoder {
            model: self.model.with_precision(precision)?,
            ..self
        })
    }

    /// Choose where the layers run their threads.
    pub fn with_threads(self, threads: Threads) -> SentenceEncoder {
        SentenceEncoder {
            model: self.model.with_threads(threads),
            ..self
        }
    }

    /// Truncate texts to at most `n` tokens (special tokens included), capped by the position
    /// table. Below the tokenizer's special tokens and one more (3 for BERT) it is an error
    /// naming `max_seq_length`.
    pub fn with_max_seq_length(mut self, n: usize) -> Result<SentenceEncoder> {
        let min = shortest_truncation(&self.tokenizer);
        if n < min {
            return Err(Error::config(
                "max_seq_length",
                format!("at least {min} (the tokenizer's special tokens and one more), got {n}"),
            ));
        }
        let n = n.min(self.model.config.max_position_embeddings);
        self.tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: n,
                ..Default::default()
            }))
            .map_err(|e| Error::format("tokenizer.json", e.to_string()))?;
        self.max_seq_length = n;
        Ok(self)
    }

    /// Run [`encode`](SentenceEncoder::encode) in ragged batches of at most `n` tokens
    /// (text-embeddings-inference's `max_batch_tokens`; default [`DEFAULT_MAX_BATCH_TOKENS`]):
    /// the budget bounds the memory of one call and sets how much stays in cache; results do
    /// not depend on it. `n = 0` is an error.
    pub fn with_max_batch_tokens(mut self, n: usize) -> Result<SentenceEncoder> {
        if n == 0 {
            return Err(Error::config("max_batch_tokens", "at least 1, got 0"));
        }
        self.max_batch_tokens = n;
        Ok(self)
    }

    /// The longest text in tokens, special tokens included (longer texts are truncated).
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Does the model L2-normalise its embeddings (a `Normalize` module in `modules.json`)?
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// The token budget of one ragged batch in [`encode`](SentenceEncoder::encode).
    pub fn max_batch_tokens(&self) -> usize {
        self.max_batch_tokens
    }

    /// The model.
    pub fn model(&self) -> &BertModel {
        &self.model
    }

    /// The pooling mode.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Tokenize texts (with special tokens), truncate to `max_seq_length`, pad to the longest.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Batch> {
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::format("text", e.to_string()))?;
        let seq = enc
            .iter()
            .map(|e| e.get_ids().len().min(self.max_seq_length))
            .max()
            .unwrap_or(0);
        let batch = texts.len();
        let pad = self.model.config.pad_token_id;
        let mut b = Batch {
            input_ids: vec![pad; batch * seq],
            token_type_ids: vec![0; batch * seq],
            attention_mask: vec![0; batch * seq],
            batch,
            seq,
        };
        for (i, e) in enc.iter().enumerate() {
            let ids = e.get_ids();
            let n = ids.len().min(seq);
            for s in 0..n {
                b.input_ids[i * seq + s] = ids[s] as i64;
                b.token_type_ids[i * seq + s] = e.get_type_ids()[s] as i64;
                b.attention_mask[i * seq + s] = 1;
            }
        }
        Ok(b)
    }

    /// Tokenize texts (with special tokens) without padding, truncated to `max_seq_length`:
    /// the ids of every text end to end, and each text's length.
    pub fn tokenize_ragged(&self, texts: &[&str]) -> Result<Tokens> {
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::format("text", e.to_string()))?;
        let mut t = Tokens::default();
        for e in &enc {
            let n = e.get_ids().len().min(self.max_seq_length);
            t.input_ids
                .extend(e.get_ids()[..n].iter().map(|&v| v as i64));
            t.token_type_ids
                .extend(e.get_type_ids()[..n].iter().map(|&v| v as i64));
            t.lengths.push(n);
        }
        Ok(t)
    }

    /// Embed any number of texts, one vector of `hidden_size` per text, in input order.
    /// Texts run without padding, as ragged batches (SPEC section 11) of at most
    /// [`max_batch_tokens`](SentenceEncoder::with_max_batch_tokens) tokens each (a longer text
    /// runs alone); on several threads the batches run side by side, one per thread at a time
    /// (a thread done with its batches joins another's). A text's embedding is bit-identical
    /// whatever else is in the call, however the texts are chunked and whichever thread runs
    /// them.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.encode_with(texts, self.max_batch_tokens)
    }

    /// [`encode`](SentenceEncoder::encode) with a token budget of `max_batch_tokens` for this
    /// call (`0` is an error).
    pub fn encode_with(&self, texts: &[&str], max_batch_tokens: usize) -> Result<Vec<Vec<f32>>> {
        if max_batch_tokens == 0 {
            return Err(Error::config("max_batch_tokens", "at least 1, got 0"));
        }
        let t = self.tokenize_ragged(texts)?;
        let h = self.model.config.hidden_size;
        // Chunks: as many texts as fit in the budget, at least one; (first text, last, first
        // row, tokens).
        let mut chunks = Vec::new();
        let (mut first, mut row) = (0, 0);
        while first < t.lengths.len() {
            let mut last = first + 1;
            let mut tokens = t.lengths[first];
            while last < t.lengths.len() && tokens + t.lengths[last] <= max_batch_tokens {
                tokens += t.lengths[last];
                last += 1;
            }
            chunks.push((first, last, row, tokens));
            first = last;
            row += tokens;
        }
        let run = |&(first, last, row, tokens): &(usize, usize, usize, usize),
                   ws: &mut StackWorkspace|
         -> Result<Vec<Vec<f32>>> {
            let lengths = &t.lengths[first..last];
            let rows = row..row + tokens;
            let n = self.model.forward_ragged_in(
                &t.input_ids[rows.clone()],
                Some(&t.token_type_ids[rows]),
                lengths,
                ws,
            )?;
            let pooled = pool_ragged(&ws.hidden[..n], lengths, h, self.pooling, self.normalize)?;
            Ok(pooled.chunks(h.max(1)).map(<[f32]>::to_vec).collect())
        };
        // Several chunks on several threads: a chunk per thread at a time, each on its thread
        // alone (the parts of one team's job, claimed by whichever thread is free), instead of
        // every chunk split between all threads; the last `chunks % threads` then each on all
        // the threads, so no thread idles at the end.
        let Some(first) = self.model.stack.layers().first() else {
            return Err(Error::config("layers", "at least one layer, got 0"));
        };
        let threads = first.thread_count();
        let side = if threads > 1 && chunks.len() >= threads {
            chunks.len() - chunks.len() % threads
        } else {
            0
        };
        let spaces: Vec<Mutex<StackWorkspace>> = (0..threads.clamp(1, side.max(1)))
            .map(|_| Mutex::new(StackWorkspace::new()))
            .collect();
        let done: Vec<OnceLock<Result<Vec<Vec<f32>>>>> =
            (0..side).map(|_| OnceLock::new()).collect();
        if side > 0 {
            first.on_threads(|_| {
                transformer_encoder_kernels::team::for_parts(side, &|c| {
                    // At most `threads` parts run at once, so one workspace is always free
                    // (a new one otherwise: the same results, only slower).
                    let r = match spaces.iter().find_map(|w| w.try_lock().ok()) {
                        Some(mut ws) => run(&chunks[c], &mut ws),
                        None => run(&chunks[c], &mut StackWorkspace::new()),
                    };
                    let _ = done[c].set(r);
                });
                Ok(())
            })?;
        }
        let mut parts = Vec::with_capacity(chunks.len());
        for d in done {
            // (`for_parts` ran every part, or resumed a part's panic.)
            let r = d.into_inner();
            parts.push(r.unwrap_or_else(|| Err(Error::config("texts", "a batch did not run")))?);
        }
        let mut ws = spaces[0].lock().unwrap_or_else(|e| e.into_inner());
        for c in &chunks[side..] {
            parts.push(run(c, &mut ws)?);
        }
        Ok(parts.into_iter().flatten().collect())
    }

    /// Embed texts: the same as [`encode`](SentenceEncoder::encode).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.encode(texts)
    }

    /// Embed texts in one call padded to the longest text (with a padding mask): the path
    /// [`encode`](SentenceEncoder::encode) replaces, kept for comparison. The same vectors up
    /// to the last bit; the padding costs time.
    pub fn embed_padded(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let b = self.tokenize(texts)?;
        let hidden = self.model.forward(
            &b.input_ids,
            Some(&b.token_type_ids),
            &b.attention_mask,
            b.batch,
            b.seq,
            &mut StackWorkspace::new(),
        )?;
        let h = self.model.config.hidden_size;
        let pooled = pool(
            &hidden,
            &b.attention_mask,
            b.batch,
            b.seq,
            h,
            self.pooling,
            self.normalize,
        )?;
        Ok(pooled.chunks(h.max(1)).map(<[f32]>::to_vec).collect())
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
