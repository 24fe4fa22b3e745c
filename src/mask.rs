//! Masks as Keras takes them (SPEC section 4), their merge, and the implicit-mask helpers.
//!
//! * `padding_mask [B, S]`: nonzero = real token. It masks **keys only**; padded query rows are
//!   still computed (Keras' explicit `padding_mask`). A `[1, S]` mask broadcasts over the batch.
//! * `attention_mask [B, S, S]`: entry `[b, i, j]` nonzero = query `i` may attend to key `j`.
//!   A `[1, S, S]` mask broadcasts over the batch.
//! * Values are truncated to integers (as Keras casts to int32) and tested for nonzero:
//!   0.7 masks, 1.5 and -1 attend. With both masks, the integer values are combined with `min`.

use crate::error::{Error, Result, dims};

/// The values of a mask, in any of the types Keras accepts.
#[derive(Clone, Copy, Debug)]
pub enum MaskValues<'a> {
    /// `true` = keep.
    Bool(&'a [bool]),
    /// Nonzero = keep.
    U8(&'a [u8]),
    /// Nonzero = keep.
    I32(&'a [i32]),
    /// Truncated to int32 (wrapping, as a cast does), then nonzero = keep.
    I64(&'a [i64]),
    /// Truncated toward zero to int32 (saturating; NaN is 0), then nonzero = keep.
    F32(&'a [f32]),
}

impl MaskValues<'_> {
    fn len(&self) -> usize {
        match self {
            MaskValues::Bool(v) => v.len(),
            MaskValues::U8(v) => v.len(),
            MaskValues::I32(v) => v.len(),
            MaskValues::I64(v) => v.len(),
            MaskValues::F32(v) => v.len(),
        }
    }

    /// Element `i` as Keras' int32 cast makes it.
    #[inline]
    fn int(&self, i: usize) -> i32 {
        match self {
            MaskValues::Bool(v) => v[i] as i32,
            MaskValues::U8(v) => v[i] as i32,
            MaskValues::I32(v) => v[i],
            MaskValues::I64(v) => v[i] as i32,
            MaskValues::F32(v) => v[i] as i32,
        }
    }
}

impl<'a> From<&'a [bool]> for MaskValues<'a> {
    fn from(v: &'a [bool]) -> Self {
        MaskValues::Bool(v)
    }
}
impl<'a> From<&'a [u8]> for MaskValues<'a> {
    fn from(v: &'a [u8]) -> Self {
        MaskValues::U8(v)
    }
}
impl<'a> From<&'a [i32]> for MaskValues<'a> {
    fn from(v: &'a [i32]) -> Self {
        MaskValues::I32(v)
    }
}
impl<'a> From<&'a [i64]> for MaskValues<'a> {
    fn from(v: &'a [i64]) -> Self {
        MaskValues::I64(v)
    }
}
impl<'a> From<&'a [f32]> for MaskValues<'a> {
    fn from(v: &'a [f32]) -> Self {
        MaskValues::F32(v)
    }
}
impl<'a> From<&'a Vec<u8>> for MaskValues<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        MaskValues::U8(v)
    }
}
impl<'a> From<&'a Vec<bool>> for MaskValues<'a> {
    fn from(v: &'a Vec<bool>) -> Self {
        MaskValues::Bool(v)
    }
}

/// Up to six dimensions, stored inline (no allocation per call).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dims {
    d: [usize; 6],
    rank: usize,
}

impl Dims {
    pub(crate) fn new(shape: &[usize]) -> Dims {
        let mut d = [0; 6];
        for (o, s) in d.iter_mut().zip(shape) {
            *o = *s;
        }
        Dims {
            d,
            rank: shape.len(),
        }
    }
    pub(crate) fn rank(&self) -> usize {
        self.rank
    }
    pub(crate) fn get(&self, i: usize) -> usize {
        self.d[i]
    }
    pub(crate) fn describe(&self) -> String {
        if self.rank > 6 {
            format!("a rank-{} shape", self.rank)
        } else {
            dims(&self.d[..self.rank])
        }
    }
    pub(crate) fn elements(&self) -> Option<usize> {
        if self.rank > 6 {
            return None;
        }
        self.d[..self.rank]
            .iter()
            .try_fold(1usize, |a, &b| a.checked_mul(b))
    }
}

