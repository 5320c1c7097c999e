//! Reductions along one dimension (sum, mean, max, min, argmax) and the running sum (cumsum).

use super::split_at_dim;
use crate::autograd::Op;
use crate::cpu::simd;
use crate::error::{Error, Result, fmt_shape};
use crate::{DType, Tensor};
use rayon::prelude::*;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Reduce {
    Sum,
    Max,
    Min,
}

/// Shape after reducing `dim` (kept as size 1 with `keepdim`).
fn reduced_dims(dims: &[usize], dim: usize, keepdim: bool) -> Vec<usize> {
    let mut out = dims.to_vec();
    if keepdim {
        out[dim] = 1;
    } else {
        out.remove(dim);
    }
    out
}

/// Maximum that keeps a NaN from either side (PyTorch's reductions propagate NaN).
#[inline]
fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() {
        a
    } else if b.is_nan() || b > a {
        b
    } else {
        a
    }
}

/// Minimum that keeps a NaN from either side.
#[inline]
fn nan_min(a: f32, b: f32) -> f32 {
    if a.is_nan() {
        a
    } else if b.is_nan() || b < a {
        b
    } else {
        a
    }
}

/// Columns per task when a reduction has one outer row to split: a linear layer's bias gradient sums a
/// `[rows, features]` gradient over its rows, and left whole that sum ran on one core while the others
/// waited (3 % of a generator training step on 2 cores).
const PAR_COLUMNS: usize = 64;

/// Folds `src` into `dst` element by element.
fn fold_into(kind: Reduce, dst: &mut [f32], src: &[f32]) {
    match kind {
        Reduce::Sum => dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s),
        Reduce::Max => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = nan_max(*d, s)),
        Reduce::Min => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = nan_min(*d, s)),
    }
}

/// Reduces `x` viewed as `[outer, size, inner]` along the middle axis. Every output element folds its
/// `size` inputs in order, whichever way the work is split, so results do not depend on the threads.
fn reduce_f32(x: &[f32], outer: usize, size: usize, inner: usize, kind: Reduce) -> Vec<f32> {
    let isa = simd::isa();
    let mut out = vec![0.0f32; outer * inner];
    if out.is_empty() {
        return out;
    }
    // Output columns c0.. of outer row o (dst is that run of the output).
    let columns = |o: usize, c0: usize, dst: &mut [f32]| {
        let block = &x[o * size * inner..(o + 1) * size * inner];
        if inner == 1 {
            dst[0] = match kind {
                Reduce::Sum => simd::sum(isa, block),
                Reduce::Max => block.iter().copied().fold(f32::NEG_INFINITY, nan_max),
                Reduce::Min => block.iter().copied().fold(f32::INFINITY, nan_min),
            };
        } else {
            let n = dst.len();
            dst.copy_from_slice(&block[c0..c0 + n]);
            for r in 1..size {
                fold_into(kind, dst, &block[r * inner + c0..r * inner + c0 + n]);
            }
        }
    };
    let parallel = x.len() >= super::PAR_MIN_ELEMS;
    if parallel && outer > 1 {
        out.par_chunks_mut(inner)
            .enumerate()
            .for_each(|(o, dst)| columns(o, 0, dst));
    } else if parallel && inner >= 2 * PAR_COLUMNS {
        for (o, row) in out.chunks_mut(inner).enumerate() {
            row.par_chunks_mut(PAR_COLUMNS)
                .enumerate()
                .for_each(|(j, dst)| columns(o, j * PAR_COLUMNS, dst));
        }
    } else {
        out.chunks_mut(inner)
            .enumerate()
            .for_each(|(o, dst)| columns(o, 0, dst));
    }
    out
}

impl Tensor {
    fn reduce(&self, op: &'static str, dim: isize, keepdim: bool, kind: Reduce) -> Result<Tensor> {
        let out = self.reduce_untracked(op, dim, keepdim, kind)?;
        Ok(match kind {
            Reduce::Sum => {
                let d = self.layout().dim_index(op, dim)?;
                out.record(&[self], || Op::Sum(self.clone(), d, keepdim))
            }
            _ => out.record_unsupported(op, &[self]),
        })
    }

