//! Safetensors in and out: a file's tensors under a prefix checked against the expected names,
//! and the views a file is serialized from.

use super::NormWeights;
use super::names::{Dense, NormRole, Part, Sym, WeightDims};
use crate::error::{Error, Result, dims};
use crate::store::TensorStore;
use safetensors::{Dtype, View};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes)
        .map_err(|e| Error::format(&path.display().to_string(), e.to_string()))
}

/// A safetensors file's tensors under a prefix, checked against the expected names.
pub(crate) struct Loaded<'a> {
    prefix: String,
    store: &'a TensorStore<'a>,
}

impl<'a> Loaded<'a> {
    /// Every expected name must be there; a tensor under the prefix that is not expected is an
    /// error.
    pub(crate) fn read(
        store: &'a TensorStore<'a>,
        prefix: &str,
        expected: &[String],
    ) -> Result<Loaded<'a>> {
        for name in store.names() {
            if let Some(rest) = name.strip_prefix(prefix)
                && !expected.iter().any(|e| e == rest)
            {
                return Err(Error::weights(
                    &name,
                    format!(
                        "unexpected tensor (not one of the encoder's weights under prefix `{prefix}`)"
                    ),
                ));
            }
        }
        for name in expected {
            let full = format!("{prefix}{name}");
            if store.info(&full).is_none() {
                return Err(Error::weights(&full, "missing"));
            }
        }
        Ok(Loaded {
            prefix: prefix.to_string(),
            store,
        })
    }

    fn full(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn shape(&self, name: &str) -> Option<&[usize]> {
        self.store.info(&self.full(name)).map(|t| &t.shape[..])
    }

    /// The sizes, read off every float tensor that carries each (the most common value wins, so a
    /// single mis-shaped tensor is the one named in the error).
    pub(crate) fn dims(&self) -> Result<WeightDims> {
        let vote = |sym: Sym| -> usize {
            let mut vals = Vec::new();
            for p in Part::ALL {
                for (name, syms) in p.tensors() {
                    if let Some(shape) = self.shape(&name)
                        && shape.len() == syms.len()
                    {
                        for (ax, &s) in syms.iter().enumerate() {
                            if s == sym {
                                vals.push(shape[ax]);
                            }
                        }
                    }
                }
            }
            let mut best = (0usize, 0usize);
            for &v in &vals {
                let c = vals.iter().filter(|&&x| x == v).count();
                if c > best.1 {
                    best = (v, c);
                }
            }
            best.0
        };
        let d = WeightDims {
            hidden_dim: vote(Sym::H),
            num_heads: vote(Sym::N),
            key_dim: vote(Sym::D),
            intermediate_dim: vote(Sym::F),
        };
        d.check()?;
        Ok(d)
    }

    fn check_shape(&self, name: &str, want: &[usize]) -> Result<()> {
        let full = self.full(name);
        let got = self
            .shape(name)
            .ok_or_else(|| Error::weights(&full, "missing"))?;
        if got != want {
            return Err(Error::weights(
                &full,
                format!("expected shape {}, got {}", dims(want), dims(got)),
            ));
        }
        Ok(())
    }

    /// A projection's float kernel.
    pub(crate) fn kernel(&self, d: Dense, dims: &WeightDims) -> Result<Vec<f32>> {
        self.f32(&format!("{}/kernel", d.path()), d.kernel_syms(), dims)
    }

    /// A projection's bias.
    pub(crate) fn bias(&self, d: Dense, dims: &WeightDims) -> Result<Vec<f32>> {
        self.f32(&format!("{}/bias", d.path()), d.bias_syms(), dims)
    }

    /// A LayerNorm's weights.
    pub(crate) fn norm(&self, n: NormRole, dims: &WeightDims) -> Result<NormWeights> {
        Ok(NormWeights {
            gamma: self.f32(&format!("{}/gamma", n.path()), &[Sym::H], dims)?,
            beta: self.f32(&format!("{}/beta", n.path()), &[Sym::H], dims)?,
        })
    }

    /// A float tensor of the given symbolic shape, as f32.
    fn f32(&self, name: &str, syms: &[Sym], d: &WeightDims) -> Result<Vec<f32>> {
        self.f32_shaped(name, &d.shape_of(syms))
    }

    /// A float tensor of the given shape, as f32.
    pub(crate) fn f32_shaped(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.check_shape(name, shape)?;
        let full = self.full(name);
        self.store.f32(&full, &full)
    }

    /// An int8 tensor of the given shape.
    pub(crate) fn i8_shaped(&self, name: &str, shape: &[usize]) -> Result<Vec<i8>> {
        self.check_shape(name, shape)?;
        let full = self.full(name);
        self.store.i8(&full, &full)
    }
}

/// A tensor to write.
pub(crate) enum TensorOut<'a> {
    F32 { shape: Vec<usize>, data: &'a [f32] },
    I8 { shape: Vec<usize>, data: &'a [i8] },
}

impl View for TensorOut<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            TensorOut::F32 { .. } => Dtype::F32,
            TensorOut::I8 { .. } => Dtype::I8,
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            TensorOut::F32 { shape, .. } | TensorOut::I8 { shape, .. } => shape,
        }
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            TensorOut::F32 { data, .. } => {
                Cow::Owned(data.iter().flat_map(|v| v.to_le_bytes()).collect())
            }
            TensorOut::I8 { data, .. } => Cow::Owned(data.iter().map(|&v| v as u8).collect()),
        }
    }
    fn data_len(&self) -> usize {
        match self {
            TensorOut::F32 { data, .. } => data.len() * 4,
            TensorOut::I8 { data, .. } => data.len(),
        }
    }
}

pub(crate) fn serialize(views: BTreeMap<String, TensorOut<'_>>) -> Result<Vec<u8>> {
    safetensors::serialize(views, None).map_err(|e| Error::format("safetensors", e.to_string()))
}
