//! Softmax and log-softmax along one dimension (max-shifted, f32).

use super::split_at_dim;
use crate::Tensor;
use crate::autograd::Op;
use crate::cpu::simd::{self, Isa};
use crate::error::Result;
use rayon::prelude::*;

/// Softmax (or log-softmax) of one contiguous row, in place.
pub(crate) fn softmax_row(isa: Isa, row: &mut [f32], log: bool) {
    // The shift ignores NaNs; a NaN entry still reaches the sum below, so the row becomes NaN as in
    // PyTorch.
    let m = simd::max(isa, row);
    if m == f32::NEG_INFINITY {
        // Every entry is -inf: softmax is undefined; give NaN like PyTorch.
        row.fill(f32::NAN);
        return;
    }
    if log {
        let mut tmp = row.to_vec();
        let lse = m + simd::exp_shift_sum(isa, &mut tmp, m).ln();
        for v in row.iter_mut() {
            *v -= lse;
        }
    } else {
        let inv = 1.0 / simd::exp_shift_sum(isa, row, m);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

fn softmax_impl(x: &Tensor, op: &'static str, dim: isize, log: bool) -> Result<Tensor> {
    let d = x.layout().dim_index(op, dim)?;
    if !x.device().is_cpu() && x.dims()[d] > 0 {
        if d + 1 == x.rank() {
            return crate::cuda::ops::softmax_last(x, log);
        }
        // The device kernel normalises over the last dimension: swap `dim` there and back (a view).
        let last = x.rank() as isize - 1;
        let y = crate::cuda::ops::softmax_last(&x.detach().transpose(d as isize, last)?, log)?;
        return y.transpose(d as isize, last);
    }
    let (outer, size, inner) = split_at_dim(x.dims(), d);
    let isa = simd::isa();
    let mut data = x.f32_data(op)?.into_owned();
    if size == 0 {
        return Ok(Tensor::from_f32_as(data, x.dims(), x.dtype()));
    }
    if inner == 1 {
        let work = |row: &mut [f32]| softmax_row(isa, row, log);
        if data.len() >= super::PAR_MIN_ELEMS {
            data.par_chunks_mut(size).for_each(work);
        } else {
            data.chunks_mut(size).for_each(work);
        }
    } else {
        // Strided rows: gather each into a buffer, normalise, scatter back.
        let mut buf = vec![0.0f32; size];
        for o in 0..outer {
            for i in 0..inner {
                for r in 0..size {
                    buf[r] = data[(o * size + r) * inner + i];
                }
                softmax_row(isa, &mut buf, log);
                for r in 0..size {
                    data[(o * size + r) * inner + i] = buf[r];
                }
            }
        }
    }
    Ok(Tensor::from_f32_as(data, x.dims(), x.dtype()))
}

impl Tensor {
    /// `exp(x - max) / Σ exp(x - max)` along `dim`.
    pub fn softmax(&self, dim: isize) -> Result<Tensor> {
        let d = self.layout().dim_index("softmax", dim)?;
        let out = softmax_impl(self, "softmax", dim, false)?;
        Ok(out.record_with_output(&[self], |y| Op::Softmax(self.clone(), y, d)))
    }

    /// `x - max - log Σ exp(x - max)` along `dim`.
    pub fn log_softmax(&self, dim: isize) -> Result<Tensor> {
        let d = self.layout().dim_index("log_softmax", dim)?;
        let out = softmax_impl(self, "log_softmax", dim, true)?;
        Ok(out.record_with_output(&[self], |y| Op::LogSoftmax(self.clone(), y, d)))
    }
}
