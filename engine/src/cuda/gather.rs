//! Device `gather` and `scatter_add` (PyTorch semantics; `kernels/cuda/index.cu`). Shapes and index
//! ranges were validated by the front-ends in `crate::ops::index`.

use super::CudaStorage;
use super::launch::{Arg, BroadcastArg, LaunchConfig, launch};
use super::ops::{addr, alloc, copy_into, f32_operand, i64_operand, like};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::storage::Storage;
use crate::{DType, Device, Tensor};

/// The kernels' `GatherShape`: the index dims and the packed source strides (the `Broadcast` layout).
fn gather_shape(op: &'static str, src_dims: &[usize], index_dims: &[usize]) -> Result<BroadcastArg> {
    if index_dims.len() > 8 {
        return Err(Error::shape(op, "device tensors have at most 8 dimensions"));
    }
    let strides = crate::layout::contiguous_strides(src_dims);
    let mut g = BroadcastArg {
        rank: index_dims.len() as i32,
        ..Default::default()
    };
    for (a, (&n, &s)) in index_dims.iter().zip(&strides).enumerate() {
        g.dims[a] = n as i64;
        g.sa[a] = s as i64;
    }
    Ok(g)
}

/// `out[e] = src[.., index[e], ..]` along `dim`: a copy, so every dtype keeps its exact values.
pub(crate) fn gather(src: &Tensor, dim: usize, index: &Tensor) -> Result<Tensor> {
    let op = "gather";
    let x = src.contiguous()?;
    let ids = i64_operand(op, index)?;
    let kernel = match x.dtype().size() {
        1 => "nvg_gather_w8",
        2 => "nvg_gather_w16",
        4 => "nvg_gather_w32",
        _ => "nvg_gather_w64",
    };
    let n = ids.numel();
    let out = Tensor::from_parts(
        Storage::Cuda(CudaStorage::alloc(x.device(), x.dtype(), n)?),
        Layout::contiguous(ids.dims()),
    );
    if n == 0 {
        return Ok(out);
    }
    let g = gather_shape(op, x.dims(), ids.dims())?;
    // SAFETY: every index is in range for dim `dim` of src (checked by the caller), so each offset lies
    // inside the packed src; out holds n elements of src's width.
    unsafe {
        launch(
            x.device(),
            "index",
            kernel,
            LaunchConfig::for_elements(n),
            &[
                Arg::Ptr(addr(&x)?),
                Arg::Ptr(addr(&ids)?),
                Arg::Ptr(addr(&out)?),
                Arg::I64(n as i64),
                Arg::Broadcast(g),
                Arg::I32(dim as i32),
            ],
        )?;
    }
    Ok(out)
}

/// A copy of `dst` with `src[e]` added at `[.., index[e], ..]` along `dim` (f32 arithmetic for float
/// dtypes, rounded back like the CPU; exact for i64).
pub(crate) fn scatter_add(dst: &Tensor, dim: usize, index: &Tensor, src: &Tensor) -> Result<Tensor> {
    let op = "scatter_add";
    let ids = i64_operand(op, index)?;
    let (out, src, kernel) = if dst.dtype() == DType::I64 {
        // A fresh buffer (never an alias of dst's storage): the kernel adds into it in place.
        let out = dst.to_device(Device::Cpu)?.contiguous()?.to_device(dst.device())?;
        (out, src.contiguous()?, "nvg_scatter_add_i64")
    } else if dst.dtype().is_float() {
        let out = alloc(dst.device(), dst.dims())?;
        copy_into(&f32_operand(op, dst)?, &out, dst.dims(), 0)?;
        (out, f32_operand(op, src)?, "nvg_scatter_add_f32")
    } else {
        return Err(Error::Unsupported {
            op,
            device: dst.device(),
            msg: format!("device scatter_add takes float or i64 tensors, got {}", dst.dtype()),
        });
    };
    let n = ids.numel();
    if n > 0 {
        let g = gather_shape(op, dst.dims(), ids.dims())?;
        // SAFETY: as in gather; out is a private packed copy of dst, src has index's shape.
        unsafe {
            launch(
                out.device(),
                "index",
                kernel,
                LaunchConfig::for_elements(n),
                &[
                    Arg::Ptr(addr(&out)?),
                    Arg::Ptr(addr(&ids)?),
                    Arg::Ptr(addr(&src)?),
                    Arg::I64(n as i64),
                    Arg::Broadcast(g),
                    Arg::I32(dim as i32),
                ],
            )?;
        }
    }
    if dst.dtype() == DType::I64 {
        Ok(out)
    } else {
        like(out, dst.dtype())
    }
}