    fn reduce_untracked(&self, op: &'static str, dim: isize, keepdim: bool, kind: Reduce) -> Result<Tensor> {
        let d = self.layout().dim_index(op, dim)?;
        if !self.device().is_cpu() && kind == Reduce::Sum && self.dims()[d] > 0 {
            if d + 1 == self.rank() {
                return crate::cuda::ops::sum_last(self, keepdim);
            }
            // The device kernel sums over the last dimension: move `dim` there (a packed copy).
            let mut perm: Vec<usize> = (0..self.rank()).filter(|&i| i != d).collect();
            perm.push(d);
            let summed = crate::cuda::ops::sum_last(&self.detach().permute(&perm)?.contiguous()?, false)?;
            return if keepdim { summed.unsqueeze(d) } else { Ok(summed) };
        }
        let (outer, size, inner) = split_at_dim(self.dims(), d);
        if size == 0 && kind != Reduce::Sum {
            return Err(Error::shape(
                op,
                format!("reduction over empty dim {d} of shape {}", fmt_shape(self.dims())),
            ));
        }
        let x = self.f32_data(op)?;
        let out = if size == 0 {
            vec![0.0; outer * inner]
        } else {
            reduce_f32(&x, outer, size, inner, kind)
        };
        Ok(Tensor::from_f32_as(
            out,
            &reduced_dims(self.dims(), d, keepdim),
            self.dtype(),
        ))
    }

    /// Sum along `dim`.
    pub fn sum(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        self.reduce("sum", dim, keepdim, Reduce::Sum)
    }

    /// Mean along `dim`.
    pub fn mean(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        let d = self.layout().dim_index("mean", dim)?;
        let n = self.dims()[d];
        if n == 0 {
            return Err(Error::shape(
                "mean",
                format!("mean over empty dim {d} of shape {}", fmt_shape(self.dims())),
            ));
        }
        self.reduce("mean", dim, keepdim, Reduce::Sum)?
            .mul_scalar(1.0 / n as f32)
    }

    /// Maximum along `dim` (NaN if any element is NaN).
    pub fn max(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        self.reduce("max", dim, keepdim, Reduce::Max)
    }

    /// Minimum along `dim` (NaN if any element is NaN).
    pub fn min(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        self.reduce("min", dim, keepdim, Reduce::Min)
    }

    /// Sum of all elements.
    pub fn sum_all(&self) -> Result<f32> {
        let x = self.f32_data("sum_all")?;
        Ok(simd::sum(simd::isa(), &x))
    }

    /// Index of the maximum along `dim` (i64). Ties go to the lowest index; a NaN counts as larger
    /// than every number (the first NaN wins), as in PyTorch.
    pub fn argmax(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        let d = self.layout().dim_index("argmax", dim)?;
        let (outer, size, inner) = split_at_dim(self.dims(), d);
        if size == 0 {
            return Err(Error::shape(
                "argmax",
                format!("argmax over empty dim {d} of shape {}", fmt_shape(self.dims())),
            ));
        }
        if !self.device().is_cpu() && d + 1 == self.rank() {
            return crate::cuda::ops::argmax_last(self, keepdim);
        }
        let x = self.f32_data("argmax")?;
        let mut out = vec![0i64; outer * inner];
        for o in 0..outer {
            for i in 0..inner {
                let mut best = 0usize;
                let mut bv = x[o * size * inner + i];
                for r in 1..size {
                    let v = x[(o * size + r) * inner + i];
                    if !bv.is_nan() && (v > bv || v.is_nan()) {
                        best = r;
                        bv = v;
                    }
                }
                out[o * inner + i] = best as i64;
            }
        }
        Tensor::from_vec(out, &reduced_dims(self.dims(), d, keepdim))
    }

    /// Running sum along `dim` (same shape; float tensors accumulate in f32, i64 in i64).
    pub fn cumsum(&self, dim: isize) -> Result<Tensor> {
        let out = self.cumsum_untracked(dim)?;
        Ok(out.record_unsupported("cumsum", &[self]))
    }

    fn cumsum_untracked(&self, dim: isize) -> Result<Tensor> {
        let d = self.layout().dim_index("cumsum", dim)?;
        let (outer, size, inner) = split_at_dim(self.dims(), d);
        if self.dtype() == DType::I64 {
            let mut x = self.i64_data("cumsum")?.into_owned();
            for o in 0..outer {
                for r in 1..size {
                    for i in 0..inner {
                        let prev = x[(o * size + r - 1) * inner + i];
                        x[(o * size + r) * inner + i] = x[(o * size + r) * inner + i].wrapping_add(prev);
                    }
                }
            }
            return Tensor::from_vec(x, self.dims());
        }
        let mut x = self.f32_data("cumsum")?.into_owned();
        for o in 0..outer {
            for r in 1..size {
                for i in 0..inner {
                    let prev = x[(o * size + r - 1) * inner + i];
                    x[(o * size + r) * inner + i] += prev;
                }
            }
        }
        Ok(Tensor::from_f32_as(x, self.dims(), self.dtype()))
    }
}
