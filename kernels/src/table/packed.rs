//! Weight matrices packed once into a tier's panels, in any format.

use super::*;

impl Kernels {
    /// Pack a row-major `[k, n]` float weight matrix (Keras' `[in, out]`) once, into this tier's
    /// panel layout, for [`Kernels::gemm`].
    pub fn pack(&self, w: &[f32], k: usize, n: usize) -> Result<PackedMatrix, KernelError> {
        let want = k.checked_mul(n).ok_or_else(|| KernelError {
            message: format!("weight matrix [{k}, {n}] is too large"),
        })?;
        expect_len("weight matrix", w.len(), want)?;
        let nr = self.f32.nr;
        let panels = n.div_ceil(nr);
        let mut data = Aligned::<f32>::zeroed(panels * k * nr);
        let d = data.as_mut_slice();
        for p in 0..panels {
            let cols = nr.min(n - p * nr);
            for r in 0..k {
                let dst = &mut d[(p * k + r) * nr..][..cols];
                dst.copy_from_slice(&w[r * n + p * nr..][..cols]);
            }
        }
        Ok(PackedMatrix {
            k,
            n,
            nr,
            isa: self.isa,
            data: Panels::F32(data),
        })
    }
}

/// A weight matrix packed once, in the panel layout of one tier, for [`Kernels::gemm_prepared`]:
/// float32 panels ([`Kernels::pack`]) or Keras' int8 ([`Kernels::pack_int8`]). It knows its
/// format; the products dispatch on it.
#[derive(Clone, Debug)]
pub struct PackedMatrix {
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) nr: usize,
    pub(super) isa: Isa,
    pub(super) data: Panels,
}

/// The panels of each format.
#[derive(Clone, Debug)]
pub(super) enum Panels {
    /// `ceil(n / nr)` panels of `k * nr` floats.
    F32(Aligned<f32>),
    /// `ceil(n / nr)` panels of `kg` groups (`k` padded) of `nr` columns x 4 bytes, as `layout`
    /// places them; per column (padded to whole panels) the offset compensation and
    /// `1 / scale`; `scale` itself (`[n]`).
    Int8 {
        panels: Aligned<i8>,
        kg: usize,
        layout: PanelLayout,
        comp: Aligned<i32>,
        inv_scale: Aligned<f32>,
        scale: Vec<f32>,
    },
    /// `ceil(n / nr)` panels of `kp` pairs (`k` padded) of `nr` columns x 2 bf16 values, as
    /// `layout` places them.
    Bf16 {
        panels: Aligned<u16>,
        kp: usize,
        layout: PanelLayout,
    },
}

impl PackedMatrix {
    /// Rows (the input size).
    pub fn k(&self) -> usize {
        self.k
    }
    /// Columns (the output size).
    pub fn n(&self) -> usize {
        self.n
    }
    /// The panel width.
    pub fn panel_width(&self) -> usize {
        self.nr
    }
    /// The tier whose layout this is.
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// How the values are stored.
    pub fn format(&self) -> Precision {
        match self.data {
            Panels::F32(_) => Precision::F32,
            Panels::Int8 { .. } => Precision::Int8,
            Panels::Bf16 { .. } => Precision::Bf16,
        }
    }

    /// The bytes the packed data holds (its heap allocations).
    pub fn bytes(&self) -> usize {
        match &self.data {
            Panels::F32(d) => d.bytes(),
            Panels::Int8 {
                panels,
                comp,
                inv_scale,
                scale,
                ..
            } => panels.bytes() + comp.bytes() + inv_scale.bytes() + 4 * scale.capacity(),
            Panels::Bf16 { panels, .. } => panels.bytes(),
        }
    }

    /// The matrix back in row-major `[k, n]` layout: exactly the values packed for float32
    /// panels; `W_q / s_w` (the values the int8 product stands for) for int8 panels; the bf16
    /// values widened to float32 for bf16 panels.
    ///
    /// ```
    /// use transformer_encoder_kernels::{Isa, Kernels};
    /// let w: Vec<f32> = (0..15).map(|v| v as f32).collect();
    /// let p = Kernels::for_isa(Isa::Portable)?.pack(&w, 3, 5)?;
    /// assert_eq!(p.unpack(), w);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unpack(&self) -> Vec<f32> {
        let (k, n, nr) = (self.k, self.n, self.nr);
        match &self.data {
            Panels::F32(data) => {
                let data = data.as_slice();
                let mut w = vec![0.0f32; k * n];
                for p in 0..n.div_ceil(nr) {
                    let cols = nr.min(n - p * nr);
                    for r in 0..k {
                        w[r * n + p * nr..][..cols]
                            .copy_from_slice(&data[(p * k + r) * nr..][..cols]);
                    }
                }
                w
            }
            Panels::Int8 { scale, .. } => {
                let (q, _) = self.int8_parts().unwrap_or_default();
                q.iter()
                    .enumerate()
                    .map(|(i, &v)| v as f32 / scale[i % n])
                    .collect()
            }
            Panels::Bf16 { panels, kp, layout } => {
                let panels = panels.as_slice();
                let mut w = vec![0.0f32; k * n];
                for r in 0..k {
                    for c in 0..n {
                        let v = panels[layout.offset(c / nr, r, c % nr, nr, *kp, 2)];
                        w[r * n + c] = f32::from_bits((v as u32) << 16);
                    }
                }
                w
            }
        }
    }

    /// Keras' int8 variables back from int8 panels: the kernel row-major `[k, n]` and the
    /// `kernel_scale` `[n]` (`None` for float32 panels).
    pub fn int8_parts(&self) -> Option<(Vec<i8>, Vec<f32>)> {
        let Panels::Int8 {
            panels,
            kg,
            layout,
            scale,
            ..
        } = &self.data
        else {
            return None;
        };
        let (k, n, nr) = (self.k, self.n, self.nr);
        let panels = panels.as_slice();
        let mut q = vec![0i8; k * n];
        for r in 0..k {
            for c in 0..n {
                q[r * n + c] = panels[layout.offset(c / nr, r, c % nr, nr, *kg, 4)];
            }
        }
        Some((q, scale.clone()))
    }
}
