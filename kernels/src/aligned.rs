//! Buffers aligned to cache lines: the packed weight panels and the quantized rows are read in
//! whole vectors (64 bytes) and tiles (rows of 64 bytes); a buffer on a 64-byte boundary keeps
//! every such read inside one cache line instead of straddling two.

use std::marker::PhantomData;

/// One cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Plain values whose all-zero bit pattern is valid and that have no padding or invalid bit
/// patterns, so a line of bytes can be viewed as them.
///
/// # Safety
/// Implementors must be such types, with alignment at most 64.
pub(crate) unsafe trait Plain: Copy + 'static {}
// Safety: integers and floats: every bit pattern is a value, alignment <= 8.
unsafe impl Plain for f32 {}
// Safety: as above.
unsafe impl Plain for i32 {}
// Safety: as above.
unsafe impl Plain for i8 {}
// Safety: as above.
unsafe impl Plain for u8 {}
// Safety: as above.
unsafe impl Plain for u16 {}

/// A fixed-length buffer of `T` starting on a 64-byte boundary.
#[derive(Clone)]
pub(crate) struct Aligned<T: Plain> {
    lines: Vec<Line>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Plain> std::fmt::Debug for Aligned<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aligned({} x {})", self.len, std::any::type_name::<T>())
    }
}

impl<T: Plain> Default for Aligned<T> {
    fn default() -> Self {
        Aligned::new()
    }
}

impl<T: Plain> Aligned<T> {
    /// Empty (no allocation).
    pub(crate) const fn new() -> Aligned<T> {
        Aligned {
            lines: Vec::new(),
            len: 0,
            _t: PhantomData,
        }
    }

    /// `len` zeros.
    pub(crate) fn zeroed(len: usize) -> Aligned<T> {
        let bytes = len * std::mem::size_of::<T>();
        Aligned {
            lines: vec![Line([0; 64]); bytes.div_ceil(64)],
            len,
            _t: PhantomData,
        }
    }

    /// Grow to at least `len` values (new ones zero; existing ones kept).
    pub(crate) fn grow(&mut self, len: usize) {
        if len > self.len {
            let bytes = len * std::mem::size_of::<T>();
            self.lines.resize(bytes.div_ceil(64), Line([0; 64]));
            self.len = len;
        }
    }

    /// Heap bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.lines.capacity() * 64
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        // SAFETY: the lines hold at least len * size_of::<T>() initialised bytes, aligned to 64
        // (>= align_of::<T>()), and every bit pattern is a T (`Plain`).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const T, self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`, with unique access through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut T, self.len) }
    }

    pub(crate) fn as_ptr(&self) -> *const T {
        self.lines.as_ptr() as *const T
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut T {
        self.lines.as_mut_ptr() as *mut T
    }
}
