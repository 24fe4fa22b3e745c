//! `transformer_encoder._native`: the Python bindings of the crate, wrapped by the pure-Python
//! package `transformer_encoder` (python/pysrc), which does the argument handling a Python user
//! expects (sentence-transformers' `encode` signature, numpy dtype conversion, KerasHub layers).
//!
//! Every call that computes releases the GIL (`Python::detach`): Python threads calling one
//! shared encoder run in parallel. Errors are `ValueError`s carrying the Rust message (which
//! names the argument); nothing here panics on user input.

use numpy::{PyArray1, PyArray3, PyArrayMethods, PyReadonlyArray3, PyReadonlyArrayDyn};
use numpy::{PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use std::collections::HashMap;
use std::path::PathBuf;
use transformer_encoder::{
    CallOptions, EncoderConfig, EncoderWeights, Int8Weights, Mask, Precision, SentenceEncoder,
    TensorView, Threads, TransformerEncoder,
};

/// A Rust error as Python's `ValueError`, with its message.
fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// `precision` as the crate's enum (`fp32`, `bf16`, `int8` and their Keras spellings).
fn parse_precision(precision: &str) -> PyResult<Precision> {
    precision.parse().map_err(value_error)
}

/// The thread setting of `threads`: `None` is every core this process may use; 0 is an error.
fn parse_threads(threads: Option<usize>) -> PyResult<(Threads, usize)> {
    let n = match threads {
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Some(0) => {
            return Err(PyValueError::new_err(
                "threads: at least 1, got 0 (None uses every core)",
            ));
        }
        Some(n) => n,
    };
    let t = if n == 1 {
        Threads::Single
    } else {
        Threads::Count(n)
    };
    // (The crate clamps larger counts.)
    Ok((t, n.min(transformer_encoder_kernels::team::MAX_THREADS)))
}

/// A sentence-transformers model folder, loaded (see `transformer_encoder.SentenceEncoder`).
#[pyclass(
    frozen,
    name = "SentenceEncoder",
    module = "transformer_encoder._native"
)]
struct PySentenceEncoder {
    inner: SentenceEncoder,
    dim: usize,
    threads: usize,
    precision: Precision,
}

#[pymethods]
impl PySentenceEncoder {
    #[new]
    #[pyo3(signature = (path, precision = "fp32", threads = None, max_batch_tokens = 512, bf16_attention = false))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        precision: &str,
        threads: Option<usize>,
        max_batch_tokens: usize,
        bf16_attention: bool,
    ) -> PyResult<Self> {
        let p = parse_precision(precision)?;
        let (t, n) = parse_threads(threads)?;
        let inner = py
            .detach(|| -> transformer_encoder::Result<SentenceEncoder> {
                let e = SentenceEncoder::from_dir_with_precision(&path, p)?
                    .with_threads(t)
                    .with_max_batch_tokens(max_batch_tokens)?;
                if bf16_attention {
                    e.with_bf16_attention()
                } else {
                    Ok(e)
                }
            })
            .map_err(value_error)?;
        let dim = inner.model().config().hidden_size;
        Ok(PySentenceEncoder {
            inner,
            dim,
            threads: n,
            precision: p,
        })
    }

    /// The embeddings of `texts` as a float32 array `[len(texts), dim]` (the GIL released while
    /// they are computed).
    fn encode<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
    ) -> PyResult<Bound<'py, numpy::PyArray2<f32>>> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let dim = self.dim;
        let flat = py
            .detach(|| -> transformer_encoder::Result<Vec<f32>> {
                let rows = self.inner.encode(&refs)?;
                let mut flat = Vec::with_capacity(rows.len() * dim);
                for r in &rows {
                    flat.extend_from_slice(r);
                }
                Ok(flat)
            })
            .map_err(value_error)?;
        let n = texts.len();
        PyArray1::from_vec(py, flat).reshape([n, dim])
    }

    /// The embedding size.
    #[getter]
    fn dim(&self) -> usize {
        self.dim
    }

    /// Threads per call.
    #[getter]
    fn threads(&self) -> usize {
        self.threads
    }

    /// `fp32`, `bf16` or `int8`.
    #[getter]
    fn precision(&self) -> &'static str {
        self.precision.name()
    }

    /// The instruction-set tier the kernels run on.
    #[getter]
    fn isa(&self) -> String {
        self.inner
            .model()
            .stack()
            .layers()
            .first()
            .map_or_else(String::new, |l| l.isa().name().to_string())
    }

    /// The longest text in tokens (longer texts are truncated).
    #[getter]
    fn max_seq_length(&self) -> usize {
        self.inner.max_seq_length()
    }

    /// Whether the attention's products run on bf16 tiles from 64 tokens in every layer.
    #[getter]
    fn bf16_attention(&self) -> bool {
        self.inner
            .model()
            .stack()
            .layers()
            .first()
            .is_some_and(|l| l.bf16_attention())
    }

    /// Whether the model L2-normalises its embeddings itself (a `Normalize` module).
    #[getter]
    fn normalizes(&self) -> bool {
        self.inner.normalizes()
    }
}

