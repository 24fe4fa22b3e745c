//! The fields of a Hugging Face BERT `config.json` the model reads.

use crate::EncoderConfig;
use crate::error::{Error, Result};
use serde_json::Value;
use transformer_encoder_kernels::activation::Activation;

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
