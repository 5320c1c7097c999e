//! Normalisations: layer norm (with or without affine), RMS norm with a learned scale, group norm.
//! Statistics are computed in f32 with a two-pass variance (mean first), as PyTorch does on CPU.

use super::{want_float, want_shape};
use crate::Tensor;
use crate::autograd::Op;
use crate::error::{Error, Result, fmt_shape};
use rayon::prelude::*;

/// Mean and biased variance of a slice (two passes).
fn mean_var(x: &[f32]) -> (f32, f32) {
    let n = x.len() as f32;
    let isa = crate::cpu::simd::isa();
    let mean = crate::cpu::simd::sum(isa, x) / n;
    let mut var = 0.0f32;
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    for &v in chunks.remainder() {
        var += (v - mean) * (v - mean);
    }
    for c in chunks {
        for i in 0..8 {
            acc[i] += (c[i] - mean) * (c[i] - mean);
        }
    }
    (mean, (var + acc.iter().sum::<f32>()) / n)
}

/// Optional per-channel vector of length `n` as f32.
fn channel_vec(op: &'static str, what: &str, t: Option<&Tensor>, n: usize) -> Result<Option<Vec<f32>>> {
    match t {
        None => Ok(None),
        Some(t) => {
            want_float(op, what, t)?;
            want_shape(op, what, t, &[n])?;
            Ok(Some(t.f32_data(op)?.into_owned()))
        }
    }
}

fn check_eps(op: &'static str, eps: f32) -> Result<()> {
    if eps.is_nan() || eps < 0.0 {
        return Err(Error::arg(op, format!("eps must be >= 0, got {eps}")));
    }
    Ok(())
}

/// The normalised width (last dim) of `x`, after checking `eps`.
fn last_dim(op: &'static str, x: &Tensor, eps: f32) -> Result<usize> {
    check_eps(op, eps)?;
    x.dims()
        .last()
        .copied()
        .ok_or_else(|| Error::shape(op, "a 0-d tensor has no last dim"))
}

fn rows_apply(data: &mut [f32], width: usize, f: impl Fn(&mut [f32]) + Sync + Send) {
    if data.len() >= super::PAR_MIN_ELEMS {
        data.par_chunks_mut(width).for_each(f);
    } else {
        data.chunks_mut(width).for_each(f);
    }
}

impl Tensor {
    /// Layer norm over the last dimension: `(x - mean) / sqrt(var + eps) · weight + bias`
    /// (weight and bias optional, each of shape `[last dim]`).
    pub fn layer_norm(&self, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f32) -> Result<Tensor> {
        let out = self.layer_norm_untracked(weight, bias, eps)?;
        Ok({
            let inputs: Vec<&Tensor> = [Some(self), weight, bias].into_iter().flatten().collect();
            out.record(&inputs, || {
                Op::LayerNorm(self.clone(), weight.cloned(), bias.cloned(), eps)
            })
        })
    }

    fn layer_norm_untracked(&self, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f32) -> Result<Tensor> {
        let op = "layer_norm";
        let width = last_dim(op, self, eps)?;
        if !self.device().is_cpu() {
            for (name, t) in [("weight", weight), ("bias", bias)] {
                if let Some(t) = t {
                    super::want_shape(op, name, t, &[width])?;
                }
            }
            return crate::cuda::ops::layer_norm(self, weight, bias, eps);
        }
        let w = channel_vec(op, "weight", weight, width)?;
        let b = channel_vec(op, "bias", bias, width)?;
        let mut data = self.f32_data(op)?.into_owned();
        if width > 0 {
            rows_apply(&mut data, width, |row| {
                let (mean, var) = mean_var(row);
                let rstd = 1.0 / (var + eps).sqrt();
                for (j, v) in row.iter_mut().enumerate() {
                    let mut y = (*v - mean) * rstd;
                    if let Some(w) = &w {
                        y *= w[j];
                    }
                    if let Some(b) = &b {
                        y += b[j];
                    }
                    *v = y;
                }
            });
        }
        Ok(Tensor::from_f32_as(data, self.dims(), self.dtype()))
    }

