//! Global-norm gradient clipping, as `torch.nn.utils.clip_grad_norm_` with norm type 2.

use super::{CHUNK, PAR_ELEMS, f32_tensor, f32_values};
use crate::Tensor;
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// The sum of squares of `x` in f64: partial sums over consecutive chunks of `CHUNK` elements, then the
/// partials added in order. The grouping depends only on the length, so the result does not depend on
/// the thread count.
fn sum_squares(x: &[f32]) -> f64 {
    let chunk = |c: &[f32]| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
    if x.len() >= PAR_ELEMS {
        let partials: Vec<f64> = x.par_chunks(CHUNK).map(chunk).collect();
        partials.iter().sum()
    } else {
        x.chunks(CHUNK).map(chunk).sum()
    }
}

/// The global 2-norm of all gradients, `sqrt(Σ g²)` over every element of every tensor, rounded to f32.
///
/// The squares are accumulated in f64 (PyTorch takes an f32 norm per tensor and then the norm of those),
/// so the result is the f32 rounding of an almost exact value, whatever the number and size of the
/// tensors; it may differ from PyTorch's in the last bit or two. Tensors are summed in name order.
///
/// On a device each tensor's sum of squares is an f32 device sum (read back as one number per tensor).
pub fn grad_norm(grads: &BTreeMap<String, Tensor>) -> Result<f32> {
    let mut total = 0.0f64;
    for (name, g) in grads {
        total += if g.device().is_cpu() {
            sum_squares(&f32_values("grad_norm", "gradient", name, g)?)
        } else if g.numel() == 0 {
            0.0
        } else {
            g.sqr()?.reshape(&[g.numel()])?.sum(0, false)?.to_scalar()? as f64
        };
    }
    Ok(total.sqrt() as f32)
}

/// Scales all gradients together so that their global 2-norm is at most `max_norm`, and returns the norm
/// before clipping (see [`grad_norm`]), like `torch.nn.utils.clip_grad_norm_(params, max_norm)`:
///
/// `coef = max_norm / (total + 1e-6)`, clamped to at most 1, and every gradient is multiplied by it. The
/// division is evaluated as PyTorch evaluates `float / tensor`: `(1 / (total + 1e-6)) · max_norm` in f32.
/// When the clamped coefficient is exactly 1 the gradients are left as they are (PyTorch multiplies them
/// by 1.0, which changes no value).
///
/// A non-finite norm is not an error (PyTorch's default `error_if_nonfinite=False`): an infinite norm
/// gives a coefficient of 0 and a NaN norm a NaN coefficient, which is applied. The caller decides what to
/// do with such a step from the returned norm.
pub fn clip_grad_norm(grads: &mut BTreeMap<String, Tensor>, max_norm: f32) -> Result<f32> {
    let op = "clip_grad_norm";
    if !(max_norm.is_finite() && max_norm >= 0.0) {
        return Err(Error::arg(
            op,
            format!("max_norm must be finite and >= 0, got {max_norm}"),
        ));
    }
    let total = grad_norm(grads)?;
    let coef = (1.0f32 / (total + 1e-6f32)) * max_norm;
    // A clamp that keeps NaN, as torch.clamp does.
    let coef = if coef > 1.0 { 1.0 } else { coef };
    if coef == 1.0 {
        return Ok(total);
    }
    let scale = |x: &mut [f32]| x.iter_mut().for_each(|v| *v *= coef);
    for (name, g) in grads.iter_mut() {
        if !g.device().is_cpu() {
            *g = g.mul_scalar(coef)?;
            continue;
        }
        let mut data = f32_values(op, "gradient", name, g)?.into_owned();
        if data.len() >= PAR_ELEMS {
            data.par_chunks_mut(CHUNK).for_each(scale);
        } else {
            scale(&mut data);
        }
        *g = f32_tensor(data, g.dims());
    }
    Ok(total)
}
