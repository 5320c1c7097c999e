//! Exponential moving average of the parameters (NVG-SPEC §4.4: decay 0.9999, one update per optimiser
//! step, stored under `ema_model.nvgformer.*` by the trainer).

use super::{Buffer, CHUNK, PAR_ELEMS, f32_values, lerp};
use crate::error::{Error, Result, fmt_shape};
use crate::{DType, Tensor};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// Decay of the official NVG EMA.
pub const OFFICIAL_EMA_DECAY: f64 = 0.9999;

/// One averaged tensor.
#[derive(Debug, Clone)]
struct Averaged {
    dims: Vec<usize>,
    data: Buffer,
}

/// An exponential moving average of named f32 tensors: `ema.lerp_(p, 1 − decay)` per update, i.e.
/// `ema + (1 − decay)·(p − ema)` in f32 with the weight `1 − decay` computed in f64 and rounded once
/// (PyTorch's `lerp_` with a Python-float weight).
///
/// The average is created as an exact copy of the parameters and afterwards must be updated with the
/// same set of names and shapes. It lives where the parameters of the last update lived (the CPU, or a
/// device: `kernels/cuda/training.cu`). Its state for a checkpoint is just the averaged tensors under the
/// parameter names ([`Ema::state_tensors`]); the caller adds a prefix such as `ema_model.nvgformer.`.
#[derive(Debug, Clone)]
pub struct Ema {
    decay: f64,
    tensors: BTreeMap<String, Averaged>,
}

impl Ema {
    /// An average starting as a copy of `params` (f32 tensors). `decay` must lie in [0, 1].
    pub fn new(decay: f64, params: &BTreeMap<String, Tensor>) -> Result<Ema> {
        Ema::from_tensors(decay, params.iter().map(|(n, t)| (n.clone(), t.clone())))
    }

    /// Rebuilds an average from its saved tensors ([`Ema::state_tensors`], in any order), bit for bit.
    pub fn from_tensors(decay: f64, tensors: impl IntoIterator<Item = (String, Tensor)>) -> Result<Ema> {
        let op = "Ema";
        if !(0.0..=1.0).contains(&decay) {
            return Err(Error::arg(op, format!("decay must be in [0, 1], got {decay}")));
        }
        let mut out = BTreeMap::new();
        for (name, t) in tensors {
            let averaged = Averaged {
                dims: t.dims().to_vec(),
                data: if t.device().is_cpu() {
                    Buffer::Host(f32_values(op, "tensor", &name, &t)?.into_owned())
                } else if t.dtype() == DType::F32 {
                    Buffer::Device(t.clone())
                } else {
                    return Err(Error::dtype(
                        op,
                        format!("an f32 tensor for tensor `{name}`"),
                        t.dtype(),
                    ));
                },
            };
            if out.insert(name.clone(), averaged).is_some() {
                return Err(Error::arg(op, format!("`{name}` given twice")));
            }
        }
        Ok(Ema { decay, tensors: out })
    }

    pub fn decay(&self) -> f64 {
        self.decay
    }

    /// Names of the averaged tensors, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The averaged tensor `name` (a CPU copy), if there is one.
    pub fn get(&self, name: &str) -> Result<Option<Tensor>> {
        self.tensors
            .get(name)
            .map(|a| a.data.to_host_tensor(&a.dims))
            .transpose()
    }

    /// All averaged tensors by name (CPU copies).
    pub fn tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        self.tensors
            .iter()
            .map(|(n, a)| Ok((n.clone(), a.data.to_host_tensor(&a.dims)?)))
            .collect()
    }

    /// The averaged tensors as a checkpoint's named entries (the same as [`Ema::tensors`]).
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self.tensors()?.into_iter().collect())
    }

    /// Moves the average towards `params`: `ema += (p − ema)·(1 − decay)` (lerp). `params` must hold
    /// exactly the averaged names, as f32 tensors of the same shapes; all checks run before anything
    /// changes.
    pub fn update(&mut self, params: &BTreeMap<String, Tensor>) -> Result<()> {
        let op = "Ema::update";
        for (name, a) in &self.tensors {
            let p = params
                .get(name)
                .ok_or_else(|| Error::arg(op, format!("averaged tensor `{name}` has no parameter")))?;
            if p.dims() != a.dims {
                return Err(Error::shape(
                    op,
                    format!(
                        "parameter `{name}` has shape {} but its average has shape {}",
                        fmt_shape(p.dims()),
                        fmt_shape(&a.dims)
                    ),
                ));
            }
            if p.dtype() != DType::F32 {
                return Err(Error::dtype(
                    op,
                    format!("an f32 tensor for parameter `{name}`"),
                    p.dtype(),
                ));
            }
        }
        if let Some(name) = params.keys().find(|n| !self.tensors.contains_key(*n)) {
            return Err(Error::arg(op, format!("parameter `{name}` has no average")));
        }

        let weight = (1.0 - self.decay) as f32;
        let kernel = |e: &mut [f32], p: &[f32]| {
            for (e, &p) in e.iter_mut().zip(p) {
                *e = lerp(*e, p, weight);
            }
        };
        let device = super::common_device(op, params)?;
        if !device.is_cpu() {
            for (name, a) in self.tensors.iter_mut() {
                let e = a.data.on_device(device, &a.dims)?;
                a.data = Buffer::Device(crate::cuda::training::lerp(&e, &params[name.as_str()], weight)?);
            }
            return Ok(());
        }
        let mut jobs: Vec<(&String, &mut Averaged)> = self.tensors.iter_mut().collect();
        jobs.par_iter_mut().try_for_each(|(name, a)| -> Result<()> {
            let p = f32_values(op, "parameter", name, &params[name.as_str()])?;
            let data = a.data.host_mut()?;
            if data.len() >= PAR_ELEMS {
                data.par_chunks_mut(CHUNK)
                    .zip(p.par_chunks(CHUNK))
                    .for_each(|(e, p)| kernel(e, p));
            } else {
                kernel(data, &p);
            }
            Ok(())
        })
    }
}
