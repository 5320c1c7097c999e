//! Drawing one category per row of logits: temperature, top-k and top-p (nucleus) filtering and one
//! multinomial draw from a given uniform (the official NVG `sample`). The uniforms come from the
//! counter-based RNG (`crate::rng`), so a draw is a pure function of the logits and the stream.
//!
//! The CPU code here is the reference; the device kernel (`kernels/cuda/sample.cu`) follows it step by
//! step. Probabilities are summed in f64. The device sums blocks of them in a different order, so the
//! two can differ only when a uniform lands within rounding distance (~1e-15 relative) of a
//! cumulative boundary.

use crate::Tensor;
use crate::error::{Error, Result, fmt_shape};
use rayon::prelude::*;

/// How a category is drawn from a row of logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CategoricalSampling {
    /// Logits are divided by `max(temperature, 1e-5)`.
    pub temperature: f32,
    /// Keep the k most likely categories (ties with the k-th survive); 0 = all; 1 = greedy (argmax,
    /// the uniform is not used).
    pub top_k: usize,
    /// Keep the smallest prefix of the categories, most likely first, whose probability exceeds p (at
    /// least one); 1 = all.
    pub top_p: f32,
}

impl CategoricalSampling {
    /// Checks the parameters (the error names `op`).
    pub fn validate(&self, op: &'static str) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::arg(
                op,
                format!("temperature must be finite and >= 0, got {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::arg(op, format!("top_p must be in (0, 1], got {}", self.top_p)));
        }
        Ok(())
    }

    pub(crate) fn greedy(&self) -> bool {
        self.top_k == 1
    }
}

/// Index of the largest value (the first one on ties; a NaN counts as largest).
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate().skip(1) {
        let b = row[best];
        if !b.is_nan() && (v > b || v.is_nan()) {
            best = i;
        }
    }
    best
}

/// Descending order, NaN first, ties in index order: the order the kernel's bitonic sort produces.
pub(crate) fn descending_order(l: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..l.len()).collect();
    order.sort_by(|&a, &b| {
        l[b].partial_cmp(&l[a])
            .unwrap_or_else(|| l[b].is_nan().cmp(&l[a].is_nan()))
    });
    order
}

/// One category for a row of logits; `u` ∈ [0, 1) is the row's uniform draw (unused when greedy).
pub fn sample_row(row: &[f32], s: CategoricalSampling, u: f32) -> usize {
    if s.greedy() {
        return argmax(row);
    }
    let temperature = s.temperature.max(1e-5);
    let mut l: Vec<f32> = row.iter().map(|&x| x / temperature).collect();
    let order = descending_order(&l);
    if s.top_k > 0 && s.top_k < l.len() {
        // Keep logits >= the k-th largest (ties with it survive, as in the official filter).
        let kth = l[order[s.top_k - 1]];
        for v in l.iter_mut() {
            if *v < kth {
                *v = f32::NEG_INFINITY;
            }
        }
    }
    if s.top_p < 1.0 {
        let m = l[order[0]];
        let exps: Vec<f64> = order.iter().map(|&i| ((l[i] - m) as f64).exp()).collect();
        let z: f64 = exps.iter().sum();
        // Drop a category when the probability mass before it already exceeds p (the crossing one
        // stays).
        let mut cum = 0.0;
        for (rank, &i) in order.iter().enumerate() {
            if rank > 0 && cum > s.top_p as f64 {
                l[i] = f32::NEG_INFINITY;
            }
            cum += exps[rank] / z;
        }
    }
    let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let probs: Vec<f64> = l.iter().map(|&x| ((x - m) as f64).exp()).collect();
    let z: f64 = probs.iter().sum();
    let target = u as f64 * z;
    let mut acc = 0.0;
    let mut last = None;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            acc += p;
            last = Some(i);
            if acc > target {
                return i;
            }
        }
    }
    last.unwrap_or(order[0])
}

impl Tensor {
    /// One category (i64) per row of the logits `self` `[.., V]`, drawn with `sampling` from the
    /// uniforms `uniforms` (f32 in [0, 1), shape `self.dims()[..-1]`; unused when greedy). The result
    /// has shape `self.dims()[..-1]` and lives on `self`'s device.
    pub fn sample_categorical(&self, sampling: CategoricalSampling, uniforms: &Tensor) -> Result<Tensor> {
        let op = "sample_categorical";
        sampling.validate(op)?;
        super::want_float(op, "logits", self)?;
        super::want_float(op, "uniforms", uniforms)?;
        let dims = self.dims();
        let Some((&vocab, rows_dims)) = dims.split_last() else {
            return Err(Error::shape(op, "logits must have at least one dimension".to_string()));
        };
        if vocab == 0 {
            return Err(Error::shape(
                op,
                format!("logits of shape {} have no categories", fmt_shape(dims)),
            ));
        }
        super::want_shape(op, "uniforms", uniforms, rows_dims)?;
        super::same_device(op, self, uniforms)?;
        if !self.device().is_cpu() {
            if sampling.greedy() {
                return self.argmax(-1, false);
            }
            return crate::cuda::sample::sample_categorical(self, sampling, uniforms);
        }
        let logits = self.f32_data(op)?;
        let u = uniforms.f32_data(op)?;
        let ids: Vec<i64> = logits
            .par_chunks(vocab)
            .zip(u.par_iter())
            .map(|(row, &u)| sample_row(row, sampling, u) as i64)
            .collect();
        Tensor::from_vec(ids, rows_dims)
    }
}
