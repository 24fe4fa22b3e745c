//! The layer's weight names and shapes: which Keras path names which sublayer ([`Dense::path`],
//! [`NormRole::path`]), and the sizes each tensor's axes carry.

use crate::error::{Error, Result};

/// The sixteen weight names, in Keras' `layer.weights` order.
pub const WEIGHT_NAMES: [&str; 16] = [
    "self_attention_layer/query/kernel",
    "self_attention_layer/query/bias",
    "self_attention_layer/key/kernel",
    "self_attention_layer/key/bias",
    "self_attention_layer/value/kernel",
    "self_attention_layer/value/bias",
    "self_attention_layer/attention_output/kernel",
    "self_attention_layer/attention_output/bias",
    "self_attention_layer_norm/gamma",
    "self_attention_layer_norm/beta",
    "feedforward_layer_norm/gamma",
    "feedforward_layer_norm/beta",
    "feedforward_intermediate_dense/kernel",
    "feedforward_intermediate_dense/bias",
    "feedforward_output_dense/kernel",
    "feedforward_output_dense/bias",
];

/// The sizes that fix every weight's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WeightDims {
    /// Hidden size `H` (the input's last dimension).
    pub hidden_dim: usize,
    /// Heads `N`.
    pub num_heads: usize,
    /// Key dim `D = H / N`, floored.
    pub key_dim: usize,
    /// FFN size `F`.
    pub intermediate_dim: usize,
}

/// A size a weight axis carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sym {
    H,
    N,
    D,
    F,
    One,
}

impl WeightDims {
    fn size(&self, s: Sym) -> usize {
        match s {
            Sym::H => self.hidden_dim,
            Sym::N => self.num_heads,
            Sym::D => self.key_dim,
            Sym::F => self.intermediate_dim,
            Sym::One => 1,
        }
    }

    pub(super) fn shape_of(&self, syms: &[Sym]) -> Vec<usize> {
        syms.iter().map(|&s| self.size(s)).collect()
    }

    /// The Keras shape of a weight by its name (see [`WEIGHT_NAMES`]), `None` for another name.
    ///
    /// ```
    /// use transformer_encoder::WeightDims;
    /// let d = WeightDims { hidden_dim: 48, num_heads: 5, key_dim: 9, intermediate_dim: 64 };
    /// assert_eq!(d.shape("self_attention_layer/query/kernel"), Some(vec![48, 5, 9]));
    /// assert_eq!(d.shape("feedforward_output_dense/bias"), Some(vec![48]));
    /// ```
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        Part::ALL.iter().find_map(|p| {
            p.tensors()
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| self.shape_of(s))
        })
    }

    /// `(rows, columns)` of a projection's kernel as a matrix: `[in, out]`.
    pub fn matrix(&self, d: Dense) -> (usize, usize) {
        let w = self.num_heads * self.key_dim;
        match d {
            Dense::Query | Dense::Key | Dense::Value => (self.hidden_dim, w),
            Dense::AttentionOutput => (w, self.hidden_dim),
            Dense::Intermediate => (self.hidden_dim, self.intermediate_dim),
            Dense::Output => (self.intermediate_dim, self.hidden_dim),
        }
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.hidden_dim == 0
            || self.num_heads == 0
            || self.key_dim == 0
            || self.intermediate_dim == 0
        {
            return Err(Error::weights(
                WEIGHT_NAMES[0],
                format!("every size must be >= 1, got {self:?}"),
            ));
        }
        if self.key_dim != self.hidden_dim / self.num_heads {
            return Err(Error::weights(
                WEIGHT_NAMES[0],
                format!(
                    "key_dim must be hidden_dim / num_heads (floored) = {}, got {}",
                    self.hidden_dim / self.num_heads,
                    self.key_dim
                ),
            ));
        }
        // Every tensor's element count must fit in usize.
        for p in Part::ALL {
            for (name, syms) in p.tensors() {
                syms.iter()
                    .try_fold(1usize, |a, &s| a.checked_mul(self.size(s)))
                    .ok_or_else(|| Error::weights(&name, "shape overflows usize"))?;
            }
        }
        Ok(())
    }
}

