//! How a product is split between threads, and running the split.

use super::product::Call;
use super::*;

impl Kernels {
    /// How to split a product of `m` rows, `k` inner steps and `n` columns (panels of the
    /// kernel's `nr`) between threads (`row_bytes`: the bytes of one row of A, `b_bytes`: the
    /// packed weights').
    ///
    /// * By row blocks, when A is tall (many rows: a ragged batch, a large batch) and the weights
    ///   fit in L2 (each block streams them all), or A is taller than B is wide on several
    ///   threads: blocks of rows whose A and output stay in L2, each thread taking the blocks
    ///   from its seat in the team onwards (see `run_plan`); each block streams every weight
    ///   panel past its rows and is finished at once, while its output is in cache.
    /// * A on tiles longer than L2 (at most `LONG_ROWS` rows: a long passage): by column
    ///   panels, one part per thread, the tiles taking the rows in chunks that stay in L2.
    /// * A few rows (at most `FEW_ROWS`, a short query) on several threads, weights in L2: one
    ///   block of rows per thread, finished by that thread.
    /// * Else by column panels (each part reads only its share of the weights and all of A), a
    ///   few parts per thread to even out uneven costs, or one part per thread for a few rows
    ///   (a short query's product is a few microseconds: each part's start and end cost more
    ///   than evening out gains; measured on the Xeon with AMX, pairs of calls alternated in one
    ///   process, the 6-layer MiniLM query at 2 threads: int8 5.8 %, bf16 6.6 %, float32 1.8 %
    ///   faster than three parts per thread); the row-wise finish then runs over all rows, split
    ///   between threads.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn plan_product(
        &self,
        m: usize,
        k: usize,
        n: usize,
        kernel: &ProductKernel,
        row_bytes: usize,
        b_bytes: usize,
        tall_rows: usize,
        par: Par,
    ) -> Plan {
        let (mr, nr) = (kernel.mr, kernel.nr);
        let panels = n.div_ceil(nr);
        let work = m.saturating_mul(k).saturating_mul(n);
        let threads = match par {
            Par::Threads(t) if work >= PAR_MIN_FMAS => t.max(1),
            _ => 1,
        };
        // Measured on the Xeon: int8 MiniLM weights (0.6 MB) over 4,352 rows twice as fast in
        // blocks on one thread; float32 BERT-base weights (7 MB) over 1,024 rows slower (62-69
        // ms against 67-71 ms for the layer at batch 8, interleaved runs).
        // On several threads, weights that fit in L2 are cheap to stream from each core's own
        // copy: blocks of rows then also finish on the thread that computed them (no second
        // pass over all rows, no wait between). Measured on the Xeon (AMX hidden), int8 MiniLM
        // layer at seq 128 on 2 threads, builds alternated 4 rounds: 0.84-1.01 ms by column
        // panels, 0.68-0.75 by row blocks; BERT-base's int8 QKV and FFN weights (1.8-2.4 MB,
        // streamed from L3) were slower so. (L2 as cpuid reports it, at most `L2_BYTES`: a Zen
        // 3's is 512 KiB.)
        let l2 = crate::blocks::cache_sizes().map_or(L2_BYTES, |(_, l2)| l2.min(L2_BYTES));
        let fits = threads > 1 && b_bytes <= l2;
        let tall = (m >= tall_rows || fits) && b_bytes <= 4 * L2_BYTES;
        if threads > 1 && m <= FEW_ROWS && m >= threads * mr / 2 && b_bytes <= L2_BYTES {
            // Rows in tile order are split at whole blocks of the tile, or at its halves (one
            // A tile) when each thread's share fits in one.
            let per = m.div_ceil(threads);
            let mb = match kernel.a_tiled {
                true if per <= mr / 2 => mr / 2,
                true => per.next_multiple_of(mr),
                false => per,
            };
            return Plan {
                m,
                panels,
                block: Some(mb),
                parts: threads.min(m.div_ceil(mb)),
                finish_parts: 1,
            };
        }
        if kernel.a_tiled && m <= LONG_ROWS && m.saturating_mul(row_bytes) > L2_BYTES {
            // A longer than L2 on tiles (a long passage): one part of panels per thread, its
            // rows in chunks that stay in L2 (`ops::amx`), so each thread reads A from memory
            // once. Measured on the Xeon with AMX, 512 rows, alternated runs: FFN-out (K =
            // 3,072) bf16 on 2 threads 1,514 -> 1,966 GFLOP/s and 1,388 -> 1,915 (against three
            // parts of panels per thread, each reading all of A), int8 on one thread 1,573 ->
            // 1,980 GOP/s (against 64-row blocks, each streaming all weights).
            return Plan {
                m,
                panels,
                block: None,
                parts: threads.min(panels),
                finish_parts: par.row_parts(m * n, m),
            };
        }
        if tall || (threads > 1 && m >= TALL_SPLIT_ROWS && m > n) {
            // A block of A in a quarter of L2 and its output in half of it, but at least 128
            // rows (each block streams the weights once more: Xeon with AMX hidden, BERT-base
            // seq 512 on 2 threads, builds alternated, int8 11.1-11.3 ms with FFN blocks of 80
            // and 40 rows, 10.5-10.8 with 128; float32 31.9-32.6 against 30.8-31.5), whole
            // tiles of rows, and at least two blocks per thread.
            let fit = (L2_BYTES / 4 / row_bytes.max(1))
                .min(L2_BYTES / 2 / (4 * n).max(1))
                .max(128);
            let per_thread = m.div_ceil(2 * threads).div_ceil(mr) * mr;
            let mb = (fit.clamp(2 * mr, 512) / mr * mr).min(per_thread).max(mr);
            let blocks = m.div_ceil(mb);
            Plan {
                m,
                panels,
                block: Some(mb),
                parts: threads.min(blocks),
                finish_parts: 1,
            }
        } else {
            Plan {
                m,
                panels,
                block: None,
                parts: if threads == 1 {
                    1
                } else if m <= FEW_ROWS {
                    threads.min(panels)
                } else {
                    (threads * 3).min(panels)
                },
                finish_parts: par.row_parts(m * n, m),
            }
        }
    }

    /// Run `call` over the parts of `plan`: each part's rows `r0..r1` and panels `p0..p1`
    /// of the product (all `m` rows validated by the caller: the operands hold them,
    /// `steps >= 1`), its output at `c`, then `finish` on finished rows (see
    /// [`run_plan`](Kernels::run_plan)).
    pub(super) fn run_packed(
        &self,
        call: &Call<'_>,
        c: COut,
        plan: Plan,
        finish: Option<&(dyn Fn(usize, usize, usize) + Sync)>,
    ) {
        let (f, n, lda, tiled) = (
            call.kernel.run,
            call.args.n,
            call.args.lda,
            call.kernel.a_tiled,
        );
        let ptrs = Shared((call.a, call.packed, call.args, c));
        let run = |part: usize, r0: usize, r1: usize, p0: usize, p1: usize| {
            let (a, packed, args, c) = ptrs.get();
            // SAFETY: the table's tier is available (tables are only handed out for available
            // tiers) and `call.kernel` is one of its products; the operands were checked by the
            // caller for all m rows; rows r0..r1 and panels p0..p1 are in range (row r0 found
            // where A's layout keeps it: in tile order the plan starts a part at a block, or
            // at a half block for at most half a block of rows), the output rows at `c.at`
            // have n columns, and parts write disjoint rows or columns.
            unsafe {
                let cp = c.at(part, r0, n);
                let a0 = a.add(crate::ops::quant::row_offset(r0, lda, tiled).0);
                f(a0, packed, cp, &args.part(r0, r1, p0, p1))
            };
        };
        self.run_plan(plan, run, finish);
    }

    /// Run a planned product: `f(part, r0, r1, p0, p1)` on each part, then
    /// `finish(part, r0, r1)` on finished rows (the row-wise rest of the epilogue). With row
    /// blocks, `part` is the thread's part (a part runs on one thread at a time); with column
    /// panels every `finish` call has part 0. Every output element is computed the same way
    /// whatever the split.
    pub(super) fn run_plan(
        &self,
        plan: Plan,
        f: impl Fn(usize, usize, usize, usize, usize) + Sync,
        finish: Option<&(dyn Fn(usize, usize, usize) + Sync)>,
    ) {
        let (m, panels) = (plan.m, plan.panels);
        match plan.block {
            Some(mb) => {
                let blocks = m.div_ceil(mb);
                let block = |part: usize, u: usize| {
                    let (r0, r1) = (u * mb, ((u + 1) * mb).min(m));
                    f(part, r0, r1, 0, panels);
                    if let Some(fin) = finish {
                        fin(part, r0, r1);
                    }
                };
                if blocks <= 64 {
                    // Up to 64 blocks, each thread starts at the blocks of its seat in the
                    // team and goes on round them: a thread's rows stay on its core from one
                    // product to the next (a short query's block per thread, most of all),
                    // and a thread that comes late still finds work or none.
                    let taken = AtomicU64::new(0);
                    let parts = plan.parts.max(1);
                    let run = |part: usize| {
                        let start = crate::team::seat() % parts * blocks / parts;
                        for j in 0..blocks {
                            let u = (start + j) % blocks;
                            let bit = 1u64 << u;
                            if taken.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
                                block(part, u);
                            }
                        }
                    };
                    crate::team::for_parts(plan.parts, &run);
                } else {
                    let next = AtomicUsize::new(0);
                    let run = |part: usize| {
                        loop {
                            let u = next.fetch_add(1, Ordering::Relaxed);
                            if u >= blocks {
                                break;
                            }
                            block(part, u);
                        }
                    };
                    crate::team::for_parts(plan.parts, &run);
                }
            }
            None => {
                let parts = plan.parts;
                let run = |part: usize| {
                    let (p0, p1) = split(panels, parts, part);
                    f(part, 0, m, p0, p1);
                };
                crate::team::for_parts(parts, &run);
                if let Some(fin) = finish {
                    let fp = plan.finish_parts;
                    let run = |part: usize| {
                        let (r0, r1) = split(m, fp, part);
                        fin(0, r0, r1);
                    };
                    crate::team::for_parts(fp, &run);
                }
            }
        }
    }
}

