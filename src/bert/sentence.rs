//! A sentence-transformers model: text in through the tokenizer, batches of similar lengths
//! through the BERT model, pooled and normalised.

use super::*;

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

    /// Run the model's attention products on bf16 tiles from 64 tokens (see
    /// [`BertModel::with_bf16_attention`]).
    pub fn with_bf16_attention(self) -> Result<SentenceEncoder> {
        Ok(SentenceEncoder {
            model: self.model.with_bf16_attention()?,
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