/// One KerasHub `TransformerEncoder` layer with its weights (see
/// `transformer_encoder.TransformerEncoder`).
#[pyclass(
    frozen,
    name = "TransformerEncoder",
    module = "transformer_encoder._native"
)]
struct PyTransformerEncoder {
    inner: TransformerEncoder,
    config_json: String,
}

/// Where a layer's variables come from: a safetensors buffer (Keras' int8 variables if
/// `int8`: it holds `kernel_scale` tensors; else float ones), or a file, read one projection at
/// a time as it is packed (the crate tells the formats apart by the same names).
enum Source<'a> {
    Bytes(&'a [u8], bool),
    File(&'a std::path::Path),
}

/// The encoder of `config_json` over the tensors of `src`, at `precision`, on `threads`.
fn build(
    config_json: &str,
    src: Source<'_>,
    precision: Option<Precision>,
    threads: Threads,
) -> transformer_encoder::Result<TransformerEncoder> {
    let config = EncoderConfig::from_keras_json_str(config_json)?;
    let enc = match src {
        Source::File(p) => TransformerEncoder::from_safetensors_file(config, p, "")?,
        Source::Bytes(b, true) => {
            TransformerEncoder::new_int8(config, Int8Weights::from_safetensors(b, "")?)?
        }
        Source::Bytes(b, false) => {
            TransformerEncoder::new(config, EncoderWeights::from_safetensors(b, "")?)?
        }
    };
    let enc = match precision {
        Some(p) if p != enc.precision() => enc.with_precision(p)?,
        _ => enc,
    };
    Ok(enc.with_threads(threads))
}

/// The header of the safetensors file at `path` (read alone, not the tensors).
fn read_header(path: &std::path::Path) -> Result<safetensors::tensor::Metadata, String> {
    use std::io::Read;
    let file = path.display();
    let mut f = std::fs::File::open(path).map_err(|e| format!("path: {file}: {e}"))?;
    let not = |e: String| format!("path: {file}: not a safetensors file ({e})");
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|e| not(e.to_string()))?;
    let n = u64::from_le_bytes(n);
    // safetensors' own limit on a header (100 MB).
    if n > 100_000_000 {
        return Err(not(format!("a header of {n} bytes")));
    }
    let mut header = Vec::new();
    f.take(n)
        .read_to_end(&mut header)
        .map_err(|e| not(e.to_string()))?;
    if header.len() as u64 != n {
        return Err(not(format!("a header of {n} bytes in a shorter file")));
    }
    // safetensors' `Metadata` checks the tensors' offsets as it parses.
    serde_json::from_slice(&header).map_err(|e| not(e.to_string()))
}