/// The output rows of a product's parts: one `[m, n]` buffer (row `r` at `r * n`), or a block
/// buffer per part (`per_part` floats apart; a block's first row at its start).
#[derive(Clone, Copy)]
pub(super) struct COut {
    pub(super) base: *mut f32,
    pub(super) per_part: usize,
    pub(super) blocked: bool,
}

impl COut {
    /// Where part `part` writes row `r0` (the first row of its current rows).
    ///
    /// # Safety
    /// The row is within the buffer the plan sized.
    #[inline]
    pub(super) unsafe fn at(&self, part: usize, r0: usize, n: usize) -> *mut f32 {
        // SAFETY: the caller's contract.
        unsafe {
            if self.blocked {
                self.base.add(part * self.per_part)
            } else {
                self.base.add(r0 * n)
            }
        }
    }
}

/// Scratch space for [`Kernels::gemm_quantized`]: the float32 output blocks of its threads,
/// grown on first use and then reused (see that method for an example).
#[derive(Debug, Default)]
pub struct ProductScratch {
    pub(super) buf: Vec<f32>,
}

impl ProductScratch {
    /// Empty scratch space.
    pub fn new() -> ProductScratch {
        ProductScratch::default()
    }
}

/// A product's split between threads ([`Kernels::plan_product`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct Plan {
    pub(super) m: usize,
    pub(super) panels: usize,
    /// Rows per block when split by row blocks; `None`: by column panels.
    pub(super) block: Option<usize>,
    pub(super) parts: usize,
    /// Parts of the row-wise finish after a split by column panels.
    pub(super) finish_parts: usize,
}