/// A mask with its shape.
///
/// ```
/// use transformer_encoder::Mask;
/// let keep = [1u8, 1, 0, 1, 1, 1];
/// let m = Mask::new(&keep[..], &[2, 3]); // padding mask [B = 2, S = 3]
/// # let _ = m;
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Mask<'a> {
    values: MaskValues<'a>,
    shape: Dims,
}

impl<'a> Mask<'a> {
    /// A mask of the given values and shape (checked when used).
    pub fn new(values: impl Into<MaskValues<'a>>, shape: &[usize]) -> Mask<'a> {
        Mask {
            values: values.into(),
            shape: Dims::new(shape),
        }
    }

    /// Check rank, size and broadcastability against `(batch, seq)`. Returns whether the batch
    /// dimension broadcasts.
    fn check(&self, arg: &str, rank: usize, batch: usize, seq: usize) -> Result<bool> {
        let want = || {
            if rank == 2 {
                format!("[batch, seq] = [{batch}, {seq}] (or [1, {seq}])")
            } else {
                format!("[batch, seq, seq] = [{batch}, {seq}, {seq}] (or [1, {seq}, {seq}])")
            }
        };
        if self.shape.rank() != rank {
            return Err(Error::shape(arg, want(), self.shape.describe()));
        }
        let b = self.shape.get(0);
        let ok_b = b == batch || b == 1;
        let ok_s = (1..rank).all(|i| self.shape.get(i) == seq);
        if !ok_b || !ok_s {
            return Err(Error::shape(arg, want(), self.shape.describe()));
        }
        let n = self.shape.elements().unwrap_or(usize::MAX);
        if self.values.len() != n {
            return Err(Error::shape(
                arg,
                format!("{n} values for shape {}", self.shape.describe()),
                format!("{} values", self.values.len()),
            ));
        }
        Ok(b == 1 && batch != 1)
    }
}

/// The merged keep-mask, in a caller-owned buffer.
#[derive(Clone, Copy)]
pub(crate) enum Merged {
    None,
    Keys,
    Full,
}

impl Merged {
    /// The kernel's view of the merged mask held in `buf`.
    pub(crate) fn keep(self, buf: &[u8]) -> transformer_encoder_kernels::KeepMask<'_> {
        use transformer_encoder_kernels::KeepMask;
        match self {
            Merged::None => KeepMask::All,
            Merged::Keys => KeepMask::Keys(buf),
            Merged::Full => KeepMask::Full(buf),
        }
    }
}

/// Merge Keras-style masks into `buf` (resized as needed): `[B, S]` key keep-flags when only a
/// padding mask is given, `[B, S, S]` when an attention mask is given.
pub(crate) fn merge(
    padding: Option<&Mask<'_>>,
    attention: Option<&Mask<'_>>,
    batch: usize,
    seq: usize,
    buf: &mut Vec<u8>,
) -> Result<Merged> {
    let pb = match padding {
        Some(p) => Some(p.check("padding_mask", 2, batch, seq)?),
        None => None,
    };
    let ab = match attention {
        Some(a) => Some(a.check("attention_mask", 3, batch, seq)?),
        None => None,
    };
    match (padding, attention) {
        (None, None) => Ok(Merged::None),
        (Some(p), None) => {
            let bc = pb == Some(true);
            buf.clear();
            buf.resize(batch * seq, 0);
            for b in 0..batch {
                let src = if bc { 0 } else { b };
                for j in 0..seq {
                    buf[b * seq + j] = (p.values.int(src * seq + j) != 0) as u8;
                }
            }
            Ok(Merged::Keys)
        }
        (p, Some(a)) => {
            let abc = ab == Some(true);
            let pbc = pb == Some(true);
            buf.clear();
            buf.resize(batch * seq * seq, 0);
            for b in 0..batch {
                let asrc = if abc { 0 } else { b };
                let psrc = if pbc { 0 } else { b };
                for i in 0..seq {
                    for j in 0..seq {
                        let mut v = a.values.int((asrc * seq + i) * seq + j);
                        if let Some(p) = p {
                            v = v.min(p.values.int(psrc * seq + j));
                        }
                        buf[(b * seq + i) * seq + j] = (v != 0) as u8;
                    }
                }
            }
            Ok(Merged::Full)
        }
    }
}

