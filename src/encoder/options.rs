//! The encoder's inputs and call options: tensors, ragged batches, masked rows, threads.

use super::*;

/// How many threads an encoder's kernels use. Results are bit-identical for every choice.
///
/// A call on several threads is led by the calling thread with helper threads that the crate
/// keeps for that thread:
/// spawned on its first call, parked between calls (they spin for at most 50 µs after a job,
/// then sleep), ended with it. Concurrent callers each lead their own team and share nothing
/// on the hot path. The count is clamped to
/// [`MAX_THREADS`](transformer_encoder_kernels::team::MAX_THREADS) (256).
///
/// ```
/// use std::sync::Arc;
/// use transformer_encoder::{EncoderConfig, Threads, TransformerEncoder};
/// let enc = TransformerEncoder::init(EncoderConfig::new(64, 8), 64, 1)
///     .unwrap()
///     .with_threads(Threads::Count(2));
/// let pool = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap());
/// let on_pool = enc.clone().with_threads(Threads::Pool(pool));
/// # let _ = (enc, on_pool);
/// ```
#[derive(Clone, Debug, Default)]
pub enum Threads {
    /// The caller's thread only.
    Single,
    /// As many threads as rayon's current context has: the caller's pool inside
    /// `ThreadPool::install`, else the global pool (sized by `RAYON_NUM_THREADS`). Small
    /// problems still run on one thread.
    #[default]
    Current,
    /// `n` threads, led by the caller's: `Count(1)` is [`Threads::Single`]; `Count(0)` is an
    /// error of every call (`threads`).
    Count(usize),
    /// As many threads as the pool has, led by the caller's thread (the same as
    /// `Count(pool.current_num_threads())`: the team's helpers are the crate's own threads, not
    /// the pool's, so a call never waits for a free thread of the pool and the pool's threads
    /// never run a team's loop).
    Pool(Arc<rayon::ThreadPool>),
}

/// An f32 input tensor: data and shape (the encoder takes rank 3, `[batch, seq, hidden]`).
///
/// ```
/// use transformer_encoder::TensorView;
/// let x = vec![0.0f32; 2 * 3 * 4];
/// let t = TensorView::new(&x, &[2, 3, 4]);
/// assert_eq!(t.data().len(), 24);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub(super) data: &'a [f32],
    pub(super) shape: Dims,
}

impl<'a> TensorView<'a> {
    /// A view of `data` with `shape` (checked when used).
    pub fn new(data: &'a [f32], shape: &[usize]) -> TensorView<'a> {
        TensorView {
            data,
            shape: Dims::new(shape),
        }
    }

    /// The values.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    /// The shape as an error message prints it (`[2, 64]`).
    pub(crate) fn describe_shape(&self) -> String {
        self.shape.describe()
    }

    /// `(batch, seq, hidden)` if the shape has rank 3.
    pub fn shape3(&self) -> Option<(usize, usize, usize)> {
        (self.shape.rank() == 3).then(|| (self.shape.get(0), self.shape.get(1), self.shape.get(2)))
    }

    /// `(batch, seq, hidden)` if the view is a well-formed rank-3 tensor.
    pub(super) fn dims3(&self, arg: &str) -> Result<(usize, usize, usize)> {
        if self.shape.rank() != 3 {
            return Err(Error::shape(
                arg,
                "rank 3 [batch, seq, hidden]",
                self.shape.describe(),
            ));
        }
        let n = self.shape.elements();
        if n != Some(self.data.len()) {
            return Err(Error::shape(
                arg,
                format!(
                    "{} values for shape {}",
                    n.unwrap_or(usize::MAX),
                    self.shape.describe()
                ),
                format!("{} values", self.data.len()),
            ));
        }
        Ok((self.shape.get(0), self.shape.get(1), self.shape.get(2)))
    }
}

/// Sequences of different lengths packed end to end (SPEC section 11): `data` is
/// `[total_tokens, hidden]` row-major, sequence `i` holding the next `lengths[i]` rows. Lengths
/// of 0 are allowed. Checked when used.
///
/// ```
/// use transformer_encoder::RaggedView;
/// let x = vec![0.0f32; (3 + 1 + 5) * 4]; // three sequences of hidden size 4
/// let lengths = [3, 1, 5];
/// let v = RaggedView::new(&x, &lengths);
/// assert_eq!(v.tokens(), Some(9));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct RaggedView<'a> {
    pub(super) data: &'a [f32],
    pub(super) lengths: &'a [usize],
}

