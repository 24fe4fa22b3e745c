//! One reader of safetensors tensors for every loader (the layer's float and int8 weights, a
//! BERT checkpoint): from a buffer in memory, or from a file read one tensor at a time, so that
//! loading a model never holds the whole file beside the weights made from it.
//!
//! A file's header is read and checked when it is opened (every tensor's bytes inside the file,
//! its size what its dtype and shape say); a tensor's bytes are read when it is asked for, and
//! converted to float32 in chunks of [`CHUNK`] bytes, so reading a tensor holds its float32 copy
//! and one chunk, never its raw bytes beside it.

use crate::error::{Error, Result};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};
use std::borrow::Cow;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Bytes of a file read and converted at a time (a multiple of every dtype's size).
const CHUNK: usize = 1 << 20;

/// Where the tensors' bytes are.
enum Data<'a> {
    /// The data section of a buffer (after the header).
    Bytes(&'a [u8]),
    /// A file, and where its data section starts.
    File(File, u64),
}

/// The tensors of a safetensors buffer or file, by name.
pub(crate) struct TensorStore<'a> {
    /// What to name in errors: the file's path, or "safetensors".
    what: String,
    meta: Metadata,
    data: Data<'a>,
}

impl<'a> TensorStore<'a> {
    /// The tensors of a whole safetensors buffer.
    pub(crate) fn from_bytes(bytes: &'a [u8]) -> Result<TensorStore<'a>> {
        let what = "safetensors";
        let (n, meta) =
            SafeTensors::read_metadata(bytes).map_err(|e| Error::format(what, e.to_string()))?;
        Ok(TensorStore {
            what: what.to_string(),
            meta,
            data: Data::Bytes(&bytes[8 + n..]),
        })
    }

    /// The tensors of a safetensors file: its header is read now, each tensor when asked for.
    pub(crate) fn open(path: &Path) -> Result<TensorStore<'static>> {
        let what = path.display().to_string();
        let fail = |m: String| Error::format(&what, m);
        let mut file = File::open(path).map_err(|e| fail(e.to_string()))?;
        let len = file.metadata().map_err(|e| fail(e.to_string()))?.len();
        let mut n = [0u8; 8];
        file.read_exact(&mut n).map_err(|e| {
            fail(format!(
                "not a safetensors file (reading its header length: {e})"
            ))
        })?;
        let n = u64::from_le_bytes(n);
        // safetensors' own limit on a header (100 MB).
        if n > 100_000_000 || n + 8 > len {
            return Err(fail(format!(
                "not a safetensors file (a header of {n} bytes in a file of {len})"
            )));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header)
            .map_err(|e| fail(format!("reading its header: {e}")))?;
        let meta: Metadata = serde_json::from_slice(&header)
            .map_err(|e| fail(format!("not a safetensors file (its header: {e})")))?;
        let store = TensorStore {
            what: what.clone(),
            meta,
            data: Data::File(file, 8 + n),
        };
        // safetensors checked that the tensors lie end to end, each the size its dtype and shape
        // say; they must fill the file's data section exactly, as in a buffer.
        let (held, data_len) = (store.meta.data_len() as u64, len - 8 - n);
        if held != data_len {
            return Err(fail(format!(
                "the tensors hold {held} bytes, the file's data section {data_len}"
            )));
        }
        Ok(store)
    }

    /// Every tensor's name.
    pub(crate) fn names(&self) -> Vec<String> {
        self.meta.offset_keys()
    }

