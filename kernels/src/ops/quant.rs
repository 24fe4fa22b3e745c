//! Keras' per-token int8 quantization of one row (Keras 3.15 `abs_max_quantize` over the
//! product's input axes), written once over [`Simd`]:
//!
//! `s = 127 / (max |x| + 1e-7)` in float32, `q = clip(round_half_even(x * s), -127, 127)`.
//!
//! The row is stored as bytes (`q + 128` for the VNNI tiers, `q` otherwise), padded with the
//! byte of `q = 0` to the panel's group size, and the row's `1 / s` is returned for the product's
//! epilogue. A row holding NaN or an infinity has no meaningful scale: its `1 / s` is NaN (so its
//! outputs are NaN) and its bytes are those of 0.

use crate::arch::QuantOut;
use crate::simd::Simd;

/// Rows of one block of A in tile order ([`row_offset`]).
pub(crate) const TILE_BLOCK_ROWS: usize = 32;
/// Bytes of one chunk of a row (one tile row): a row is written chunk by chunk.
pub(crate) const CHUNK: usize = 64;

/// Where row `r` of rows of `stride` bytes starts, and the bytes from one of its 64-byte chunks
/// to the next: `(r * stride, 64)` row after row, or in tile order (`tiled`): each block of
/// [`TILE_BLOCK_ROWS`] rows keeps the same bytes as row after row, but chunk `c` of its rows
/// lies together (`32 x 64` bytes: two AMX tiles of 16 rows at a stride of 64 bytes), so a tile
/// load reads 1 KiB in a row instead of 16 lines `stride` apart (measured on the Xeon with
/// AMX: the BERT-base bf16 products 10-16 % faster, int8 9-14 %).
#[inline(always)]
pub(crate) fn row_offset(r: usize, stride: usize, tiled: bool) -> (usize, usize) {
    if tiled {
        let block = r / TILE_BLOCK_ROWS * TILE_BLOCK_ROWS * stride;
        (block + r % TILE_BLOCK_ROWS * CHUNK, TILE_BLOCK_ROWS * CHUNK)
    } else {
        (r * stride, CHUNK)
    }
}

/// Byte `j` of a row whose 64-byte chunks lie `chunk_stride` bytes apart.
#[inline(always)]
fn chunked(j: usize, chunk_stride: usize) -> usize {
    j / CHUNK * chunk_stride + j % CHUNK
}

/// Row `i` of `q`'s destination from the `n` floats at `x`: quantized for int8, or rounded to
/// bfloat16 when `q.bf16` (kept as float32 with `q.wide`).
///
/// # Safety
/// `x` valid for `n` values; row `i` of `q`'s buffers valid (`q.stride >= n` bytes for int8,
/// `>= 2n` for bf16, `>= 4n` wide); S's features enabled.
#[inline(always)]
pub(crate) unsafe fn prepare_row<S: Simd>(x: *const f32, n: usize, q: &QuantOut, i: usize) {
    let (off, cs) = row_offset(q.row0 + i, q.stride, q.tiled);
    // SAFETY: the caller's contract; the row's chunks lie within its block of the buffer.
    unsafe {
        let dst = q.bytes.add(off);
        if q.bf16 && q.wide {
            // Rows wide are never in tile order (only the AMX products read tile order).
            debug_assert_eq!(cs, CHUNK);
            bf16_wide_row::<S>(x, n, dst as *mut f32, q.stride / 4);
        } else if q.bf16 {
            bf16_row::<S>(x, n, dst as *mut u16, q.stride / 2, cs);
        } else {
            q.put(i, quantize_row::<S>(x, n, dst, q.stride, q.offset, cs));
        }
    }
}

/// The `n` floats at `x` rounded to bfloat16 into `width >= n` values at `out`, the rest 0, in
/// 64-byte chunks `chunk_stride` bytes apart (64: one contiguous row).
///
/// # Safety
/// `x` valid for `n` values, `out`'s chunks for `width` values; `width` a multiple of 32 unless
/// `chunk_stride` is 64; S's features enabled.
#[inline(always)]
pub(crate) unsafe fn bf16_row<S: Simd>(
    x: *const f32,
    n: usize,
    out: *mut u16,
    width: usize,
    chunk_stride: usize,
) {
    let l = S::LANES;
    let at = |j: usize| chunked(2 * j, chunk_stride) / 2;
    // SAFETY: every access is below n (floats) or width (values), as the contract requires; a
    // store of at most LANES values starts at a multiple of LANES, which divides a chunk's 32
    // values, so it stays in one chunk.
    unsafe {
        let mut j = 0;
        while j + l <= n {
            S::store_bf16(out.add(at(j)), S::load(x.add(j)), l);
            j += l;
        }
        if j < n {
            S::store_bf16(out.add(at(j)), S::load_partial(x.add(j), n - j), n - j);
        }
        for p in n..width {
            *out.add(at(p)) = 0;
        }
    }
}

