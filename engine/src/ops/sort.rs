//! Stable argsort and top-k along a dimension. Order is total: NaN ranks above every number (as in
//! PyTorch), and equal values keep their original order, so "ties go to the lower index" in both
//! directions. NVG's cluster split relies on this being deterministic.

use super::split_at_dim;
use crate::Tensor;
use crate::error::{Error, Result, fmt_shape};
use std::cmp::Ordering;

/// Ascending order with NaN last (largest).
fn cmp_nan_last(a: f32, b: f32) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap(),
    }
}

/// Values of `t` as f32 for ordering (i64 converts exactly up to 2^24; larger ids compare as i64).
enum Keys<'a> {
    F(std::borrow::Cow<'a, [f32]>),
    I(std::borrow::Cow<'a, [i64]>),
}

impl Keys<'_> {
    fn cmp(&self, i: usize, j: usize) -> Ordering {
        match self {
            Keys::F(v) => cmp_nan_last(v[i], v[j]),
            Keys::I(v) => v[i].cmp(&v[j]),
        }
    }
}

fn keys<'a>(op: &'static str, t: &'a Tensor) -> Result<Keys<'a>> {
    Ok(if t.dtype().is_float() {
        Keys::F(t.f32_data(op)?)
    } else {
        Keys::I(t.i64_data(op)?)
    })
}

/// Sorted positions (along the middle axis of `[outer, size, inner]`) for one (outer, inner) lane.
fn lane_order(k: &Keys, outer_i: usize, inner_i: usize, size: usize, inner: usize, descending: bool) -> Vec<usize> {
    let at = |r: usize| (outer_i * size + r) * inner + inner_i;
    let mut order: Vec<usize> = (0..size).collect();
    // `sort_by` is stable: equal keys keep ascending index order.
    if descending {
        order.sort_by(|&a, &b| k.cmp(at(b), at(a)));
    } else {
        order.sort_by(|&a, &b| k.cmp(at(a), at(b)));
    }
    order
}

impl Tensor {
    /// Indices (i64) that sort `self` along `dim`; stable.
    pub fn argsort(&self, dim: isize, descending: bool) -> Result<Tensor> {
        let op = "argsort";
        let d = self.layout().dim_index(op, dim)?;
        let (outer, size, inner) = split_at_dim(self.dims(), d);
        let k = keys(op, self)?;
        let mut out = vec![0i64; self.numel()];
        for o in 0..outer {
            for i in 0..inner {
                for (r, &src) in lane_order(&k, o, i, size, inner, descending).iter().enumerate() {
                    out[(o * size + r) * inner + i] = src as i64;
                }
            }
        }
        Tensor::from_vec(out, self.dims())
    }

    /// The `k` largest entries along `dim`, largest first, with their indices (i64). Ties go to the
    /// lower index; NaN counts as the largest value.
    pub fn topk(&self, k: usize, dim: isize) -> Result<(Tensor, Tensor)> {
        let (values, ids) = self.topk_untracked(k, dim)?;
        Ok((values.record_unsupported("topk", &[self]), ids))
    }

    fn topk_untracked(&self, k: usize, dim: isize) -> Result<(Tensor, Tensor)> {
        let op = "topk";
        let d = self.layout().dim_index(op, dim)?;
        let (outer, size, inner) = split_at_dim(self.dims(), d);
        if k > size {
            return Err(Error::index(
                op,
                format!(
                    "k = {k} exceeds dim {d} of shape {} (size {size})",
                    fmt_shape(self.dims())
                ),
            ));
        }
        let keys_ = keys(op, self)?;
        let mut idx = vec![0i64; outer * k * inner];
        for o in 0..outer {
            for i in 0..inner {
                for (r, &src) in lane_order(&keys_, o, i, size, inner, true).iter().take(k).enumerate() {
                    idx[(o * k + r) * inner + i] = src as i64;
                }
            }
        }
        let mut dims = self.dims().to_vec();
        dims[d] = k;
        let indices = Tensor::from_vec(idx, &dims)?;
        let values = self.gather(d as isize, &indices)?;
        Ok((values, indices))
    }
}