    /// A tensor's dtype and shape, if it is there.
    pub(crate) fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.meta.info(name)
    }

    fn get(&self, name: &str) -> Result<&TensorInfo> {
        self.info(name)
            .ok_or_else(|| Error::weights(name, "missing"))
    }

    /// Bytes `r` of tensor `info` (relative to its start).
    fn bytes(&self, info: &TensorInfo, r: std::ops::Range<usize>) -> Result<Cow<'_, [u8]>> {
        let at = info.data_offsets.0;
        match &self.data {
            Data::Bytes(b) => Ok(Cow::Borrowed(&b[at + r.start..at + r.end])),
            Data::File(f, start) => {
                let mut f: &File = f;
                let mut out = vec![0u8; r.len()];
                f.seek(SeekFrom::Start(start + (at + r.start) as u64))
                    .and_then(|_| f.read_exact(&mut out))
                    .map_err(|e| Error::format(&self.what, e.to_string()))?;
                Ok(Cow::Owned(out))
            }
        }
    }

    /// A float tensor (F32, F64, F16 or BF16) as float32, read and converted a chunk at a time.
    pub(crate) fn f32(&self, name: &str, what: &str) -> Result<Vec<f32>> {
        let info = self.get(name)?;
        let w = match info.dtype {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(Error::weights(
                    what,
                    format!("dtype {other:?} is not a float type (expected F32, F64, F16 or BF16)"),
                ));
            }
        };
        let len = info.data_offsets.1 - info.data_offsets.0;
        let mut out = Vec::with_capacity(len / w);
        let mut at = 0;
        while at < len {
            let end = len.min(at + CHUNK);
            let b = self.bytes(info, at..end)?;
            let chunks = b.chunks_exact(w);
            match info.dtype {
                Dtype::F32 => {
                    out.extend(chunks.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                }
                Dtype::F64 => out.extend(chunks.map(|b| {
                    f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                })),
                Dtype::F16 => {
                    out.extend(chunks.map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()))
                }
                _ => out.extend(chunks.map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())),
            }
            at = end;
        }
        Ok(out)
    }

    /// An int8 tensor.
    pub(crate) fn i8(&self, name: &str, what: &str) -> Result<Vec<i8>> {
        let info = self.get(name)?;
        if info.dtype != Dtype::I8 {
            return Err(Error::weights(
                what,
                format!("dtype {:?}, expected I8", info.dtype),
            ));
        }
        let len = info.data_offsets.1 - info.data_offsets.0;
        let mut out = Vec::with_capacity(len);
        let mut at = 0;
        while at < len {
            let end = len.min(at + CHUNK);
            out.extend(self.bytes(info, at..end)?.iter().map(|&b| b as i8));
            at = end;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::{TensorOut, serialize};
    use std::collections::BTreeMap;

    fn file_of(bytes: &[u8], tag: &str) -> std::path::PathBuf {
        let p =
            std::env::temp_dir().join(format!("te-store-{}-{tag}.safetensors", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn a_file_reads_as_its_bytes_do_across_chunks() {
        // More than two chunks of float32, so the chunked reads meet at their seams.
        let big: Vec<f32> = (0..(CHUNK / 2 + 7)).map(|i| i as f32 * 0.5 - 3.0).collect();
        let small: Vec<i8> = (0..300).map(|i| (i % 256) as u8 as i8).collect();
        let mut v = BTreeMap::new();
        v.insert(
            "a".to_string(),
            TensorOut::F32 {
                shape: vec![big.len()],
                data: &big,
            },
        );
        v.insert(
            "b".to_string(),
            TensorOut::I8 {
                shape: vec![3, 100],
                data: &small,
            },
        );
        let bytes = serialize(v).unwrap();
        let path = file_of(&bytes, "chunks");
        let file = TensorStore::open(&path).unwrap();
        let mem = TensorStore::from_bytes(&bytes).unwrap();
        for s in [&file, &mem] {
            assert_eq!(s.f32("a", "a").unwrap(), big);
            assert_eq!(s.i8("b", "b").unwrap(), small);
            assert!(
                s.f32("b", "b")
                    .unwrap_err()
                    .to_string()
                    .contains("not a float")
            );
            assert!(s.f32("c", "c").unwrap_err().to_string().contains("missing"));
        }
        // A file cut short, or with bytes past its tensors, is refused when opened.
        for bad in [
            &bytes[..bytes.len() - 1],
            &[&bytes[..], &[0u8][..]].concat()[..],
        ] {
            let p = file_of(bad, "bad");
            let e = TensorStore::open(&p)
                .err()
                .expect("a damaged file is refused");
            assert!(e.to_string().contains(&p.display().to_string()), "{e}");
            std::fs::remove_file(p).ok();
        }
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn not_a_safetensors_file_is_an_error_naming_it() {
        for (tag, bytes) in [
            ("empty", &b""[..]),
            ("huge", &[255u8; 16][..]),
            (
                "json",
                &[4, 0, 0, 0, 0, 0, 0, 0, b'{', b'x', b'}', b' '][..],
            ),
        ] {
            let p = file_of(bytes, tag);
            let e = TensorStore::open(&p).err().expect("refused");
            assert!(
                e.to_string().contains(&p.display().to_string()),
                "{tag}: {e}"
            );
            std::fs::remove_file(p).ok();
        }
    }
}