    /// RMS norm over the last dimension: `x / sqrt(mean(x²) + eps) · scale`, scale of shape `[last dim]`.
    pub fn rms_norm(&self, scale: &Tensor, eps: f32) -> Result<Tensor> {
        let out = self.rms_norm_untracked(scale, eps)?;
        Ok(out.record(&[self, scale], || Op::RmsNorm(self.clone(), scale.clone(), eps)))
    }

    fn rms_norm_untracked(&self, scale: &Tensor, eps: f32) -> Result<Tensor> {
        let op = "rms_norm";
        let width = last_dim(op, self, eps)?;
        if !self.device().is_cpu() {
            super::want_shape(op, "scale", scale, &[width])?;
            return crate::cuda::ops::rms_norm(self, scale, eps);
        }
        let s = channel_vec(op, "scale", Some(scale), width)?.unwrap();
        let mut data = self.f32_data(op)?.into_owned();
        if width > 0 {
            rows_apply(&mut data, width, |row| {
                let ms = row.iter().map(|v| v * v).sum::<f32>() / width as f32;
                let r = 1.0 / (ms + eps).sqrt();
                for (v, &sc) in row.iter_mut().zip(&s) {
                    *v = *v * r * sc;
                }
            });
        }
        Ok(Tensor::from_f32_as(data, self.dims(), self.dtype()))
    }

    /// Group norm of `[B, C, *spatial]`: statistics over each of `groups` channel groups and all
    /// spatial positions; then the per-channel affine `weight`, `bias` (each `[C]`, optional).
    pub fn group_norm(
        &self,
        groups: usize,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor> {
        let out = self.group_norm_untracked(groups, weight, bias, eps)?;
        let inputs: Vec<&Tensor> = [Some(self), weight, bias].into_iter().flatten().collect();
        Ok(out.record(&inputs, || {
            Op::GroupNorm(self.clone(), weight.cloned(), bias.cloned(), groups, eps)
        }))
    }

    fn group_norm_untracked(
        &self,
        groups: usize,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor> {
        let op = "group_norm";
        if self.rank() < 2 {
            return Err(Error::shape(
                op,
                format!("expected [B, C, ...], got {}", fmt_shape(self.dims())),
            ));
        }
        let (b, c) = (self.dims()[0], self.dims()[1]);
        if groups == 0 || c % groups != 0 {
            return Err(Error::arg(
                op,
                format!(
                    "{c} channels of input {} do not split into {groups} groups",
                    fmt_shape(self.dims())
                ),
            ));
        }
        check_eps(op, eps)?;
        if !self.device().is_cpu() {
            for (name, t) in [("weight", weight), ("bias", bias)] {
                if let Some(t) = t {
                    super::want_shape(op, name, t, &[c])?;
                }
            }
            return crate::cuda::ops::group_norm(self, groups, weight, bias, eps);
        }
        let w = channel_vec(op, "weight", weight, c)?;
        let bb = channel_vec(op, "bias", bias, c)?;
        let spatial: usize = self.dims()[2..].iter().product();
        let cg = c / groups;
        let group_len = cg * spatial;
        let mut data = self.f32_data(op)?.into_owned();
        if group_len > 0 && b > 0 {
            let work = |(gi, g): (usize, &mut [f32])| {
                let (mean, var) = mean_var(g);
                let rstd = 1.0 / (var + eps).sqrt();
                let c0 = (gi % groups) * cg;
                for (ci, chan) in g.chunks_mut(spatial).enumerate() {
                    let scale = rstd * w.as_ref().map_or(1.0, |w| w[c0 + ci]);
                    let shift = bb.as_ref().map_or(0.0, |b| b[c0 + ci]);
                    for v in chan {
                        *v = (*v - mean) * scale + shift;
                    }
                }
            };
            data.par_chunks_mut(group_len).enumerate().for_each(work);
        }
        Ok(Tensor::from_f32_as(data, self.dims(), self.dtype()))
    }
}