/// A mask array of one of the dtypes the crate takes, borrowed from numpy.
enum MaskArray<'py> {
    Bool(PyReadonlyArrayDyn<'py, bool>),
    U8(PyReadonlyArrayDyn<'py, u8>),
    I32(PyReadonlyArrayDyn<'py, i32>),
    I64(PyReadonlyArrayDyn<'py, i64>),
    F32(PyReadonlyArrayDyn<'py, f32>),
}

impl<'py> MaskArray<'py> {
    /// `obj` as a C-contiguous mask array, or a `TypeError` naming `what`.
    fn extract(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<MaskArray<'py>> {
        let wrong = || {
            PyTypeError::new_err(format!(
                "{what}: a C-contiguous numpy array of bool, uint8, int32, int64 or float32"
            ))
        };
        let arr = obj.cast::<PyUntypedArray>().map_err(|_| wrong())?;
        if !arr.is_c_contiguous() {
            return Err(wrong());
        }
        macro_rules! try_as {
            ($t:ty, $v:ident) => {
                if let Ok(a) = obj.extract::<PyReadonlyArrayDyn<'py, $t>>() {
                    return Ok(MaskArray::$v(a));
                }
            };
        }
        try_as!(bool, Bool);
        try_as!(u8, U8);
        try_as!(i32, I32);
        try_as!(i64, I64);
        try_as!(f32, F32);
        Err(wrong())
    }

    /// The crate's view of the mask.
    fn mask(&self) -> PyResult<Mask<'_>> {
        fn of<'a, T: numpy::Element>(
            a: &'a PyReadonlyArrayDyn<'_, T>,
        ) -> PyResult<(&'a [T], Vec<usize>)> {
            Ok((a.as_slice().map_err(value_error)?, a.shape().to_vec()))
        }
        Ok(match self {
            MaskArray::Bool(a) => of(a).map(|(v, s)| Mask::new(v, &s))?,
            MaskArray::U8(a) => of(a).map(|(v, s)| Mask::new(v, &s))?,
            MaskArray::I32(a) => of(a).map(|(v, s)| Mask::new(v, &s))?,
            MaskArray::I64(a) => of(a).map(|(v, s)| Mask::new(v, &s))?,
            MaskArray::F32(a) => of(a).map(|(v, s)| Mask::new(v, &s))?,
        })
    }
}

#[pymethods]
impl PyTransformerEncoder {
    /// A layer saved as safetensors under the crate's names with its Keras config as metadata
    /// `config` (`examples/keras_to_safetensors.py`, or `TransformerEncoder.save`).
    #[staticmethod]
    #[pyo3(signature = (path, precision = None, threads = None))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        precision: Option<&str>,
        threads: Option<usize>,
    ) -> PyResult<Self> {
        let p = precision.map(parse_precision).transpose()?;
        let (t, _) = parse_threads(threads)?;
        py.detach(|| -> Result<PyTransformerEncoder, String> {
            let file = path.display();
            let meta = read_header(&path)?;
            let config_json = meta
                .metadata()
                .as_ref()
                .and_then(|m| m.get("config"))
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "path: {file} has no `config` metadata (the layer's get_config() as \
                         JSON): write it with keras_to_safetensors.py"
                    )
                })?;
            let inner =
                build(&config_json, Source::File(&path), p, t).map_err(|e| e.to_string())?;
            Ok(PyTransformerEncoder { inner, config_json })
        })
        .map_err(PyValueError::new_err)
    }

    /// A layer from its Keras config (JSON) and variables (`name -> array`, names relative to
    /// the layer, float32 or Keras' int8 kernels with their `kernel_scale`).
    #[staticmethod]
    #[pyo3(signature = (config_json, tensors, precision = None, threads = None))]
    fn from_tensors(
        py: Python<'_>,
        config_json: String,
        tensors: HashMap<String, Bound<'_, PyAny>>,
        precision: Option<&str>,
        threads: Option<usize>,
    ) -> PyResult<Self> {
        let p = precision.map(parse_precision).transpose()?;
        let (t, _) = parse_threads(threads)?;
        // (name, dtype, shape, bytes) of each variable, copied out of numpy.
        let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, obj) in &tensors {
            let wrong = || {
                PyTypeError::new_err(format!(
                    "tensors[{name:?}]: a numpy array of float32 or int8"
                ))
            };
            if let Ok(a) = obj.extract::<PyReadonlyArrayDyn<'_, f32>>() {
                let v = a.as_array();
                let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                owned.push((
                    name.clone(),
                    safetensors::Dtype::F32,
                    a.shape().to_vec(),
                    bytes,
                ));
            } else if let Ok(a) = obj.extract::<PyReadonlyArrayDyn<'_, i8>>() {
                let bytes = a.as_array().iter().map(|&x| x as u8).collect();
                owned.push((
                    name.clone(),
                    safetensors::Dtype::I8,
                    a.shape().to_vec(),
                    bytes,
                ));
            } else {
                return Err(wrong());
            }
        }
        py.detach(|| -> Result<PyTransformerEncoder, String> {
            let views = owned
                .iter()
                .map(|(n, d, s, b)| {
                    safetensors::tensor::TensorView::new(*d, s.clone(), b)
                        .map(|v| (n.as_str(), v))
                        .map_err(|e| format!("tensors[{n:?}]: {e}"))
                })
                .collect::<Result<Vec<_>, String>>()?;
            let bytes = safetensors::serialize(views, None).map_err(|e| format!("tensors: {e}"))?;
            let int8 = owned.iter().any(|(n, ..)| n.ends_with("kernel_scale"));
            let inner = build(&config_json, Source::Bytes(&bytes, int8), p, t)
                .map_err(|e| e.to_string())?;
            Ok(PyTransformerEncoder { inner, config_json })
        })
        .map_err(PyValueError::new_err)
    }

    /// The layer's output `[batch, seq, hidden]` for `x` (C-contiguous float32, read in place),
    /// with Keras' optional `padding_mask [batch, seq]` and `attention_mask [batch, seq, seq]`.
    #[pyo3(signature = (x, padding_mask = None, attention_mask = None))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray3<'py, f32>,
        padding_mask: Option<Bound<'py, PyAny>>,
        attention_mask: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray3<f32>>> {
        let shape = x.shape().to_vec();
        let data = x.as_slice().map_err(|_| {
            PyValueError::new_err("x: a C-contiguous float32 array [batch, seq, hidden]")
        })?;
        let pm = padding_mask
            .as_ref()
            .map(|m| MaskArray::extract(m, "padding_mask"))
            .transpose()?;
        let am = attention_mask
            .as_ref()
            .map(|m| MaskArray::extract(m, "attention_mask"))
            .transpose()?;
        let mut opts = CallOptions::new();
        if let Some(m) = &pm {
            opts = opts.padding_mask(m.mask()?);
        }
        if let Some(m) = &am {
            opts = opts.attention_mask(m.mask()?);
        }
        let y = py
            .detach(|| self.inner.forward(TensorView::new(data, &shape), &opts))
            .map_err(value_error)?;
        PyArray1::from_vec(py, y).reshape([shape[0], shape[1], shape[2]])
    }

    /// The layer's Keras config, as JSON.
    #[getter]
    fn config_json(&self) -> &str {
        &self.config_json
    }

    /// The hidden size the layer takes.
    #[getter]
    fn hidden_dim(&self) -> usize {
        self.inner.hidden_dim()
    }

    /// `fp32`, `bf16` or `int8`.
    #[getter]
    fn precision(&self) -> &'static str {
        self.inner.precision().name()
    }

    /// The instruction-set tier the kernels run on.
    #[getter]
    fn isa(&self) -> &'static str {
        self.inner.isa().name()
    }
}

/// The module: the two classes the Python package wraps.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySentenceEncoder>()?;
    m.add_class::<PyTransformerEncoder>()?;
    Ok(())
}
