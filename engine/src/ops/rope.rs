//! Rotary position embedding driven by an arbitrary per-token, multi-axis position table (FLUX's
//! `EmbedND`, which NVG uses with 11 axes: token type, 8 structure bits, row, column).
//!
//! Axis `a` of width `w_a` (even) owns `w_a/2` consecutive rotation pairs with angular frequencies
//! `θ^(−2j/w_a)`, j = 0..w_a/2; pair `p` rotates head dims `(2p, 2p+1)` by `pos[a]·ω_j`:
//! `(x₀, x₁) → (cos·x₀ − sin·x₁, sin·x₀ + cos·x₁)`.

use super::want_float;
use crate::Tensor;
use crate::autograd::Op;
use crate::error::{Error, Result, fmt_shape};
use rayon::prelude::*;

/// Cos and sin tables for `positions` (`[..., N, A]`, float): each `[..., N, Σw/2]`. Angles are
/// computed in f64 and rounded once.
pub fn rope_tables(positions: &Tensor, axes_dims: &[usize], theta: f32) -> Result<(Tensor, Tensor)> {
    let op = "rope_tables";
    want_float(op, "positions", positions)?;
    let r = positions.rank();
    if r < 1 || positions.dims()[r - 1] != axes_dims.len() {
        return Err(Error::shape(
            op,
            format!(
                "positions {} must end in {} axes (one per entry of axes_dims {axes_dims:?})",
                fmt_shape(positions.dims()),
                axes_dims.len()
            ),
        ));
    }
    if let Some(w) = axes_dims.iter().find(|&&w| w % 2 != 0) {
        return Err(Error::arg(
            op,
            format!("axis width {w} is odd; every RoPE axis needs whole pairs"),
        ));
    }
    if theta.is_nan() || theta <= 0.0 {
        return Err(Error::arg(op, format!("theta must be positive, got {theta}")));
    }
    // Frequency and axis of each pair.
    let mut pairs: Vec<(usize, f64)> = Vec::new();
    for (a, &w) in axes_dims.iter().enumerate() {
        for j in 0..w / 2 {
            pairs.push((a, (theta as f64).powf(-((2 * j) as f64) / w as f64)));
        }
    }
    let pos = positions.f32_data(op)?;
    let tokens = positions.numel() / axes_dims.len().max(1);
    let np = pairs.len();
    let mut cos = vec![0.0f32; tokens * np];
    let mut sin = vec![0.0f32; tokens * np];
    for t in 0..tokens {
        for (p, &(a, w)) in pairs.iter().enumerate() {
            let ang = pos[t * axes_dims.len() + a] as f64 * w;
            cos[t * np + p] = ang.cos() as f32;
            sin[t * np + p] = ang.sin() as f32;
        }
    }
    let mut dims = positions.dims()[..r - 1].to_vec();
    dims.push(np);
    Ok((Tensor::from_vec(cos, &dims)?, Tensor::from_vec(sin, &dims)?))
}

impl Tensor {
    /// Rotates pairs of the last dim of `self` (`[B, H, N, D]`) by the tables `cos`, `sin`
    /// (`[B, N, D/2]`, or `[N, D/2]` shared by the batch), broadcast over heads. Returns a packed
    /// `[B, H, N, D]` tensor of the input's dtype.
    pub fn rope(&self, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let out = self.rope_untracked(cos, sin)?;
        Ok(out.record(&[self, cos, sin], || Op::Rope(self.clone(), cos.clone(), sin.clone())))
    }

    fn rope_untracked(&self, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let op = "rope";
        want_float(op, "input", self)?;
        let [b, h, n, d] = self.dims_n::<4>(op)?;
        if d % 2 != 0 {
            return Err(Error::shape(
                op,
                format!("head dim {d} of {} is odd", fmt_shape(self.dims())),
            ));
        }
        let table_ok = |t: &Tensor| t.dims() == [b, n, d / 2] || t.dims() == [n, d / 2];
        if !table_ok(cos) || !table_ok(sin) || cos.dims() != sin.dims() {
            return Err(Error::shape(
                op,
                format!(
                    "tables cos {} / sin {} must be [{b}, {n}, {}] or [{n}, {}] for input {}",
                    fmt_shape(cos.dims()),
                    fmt_shape(sin.dims()),
                    d / 2,
                    d / 2,
                    fmt_shape(self.dims())
                ),
            ));
        }
        if !self.device().is_cpu() {
            return crate::cuda::ops::rope(self, cos, sin);
        }
        let shared = cos.rank() == 2;
        let (c, s) = (cos.f32_data(op)?, sin.f32_data(op)?);
        let mut x = self.f32_data(op)?.into_owned();
        let half = d / 2;
        let rotate = |(row, xr): (usize, &mut [f32])| {
            // row = ((bi·h + hi)·n + ni)
            let ni = row % n;
            let bi = row / (h * n);
            let t = if shared { ni } else { bi * n + ni } * half;
            for p in 0..half {
                let (co, si) = (c[t + p], s[t + p]);
                let (x0, x1) = (xr[2 * p], xr[2 * p + 1]);
                xr[2 * p] = co * x0 - si * x1;
                xr[2 * p + 1] = si * x0 + co * x1;
            }
        };
        if d > 0 {
            if x.len() >= super::PAR_MIN_ELEMS {
                x.par_chunks_mut(d).enumerate().for_each(rotate);
            } else {
                x.chunks_mut(d).enumerate().for_each(rotate);
            }
        }
        Ok(Tensor::from_f32_as(x, &[b, h, n, d], self.dtype()))
    }
}
