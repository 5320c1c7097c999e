//! Device ops of the random-number and sampling family: counter-based random tensors
//! (`kernels/cuda/random.cu`) and the categorical draw (`kernels/cuda/sample.cu`). Inputs were validated
//! by the engine front-ends (`crate::rng`, `crate::ops::sample`).

use super::CudaStorage;
use super::launch::{Arg, LaunchConfig, launch};
use super::ops::{addr, alloc, f32_operand, rows_cols};
use crate::error::Result;
use crate::layout::Layout;
use crate::ops::sample::CategoricalSampling;
use crate::rng::{Distribution, RngStream};
use crate::storage::Storage;
use crate::{DType, Device, Tensor};

/// Threads per block of the sampling kernel (`SAMPLE_THREADS` in sample.cu).
const SAMPLE_THREADS: u32 = 256;
/// At most this many rows are drawn at once; each needs its own scratch (three words per category).
const SAMPLE_MAX_BLOCKS: usize = 512;

/// An f32 tensor on `device` whose element i is element `offset + i` of `rng`.
pub(crate) fn random(
    device: Device,
    dims: &[usize],
    dist: Distribution,
    rng: RngStream,
    offset: u64,
) -> Result<Tensor> {
    let out = alloc(device, dims)?;
    let n = out.numel();
    let dist = match dist {
        Distribution::Uniform => 0,
        Distribution::Normal => 1,
        Distribution::Gumbel => 2,
    };
    // SAFETY: out holds n floats; the u64 parameters are passed by their bit patterns.
    unsafe {
        launch(
            device,
            "random",
            "nvg_random_f32",
            LaunchConfig::for_elements(n),
            &[
                Arg::Ptr(addr(&out)?),
                Arg::I64(n as i64),
                Arg::I64(rng.seed as i64),
                Arg::I64(rng.stream as i64),
                Arg::I64(offset as i64),
                Arg::I32(dist),
            ],
        )?;
    }
    Ok(out)
}

/// One category (i64) per row of `logits` `[.., V]` with uniforms `[..]` (validated by the caller;
/// not greedy: that is argmax).
pub(crate) fn sample_categorical(logits: &Tensor, s: CategoricalSampling, uniforms: &Tensor) -> Result<Tensor> {
    let op = "sample_categorical";
    let x = f32_operand(op, logits)?;
    let u = f32_operand(op, uniforms)?;
    let (rows, n) = rows_cols(&x);
    let n_pad = n.next_power_of_two();
    let blocks = rows.clamp(1, SAMPLE_MAX_BLOCKS);
    let scratch = alloc(x.device(), &[blocks, 3, n_pad])?;
    let dims = &x.dims()[..x.rank() - 1];
    let out = Tensor::from_parts(
        Storage::Cuda(CudaStorage::alloc(x.device(), DType::I64, rows)?),
        Layout::contiguous(dims),
    );
    let mut cfg = LaunchConfig::per_row(blocks, SAMPLE_THREADS);
    cfg.grid[0] = blocks as u32;
    // SAFETY: x holds rows·n floats, u rows floats, out rows i64, scratch blocks·3·n_pad words.
    unsafe {
        launch(
            x.device(),
            "sample",
            "nvg_sample_rows_f32",
            cfg,
            &[
                Arg::Ptr(addr(&x)?),
                Arg::Ptr(addr(&u)?),
                Arg::Ptr(addr(&out)?),
                Arg::Ptr(addr(&scratch)?),
                Arg::I64(rows as i64),
                Arg::I32(n as i32),
                Arg::I32(n_pad as i32),
                Arg::F32(s.temperature),
                Arg::I32(s.top_k.min(i32::MAX as usize) as i32),
                Arg::F32(s.top_p),
            ],
        )?;
    }
    Ok(out)
}
