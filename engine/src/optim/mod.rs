//! Optimisers for training: AdamW, global-norm gradient clipping, the learning-rate schedule and EMA
//! (NVG-SPEC §4.4).
//!
//! Parameters, gradients and optimiser state are named f32 tensors in a `BTreeMap<String, Tensor>`, on the
//! CPU or all on one device. Tensors are immutable values, so an update builds new tensors and replaces
//! the map entries; the optimisers keep their own state (AdamW moments, EMA weights) as [`Buffer`]s —
//! plain vectors updated in place on the CPU, tensors replaced at each update on a device (the kernels
//! of `kernels/cuda/training.cu`) — and hand it out as named CPU tensors for checkpoints. State restored
//! from a checkpoint moves to the parameters' device at the first update.
//!
//! Every routine validates all its inputs (names, dtypes, shapes) before it changes anything, so an error
//! leaves parameters, gradients and state as they were. Nothing is skipped silently: a parameter without a
//! gradient, a gradient without a parameter or state that does not match the parameters is an error that
//! names the tensor.
//!
//! Element-wise updates are split across rayon threads for large tensors; each element's arithmetic is the
//! same whatever the split, and the one reduction (the gradient norm) sums fixed-size chunks in a fixed
//! order, so every result is independent of the thread count.
//!
//! | file | what |
//! |---|---|
//! | `adamw.rs` | [`AdamW`] (PyTorch's `torch.optim.AdamW` update, weight decay on tensors with ndim ≥ 2) |
//! | `clip.rs` | [`clip_grad_norm`] (`torch.nn.utils.clip_grad_norm_`, norm type 2) and [`grad_norm`] |
//! | `schedule.rs` | [`LrSchedule`]: linear warmup, hold, linear decay |
//! | `ema.rs` | [`Ema`]: exponential moving average of the parameters |

mod adamw;
mod clip;
mod ema;
mod schedule;

pub(crate) use adamw::Coeffs as AdamWCoeffs;
pub use adamw::{AdamW, AdamWConfig};
pub use clip::{clip_grad_norm, grad_norm};
pub use ema::{Ema, OFFICIAL_EMA_DECAY};
pub use schedule::{LrSchedule, OFFICIAL_WARMUP_START_FACTOR, OFFICIAL_WARMUP_STEPS};

use crate::error::{Error, Result};
use crate::storage::CpuStorage;
use crate::{DType, Device, Tensor};
use std::borrow::Cow;

/// Element count from which an element-wise update is split across threads.
pub(crate) const PAR_ELEMS: usize = 1 << 15;

/// Elements per parallel task (and per partial sum of the gradient norm).
pub(crate) const CHUNK: usize = 1 << 13;

/// The row-major values of `t`, which must be an f32 CPU tensor; `what` and `name` say which tensor it is
/// in the error (e.g. "gradient", "content_embed.weight").
pub(crate) fn f32_values<'a>(op: &'static str, what: &str, name: &str, t: &'a Tensor) -> Result<Cow<'a, [f32]>> {
    if t.dtype() != DType::F32 {
        return Err(Error::dtype(
            op,
            format!("an f32 tensor for {what} `{name}`"),
            t.dtype(),
        ));
    }
    t.typed_data::<f32>(op)
}

/// An f32 CPU tensor owning `data` (whose length the caller guarantees to match `dims`).
pub(crate) fn f32_tensor(data: Vec<f32>, dims: &[usize]) -> Tensor {
    debug_assert_eq!(data.len(), dims.iter().product::<usize>());
    Tensor::from_cpu(CpuStorage::F32(data), dims)
}

/// PyTorch's `lerp(start, end, weight)` for a scalar weight: `start + weight·(end − start)` when
/// |weight| < 0.5, else `end − (end − start)·(1 − weight)` (exact at both ends). It is evaluated without
/// fused multiply-adds, as PyTorch's scalar kernel does, so results are the same on every ISA; PyTorch's
/// vectorised CPU path may fuse the last multiply-add and then differ in the last bit.
#[inline(always)]
pub(crate) fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight.abs() < 0.5 {
        start + weight * (end - start)
    } else {
        end - (end - start) * (1.0 - weight)
    }
}

/// The device every parameter lives on (the CPU when there are none): optimiser state follows the
/// parameters, so they must not be split over devices.
pub(crate) fn common_device(op: &'static str, params: &std::collections::BTreeMap<String, Tensor>) -> Result<Device> {
    let device = params.values().next().map_or(Device::Cpu, Tensor::device);
    match params.iter().find(|(_, p)| p.device() != device) {
        Some((name, p)) => Err(Error::arg(
            op,
            format!(
                "parameter `{name}` is on {} and others on {device}: keep them on one device",
                p.device()
            ),
        )),
        None => Ok(device),
    }
}

/// One tensor of optimiser state: host values updated in place, or a device tensor replaced at each update.
#[derive(Debug, Clone)]
pub(crate) enum Buffer {
    Host(Vec<f32>),
    Device(Tensor),
}

impl Buffer {
    /// The values as a CPU tensor of shape `dims` (a copy).
    pub(crate) fn to_host_tensor(&self, dims: &[usize]) -> Result<Tensor> {
        match self {
            Buffer::Host(v) => Ok(f32_tensor(v.clone(), dims)),
            Buffer::Device(t) => t.to_device(Device::Cpu),
        }
    }

    /// The values as host memory to update in place (copied back from a device, if they were there).
    pub(crate) fn host_mut(&mut self) -> Result<&mut Vec<f32>> {
        if let Buffer::Device(t) = self {
            *self = Buffer::Host(t.to_f32_vec()?);
        }
        match self {
            Buffer::Host(v) => Ok(v),
            Buffer::Device(_) => unreachable!("converted above"),
        }
    }

    /// The values as a tensor on `device` (moved there first, if they were elsewhere).
    pub(crate) fn on_device(&mut self, device: Device, dims: &[usize]) -> Result<Tensor> {
        let moved = match self {
            Buffer::Device(t) if t.device() == device => return Ok(t.clone()),
            Buffer::Device(t) => t.to_device(device)?,
            Buffer::Host(v) => f32_tensor(std::mem::take(v), dims).to_device(device)?,
        };
        *self = Buffer::Device(moved.clone());
        Ok(moved)
    }
}
