//! The bf16 format (Keras' `mixed_bfloat16`): packing float weights into bf16 pairs, and running
//! the bf16 products over the rows prepared for them.

use super::*;
use crate::simd::bf16_bits;

impl Kernels {
    /// Pack a row-major `[k, n]` float weight matrix (Keras' `[in, out]`) once, rounded to
    /// bfloat16 (to nearest, ties to even), for this tier's bf16 products: half the float bytes.
    /// Its products take their input rows rounded to bf16 too ([`QuantRows`] armed for it) and
    /// sum in float32.
    ///
    /// ```
    /// use transformer_encoder_kernels::{Isa, Kernels, quant::Precision};
    /// let w = [1.0f32, 2.0, 3.0, 1.0 + 1.0 / 256.0]; // the last one a tie: rounds to 1.0
    /// let p = Kernels::for_isa(Isa::Portable)?.pack_bf16(&w, 2, 2)?;
    /// assert_eq!(p.format(), Precision::Bf16);
    /// assert_eq!(p.unpack(), vec![1.0, 2.0, 3.0, 1.0]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pack_bf16(&self, w: &[f32], k: usize, n: usize) -> Result<PackedMatrix, KernelError> {
        let want = k.checked_mul(n).ok_or_else(|| KernelError {
            message: format!("bf16 weight matrix [{k}, {n}] is too large"),
        })?;
        expect_len("weight matrix", w.len(), want)?;
        let (nr, layout) = (self.bf16.nr, self.bf16.layout);
        let panels = n.div_ceil(nr);
        let kp = k.next_multiple_of(self.bf16.k_align) / 2;
        let mut data = Aligned::<u16>::zeroed(panels * kp * nr * 2);
        let d = data.as_mut_slice();
        for r in 0..k {
            for (c, &v) in w[r * n..][..n].iter().enumerate() {
                d[layout.offset(c / nr, r, c % nr, nr, kp, 2)] = bf16_bits(v);
            }
        }
        Ok(PackedMatrix {
            k,
            n,
            nr,
            isa: self.isa,
            data: Panels::Bf16 {
                panels: data,
                kp,
                layout,
            },
        })
    }
}