/// Merge the masks of a ragged call (SPEC section 11) into `buf`: `padding_mask` has one value
/// per row (`[T]`, `T = sum(lengths)`), `attention_mask` each sequence's `[len_i, len_i]` block
/// end to end (`[sum(len_i^2)]`). Like [`merge`]: key flags when only a padding mask is given,
/// the blocks (combined with `min`) when an attention mask is given.
pub(crate) fn merge_ragged(
    padding: Option<&Mask<'_>>,
    attention: Option<&Mask<'_>>,
    lengths: &[usize],
    rows: usize,
    squares: usize,
    buf: &mut Vec<u8>,
) -> Result<Merged> {
    let check = |m: &Mask<'_>, arg: &str, n: usize, what: &str| -> Result<()> {
        if m.shape.rank() != 1 || m.shape.get(0) != n {
            return Err(Error::shape(
                arg,
                format!("rank 1 [{n}] ({what})"),
                m.shape.describe(),
            ));
        }
        if m.values.len() != n {
            return Err(Error::shape(
                arg,
                format!("{n} values ({what})"),
                format!("{} values", m.values.len()),
            ));
        }
        Ok(())
    };
    if let Some(p) = padding {
        check(p, "padding_mask", rows, "one per token of the ragged batch")?;
    }
    if let Some(a) = attention {
        check(
            a,
            "attention_mask",
            squares,
            "each sequence's [len, len] mask end to end",
        )?;
    }
    match (padding, attention) {
        (None, None) => Ok(Merged::None),
        (Some(p), None) => {
            buf.clear();
            buf.extend((0..rows).map(|i| (p.values.int(i) != 0) as u8));
            Ok(Merged::Keys)
        }
        (p, Some(a)) => {
            buf.clear();
            buf.resize(squares, 0);
            let (mut start, mut square) = (0, 0);
            for &len in lengths {
                for i in 0..len {
                    for j in 0..len {
                        let at = square + i * len + j;
                        let mut v = a.values.int(at);
                        if let Some(p) = p {
                            v = v.min(p.values.int(start + j));
                        }
                        buf[at] = (v != 0) as u8;
                    }
                }
                start += len;
                square += len * len;
            }
            Ok(Merged::Full)
        }
    }
}

/// A key padding mask `[B, S]` from token ids: 1 where `id != pad_id`. Pass it as
/// `padding_mask`: like the BERT-family presets, it masks keys only, and padded query rows are
/// still computed.
///
/// ```
/// let m = transformer_encoder::padding_mask_from_ids(&[5, 9, 0, 0], 0);
/// assert_eq!(m, vec![1, 1, 0, 0]);
/// ```
pub fn padding_mask_from_ids<T: PartialEq + Copy>(ids: &[T], pad_id: T) -> Vec<u8> {
    ids.iter().map(|&t| (t != pad_id) as u8).collect()
}

/// The equivalent of Keras' implicit mask (`Embedding(mask_zero=True)` with `pad_id = 0`), as an
/// `attention_mask [B, S, S]`: entry `[b, i, j]` is 1 when both token `i` and token `j` are real.
/// Unlike a `padding_mask`, it also masks the **query rows** of padded tokens, which become fully
/// masked rows (uniform or zero attention, per the masked-row policy), exactly as Keras does.
///
/// Errors if `ids.len() != batch * seq`.
///
/// ```
/// let m = transformer_encoder::implicit_mask_from_ids(&[7, 0], 1, 2, 0).unwrap();
/// assert_eq!(m, vec![1, 0, 0, 0]); // row 1 (the pad token's query) is fully masked
/// ```
pub fn implicit_mask_from_ids<T: PartialEq + Copy>(
    ids: &[T],
    batch: usize,
    seq: usize,
    pad_id: T,
) -> Result<Vec<u8>> {
    let n = batch
        .checked_mul(seq)
        .ok_or_else(|| Error::shape("ids", "batch * seq to fit in usize", "an overflow"))?;
    if ids.len() != n {
        return Err(Error::shape(
            "ids",
            format!("{n} ids ([{batch}, {seq}])"),
            format!("{} ids", ids.len()),
        ));
    }
    let mut m = vec![0u8; n * seq];
    for b in 0..batch {
        for i in 0..seq {
            for j in 0..seq {
                m[(b * seq + i) * seq + j] =
                    (ids[b * seq + i] != pad_id && ids[b * seq + j] != pad_id) as u8;
            }
        }
    }
    Ok(m)
}