impl Plan {
    /// Rows of output one part holds at a time: a block, or every row.
    pub(super) fn part_rows(&self) -> usize {
        self.block.unwrap_or(self.m)
    }

    /// Output buffers the parts need when each writes its own: one per part for row blocks,
    /// one shared (disjoint columns) for column panels.
    pub(super) fn buffers(&self) -> usize {
        if self.block.is_some() { self.parts } else { 1 }
    }
}

/// From this many rows a product runs by row blocks whatever the thread count (A and the output
/// no longer fit in L2 otherwise). In int8 the output is larger than A fourfold and the weights
/// are a quarter of float32's, so blocks pay off sooner (measured on the Xeon, interleaved runs of
/// the embedding workloads: 256 rows against 1,024, the corpus in int8 105 / 101 / 110 ms against
/// 116 / 110 / 117, 32 queries 7.2 / 6.5 / 6.6 against 7.4 / 7.1 / 7.6; in float32 256 was
/// slower, 364-407 against 345-382).
pub(super) const TALL_ROWS_F32: usize = 1024;
pub(super) const TALL_ROWS_INT8: usize = 256;

/// The L2 size the row blocks are sized for (per core; 1-2 MiB on the CPUs of the field).
pub(crate) const L2_BYTES: usize = 1 << 20;
/// From this many rows on several threads, a product whose A is taller than its weights are
/// wide runs by row blocks.
const TALL_SPLIT_ROWS: usize = 384;

/// Up to this many rows (a long passage at batch 1), products on tiles whose A is larger than L2
/// are split by panels, one part per thread (at 1,024 rows that was slower, 800 against 1,100
/// GFLOP/s for bf16 on 2 threads: the plans above stay).
const LONG_ROWS: usize = 512;

/// Up to this many rows (a short query, a short ragged chunk) a product on several threads
/// runs as one block of rows per thread.
pub(super) const FEW_ROWS: usize = 64;