/// One of the layer's six projections (Keras `EinsumDense` / `Dense` sublayers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dense {
    /// `self_attention_layer/query`: kernel `[H, N, D]`, bias `[N, D]`.
    Query,
    /// `self_attention_layer/key`.
    Key,
    /// `self_attention_layer/value`.
    Value,
    /// `self_attention_layer/attention_output`: kernel `[N, D, H]`, bias `[H]`.
    AttentionOutput,
    /// `feedforward_intermediate_dense`: kernel `[H, F]`, bias `[F]`.
    Intermediate,
    /// `feedforward_output_dense`: kernel `[F, H]`, bias `[H]`.
    Output,
}

impl Dense {
    /// The six, in Keras' `layer.weights` order.
    pub const ALL: [Dense; 6] = [
        Dense::Query,
        Dense::Key,
        Dense::Value,
        Dense::AttentionOutput,
        Dense::Intermediate,
        Dense::Output,
    ];

    /// The sublayer's Keras path: the name-to-field mapping, written once.
    pub fn path(self) -> &'static str {
        match self {
            Dense::Query => "self_attention_layer/query",
            Dense::Key => "self_attention_layer/key",
            Dense::Value => "self_attention_layer/value",
            Dense::AttentionOutput => "self_attention_layer/attention_output",
            Dense::Intermediate => "feedforward_intermediate_dense",
            Dense::Output => "feedforward_output_dense",
        }
    }

    pub(super) fn kernel_syms(self) -> &'static [Sym] {
        match self {
            Dense::Query | Dense::Key | Dense::Value => &[Sym::H, Sym::N, Sym::D],
            Dense::AttentionOutput => &[Sym::N, Sym::D, Sym::H],
            Dense::Intermediate => &[Sym::H, Sym::F],
            Dense::Output => &[Sym::F, Sym::H],
        }
    }

    pub(super) fn bias_syms(self) -> &'static [Sym] {
        match self {
            Dense::Query | Dense::Key | Dense::Value => &[Sym::N, Sym::D],
            Dense::AttentionOutput | Dense::Output => &[Sym::H],
            Dense::Intermediate => &[Sym::F],
        }
    }

    /// Keras' `kernel_scale` shape after `quantize("int8")`: the output axes, with the reduced
    /// input axes kept as 1 for the einsum projections.
    pub(crate) fn scale_shape(self, d: &WeightDims) -> Vec<usize> {
        let syms: &[Sym] = match self {
            Dense::Query | Dense::Key | Dense::Value => &[Sym::One, Sym::One, Sym::N, Sym::D],
            Dense::AttentionOutput => &[Sym::One, Sym::One, Sym::H],
            Dense::Intermediate => &[Sym::F],
            Dense::Output => &[Sym::H],
        };
        d.shape_of(syms)
    }
}

/// One of the layer's two LayerNorms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormRole {
    /// `self_attention_layer_norm` (LN1).
    SelfAttention,
    /// `feedforward_layer_norm` (LN2).
    FeedForward,
}

impl NormRole {
    /// Both, in Keras' order.
    pub const ALL: [NormRole; 2] = [NormRole::SelfAttention, NormRole::FeedForward];

    /// The sublayer's Keras path.
    pub fn path(self) -> &'static str {
        match self {
            NormRole::SelfAttention => "self_attention_layer_norm",
            NormRole::FeedForward => "feedforward_layer_norm",
        }
    }
}

/// A sublayer, in Keras' `layer.weights` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Part {
    Dense(Dense),
    Norm(NormRole),
}

impl Part {
    pub(super) const ALL: [Part; 8] = [
        Part::Dense(Dense::Query),
        Part::Dense(Dense::Key),
        Part::Dense(Dense::Value),
        Part::Dense(Dense::AttentionOutput),
        Part::Norm(NormRole::SelfAttention),
        Part::Norm(NormRole::FeedForward),
        Part::Dense(Dense::Intermediate),
        Part::Dense(Dense::Output),
    ];

    /// The float tensors of the sublayer: (full name, symbolic shape).
    pub(super) fn tensors(self) -> [(String, &'static [Sym]); 2] {
        match self {
            Part::Dense(d) => [
                (format!("{}/kernel", d.path()), d.kernel_syms()),
                (format!("{}/bias", d.path()), d.bias_syms()),
            ],
            Part::Norm(n) => [
                (format!("{}/gamma", n.path()), &[Sym::H]),
                (format!("{}/beta", n.path()), &[Sym::H]),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_names_are_the_sublayer_paths_in_keras_order() {
        let derived: Vec<String> = Part::ALL
            .iter()
            .flat_map(|p| p.tensors().map(|(n, _)| n))
            .collect();
        assert_eq!(derived, WEIGHT_NAMES.to_vec());
    }
}