impl<'a> RaggedView<'a> {
    /// A view of `data` holding sequences of `lengths` end to end.
    pub fn new(data: &'a [f32], lengths: &'a [usize]) -> RaggedView<'a> {
        RaggedView { data, lengths }
    }

    /// The values.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    /// Each sequence's length.
    pub fn lengths(&self) -> &'a [usize] {
        self.lengths
    }

    /// The total number of tokens (`None` if the sum overflows).
    pub fn tokens(&self) -> Option<usize> {
        self.lengths
            .iter()
            .try_fold(0usize, |t, &l| t.checked_add(l))
    }

    /// `sum(len_i^2)`: the size of the per-sequence `[len, len]` blocks end to end.
    pub fn squares(&self) -> Option<usize> {
        self.lengths.iter().try_fold(0usize, |t, &l| {
            l.checked_mul(l).and_then(|q| q.checked_add(t))
        })
    }
}

/// How the rows of a call split into sequences.
#[derive(Clone, Copy, Debug)]
pub(super) enum Layout<'a> {
    /// `batch` sequences of `seq` rows.
    Uniform { batch: usize, seq: usize },
    /// Sequences of these lengths end to end.
    Ragged(&'a [usize]),
}

impl Layout<'_> {
    /// Call `f(first_row, len)` for each sequence.
    pub(super) fn each(&self, mut f: impl FnMut(usize, usize)) {
        match *self {
            Layout::Uniform { batch, seq } => (0..batch).for_each(|b| f(b * seq, seq)),
            Layout::Ragged(lengths) => {
                let mut start = 0;
                for &len in lengths {
                    f(start, len);
                    start += len;
                }
            }
        }
    }
}

/// What a query row with every key masked gets (SPEC section 4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MaskedRowPolicy {
    /// Exactly what Keras does: all-zero probabilities when attention scores are requested or
    /// `dropout > 0` (its scores path), uniform 1/S otherwise (its fused path).
    #[default]
    Keras,
    /// Always all-zero probabilities: the row's attention output is the output bias alone.
    Zeros,
    /// Always 1/S on every key, masked or not.
    Uniform,
}

impl MaskedRowPolicy {
    /// The kernel's behaviour for a call: Keras' scores path (taken when scores are requested or
    /// `dropout > 0`) zeroes fully masked rows, its fused path makes them uniform.
    pub(crate) fn resolve(self, scores_path: bool, dropout: f64) -> MaskedRows {
        match self {
            MaskedRowPolicy::Zeros => MaskedRows::Zeros,
            MaskedRowPolicy::Uniform => MaskedRows::Uniform,
            MaskedRowPolicy::Keras if scores_path || dropout > 0.0 => MaskedRows::Zeros,
            MaskedRowPolicy::Keras => MaskedRows::Uniform,
        }
    }
}

/// The options of one call, as Keras' `call()` takes them.
///
/// ```
/// use transformer_encoder::{CallOptions, Mask, MaskedRowPolicy};
/// let pad = [1u8, 1, 0];
/// let opts = CallOptions::new()
///     .padding_mask(Mask::new(&pad[..], &[1, 3]))
///     .masked_rows(MaskedRowPolicy::Zeros);
/// # let _ = opts;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct CallOptions<'a> {
    /// Key padding mask `[B, S]` (in a ragged call: `[T]`, one value per token).
    pub padding_mask: Option<Mask<'a>>,
    /// Attention mask `[B, S, S]` (in a ragged call: each sequence's `[len_i, len_i]` mask end
    /// to end, shape `[sum(len_i^2)]`).
    pub attention_mask: Option<Mask<'a>>,
    /// Training mode with this dropout seed (dropout acts only if the configuration's rate > 0).
    pub training: Option<u64>,
    /// The fully-masked-row policy.
    pub masked_rows: MaskedRowPolicy,
}

impl<'a> CallOptions<'a> {
    /// Inference, no masks, Keras' masked-row behaviour.
    pub fn new() -> Self {
        Self::default()
    }
    /// Set the padding mask `[B, S]`.
    pub fn padding_mask(mut self, m: Mask<'a>) -> Self {
        self.padding_mask = Some(m);
        self
    }
    /// Set the attention mask `[B, S, S]`.
    pub fn attention_mask(mut self, m: Mask<'a>) -> Self {
        self.attention_mask = Some(m);
        self
    }
    /// Training mode: dropout at Keras' three sites, drawn reproducibly from `seed`.
    pub fn training(mut self, seed: u64) -> Self {
        self.training = Some(seed);
        self
    }
    /// Set the fully-masked-row policy.
    pub fn masked_rows(mut self, p: MaskedRowPolicy) -> Self {
        self.masked_rows = p;
        self
    }
}