/// The `n` floats at `x` rounded to bfloat16 and kept as float32 into `width >= n` values at
/// `out`, the rest 0 (the input rows of the products that widen bf16 panels).
///
/// # Safety
/// `x` valid for `n` values, `out` for `width`; S's features enabled.
#[inline(always)]
pub(crate) unsafe fn bf16_wide_row<S: Simd>(x: *const f32, n: usize, out: *mut f32, width: usize) {
    let l = S::LANES;
    // SAFETY: every access is below n (x) or width (out), as the contract requires.
    unsafe {
        let mut j = 0;
        while j + l <= n {
            S::store(out.add(j), S::round_bf16(S::load(x.add(j))));
            j += l;
        }
        if j < n {
            let v = S::round_bf16(S::load_partial(x.add(j), n - j));
            S::store_partial(out.add(j), n - j, v);
        }
        for p in n..width {
            *out.add(p) = 0.0;
        }
    }
}

/// Quantize `n` floats at `x` into `kp >= n` bytes at `q`, in 64-byte chunks `chunk_stride`
/// bytes apart (64: one contiguous row); returns `s` (NaN for a row with a non-finite value).
///
/// # Safety
/// `x` valid for `n` values, `q`'s chunks for `kp` bytes (`kp` a multiple of 64 unless
/// `chunk_stride` is 64); S's features enabled.
#[inline(always)]
pub(crate) unsafe fn quantize_row<S: Simd>(
    x: *const f32,
    n: usize,
    q: *mut u8,
    kp: usize,
    offset: bool,
    chunk_stride: usize,
) -> f32 {
    let l = S::LANES;
    let at = |j: usize| chunked(j, chunk_stride);
    // Bytes `j..kp` set to `b`, chunk by chunk.
    let fill = |mut j: usize, b: u8| {
        while j < kp {
            let end = (j / CHUNK + 1) * CHUNK;
            let len = end.min(kp) - j;
            // SAFETY: bytes j..j+len lie in one chunk, below kp.
            unsafe { std::ptr::write_bytes(q.add(at(j)), b, len) };
            j += len;
        }
    };
    let zero_byte = if offset { 128u8 } else { 0 };
    // SAFETY: every access is below n (floats) or kp (bytes), as the contract requires; a store
    // of at most LANES bytes starts at a multiple of LANES, which divides 64: one chunk.
    unsafe {
        // The destination is usually not in cache: its lines are requested for writing now,
        // while the first pass reads the row, instead of stalling the stores of the second.
        let mut o = 0;
        while o < kp {
            S::prefetch_write(q.add(at(o)));
            o += 64;
        }
        // Four independent maxima and poison sums over whole groups of four vectors (a single
        // chain would wait on each max's latency), then the rest. The maximum is exact in any
        // order, and the poison sum is 0 exactly when every value is finite.
        let z = S::splat(0.0);
        let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
        let (mut p0, mut p1, mut p2, mut p3) = (z, z, z, z);
        let mut j = 0;
        while j + 4 * l <= n {
            let v0 = S::load(x.add(j));
            let v1 = S::load(x.add(j + l));
            let v2 = S::load(x.add(j + 2 * l));
            let v3 = S::load(x.add(j + 3 * l));
            a0 = S::max(a0, S::abs(v0));
            a1 = S::max(a1, S::abs(v1));
            a2 = S::max(a2, S::abs(v2));
            a3 = S::max(a3, S::abs(v3));
            p0 = S::add(p0, S::sub(v0, v0));
            p1 = S::add(p1, S::sub(v1, v1));
            p2 = S::add(p2, S::sub(v2, v2));
            p3 = S::add(p3, S::sub(v3, v3));
            j += 4 * l;
        }
        let mut amax = S::max(S::max(a0, a1), S::max(a2, a3));
        let mut poison = S::add(S::add(p0, p1), S::add(p2, p3));
        while j < n {
            let k = (n - j).min(l);
            let v = if k == l {
                S::load(x.add(j))
            } else {
                S::load_partial(x.add(j), k)
            };
            amax = S::max(amax, S::abs(v));
            // x - x is NaN exactly for NaN and the infinities.
            poison = S::add(poison, S::sub(v, v));
            j += k;
        }
        let amax = S::reduce_max(amax);
        let finite = S::reduce_sum(poison) == 0.0 && amax.is_finite();
        if !finite {
            fill(0, zero_byte);
            return f32::NAN;
        }
        let s = 127.0f32 / (amax + 1e-7f32);
        let sv = S::splat(s);
        let (lo, hi) = (S::splat(-127.0), S::splat(127.0));
        let off = S::splat(if offset { 128.0 } else { 0.0 });
        let mut j = 0;
        while j < n {
            let k = (n - j).min(l);
            let v = if k == l {
                S::load(x.add(j))
            } else {
                S::load_partial(x.add(j), k)
            };
            let r = S::min(S::max(S::round(S::mul(v, sv)), lo), hi);
            S::store_u8(q.add(at(j)), S::add(r, off), k);
            j += k;
        }
        fill(n, zero_byte);
        s
    }
}
