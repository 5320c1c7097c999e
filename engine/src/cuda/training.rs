//! Device launches of the training kernels (`kernels/cuda/training.cu`): the element-wise gradients of
//! unary ops, clamp and maximum/minimum, the gradient of `index_select`, and the AdamW and EMA (lerp)
//! updates. Shapes were checked by the callers (the forward op, the optimiser); these only launch.

use super::launch::{Arg, LaunchConfig, launch};
use super::ops::{addr, alloc, broadcast_arg, f32_operand, i64_operand, same_device};
use crate::error::Result;
use crate::ops::elementwise::Unary;
use crate::ops::split_at_dim;
use crate::optim::AdamWCoeffs;
use crate::tensor::Tensor;

/// Launches the element-wise kernel `name(inputs..., out, n, scalars...)` over packed f32 copies of
/// `inputs` (one shape, one device) and returns `out`.
fn elementwise(op: &'static str, name: &str, inputs: &[&Tensor], scalars: &[Arg]) -> Result<Tensor> {
    for t in &inputs[1..] {
        same_device(op, inputs[0], t)?;
    }
    let packed = inputs.iter().map(|t| f32_operand(op, t)).collect::<Result<Vec<_>>>()?;
    let out = alloc(packed[0].device(), packed[0].dims())?;
    let n = out.numel();
    let mut args = packed
        .iter()
        .map(|t| Ok(Arg::Ptr(addr(t)?)))
        .collect::<Result<Vec<_>>>()?;
    args.extend([Arg::Ptr(addr(&out)?), Arg::I64(n as i64)]);
    args.extend_from_slice(scalars);
    // SAFETY: every input and out hold n contiguous floats; `scalars` are the kernel's scalar parameters.
    unsafe { launch(out.device(), "training", name, LaunchConfig::for_elements(n), &args)? };
    Ok(out)
}

/// `g · f'(x)` for the unary op `op` with input `x` and output `y` (all of one shape).
pub(crate) fn unary_backward(op: Unary, x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Tensor> {
    elementwise(op.name(), "nvg_unary_backward_f32", &[x, y, g], &[Arg::I32(op as i32)])
}

/// `g` where `lo ≤ x ≤ hi`, 0 elsewhere.
pub(crate) fn clamp_backward(x: &Tensor, g: &Tensor, lo: f32, hi: f32) -> Result<Tensor> {
    elementwise(
        "clamp",
        "nvg_clamp_backward_f32",
        &[x, g],
        &[Arg::F32(lo), Arg::F32(hi)],
    )
}

/// The share of `maximum(a, b)`'s gradient (`minimum`'s when `!is_max`) that goes to `a`, on the
/// broadcast shape `dims`: 1 where `a` wins, 0 where `b` wins, ½ on ties.
pub(crate) fn extremum_weight(a: &Tensor, b: &Tensor, is_max: bool, dims: &[usize]) -> Result<Tensor> {
    let op = if is_max { "maximum" } else { "minimum" };
    same_device(op, a, b)?;
    let (a, b) = (f32_operand(op, a)?, f32_operand(op, b)?);
    let bc = broadcast_arg(op, &a, &b, dims)?;
    let out = alloc(a.device(), dims)?;
    let n = out.numel();
    // SAFETY: the broadcast strides index inside the packed a and b; out holds n floats.
    unsafe {
        launch(
            a.device(),
            "training",
            "nvg_extremum_weight_f32",
            LaunchConfig::for_elements(n),
            &[
                Arg::Ptr(addr(&a)?),
                Arg::Ptr(addr(&b)?),
                Arg::Ptr(addr(&out)?),
                Arg::I64(n as i64),
                Arg::I32(is_max as i32),
                Arg::Broadcast(bc),
            ],
        )?;
    }
    Ok(out)
}

/// Zeros of shape `x_dims` with `g`'s slices along `dim` added at `ids` (the gradient of
/// `index_select(dim, ids)`; `g` has `x_dims` with `dim` of size `ids.len()`).
pub(crate) fn index_add(x_dims: &[usize], dim: usize, ids: &Tensor, g: &Tensor) -> Result<Tensor> {
    let op = "index_select backward";
    let (outer, size, inner) = split_at_dim(x_dims, dim);
    let ids = i64_operand(op, &ids.to_device(g.device())?)?;
    let g = f32_operand(op, g)?;
    let out = crate::Tensor::zeros(x_dims, crate::DType::F32, g.device())?;
    let m = ids.numel();
    let n = outer * m * inner;
    if n > 0 {
        // SAFETY: g holds outer·m·inner floats, ids m ids; the kernel skips ids outside 0..size, so
        // every add lands inside out's outer·size·inner floats.
        unsafe {
            launch(
                g.device(),
                "training",
                "nvg_index_add_f32",
                LaunchConfig::for_elements(n),
                &[
                    Arg::Ptr(addr(&out)?),
                    Arg::Ptr(addr(&ids)?),
                    Arg::Ptr(addr(&g)?),
                    Arg::I64(outer as i64),
                    Arg::I64(m as i64),
                    Arg::I64(size as i64),
                    Arg::I64(inner as i64),
                ],
            )?;
        }
    }
    Ok(out)
}

/// One AdamW update of a parameter `p` with moments `m`, `v` and gradient `g` (f32 device tensors of one
/// shape): the new `(p, m, v)`, as fresh tensors (tensors are values; the old ones stay valid).
pub(crate) fn adamw_update(
    p: &Tensor,
    m: &Tensor,
    v: &Tensor,
    g: &Tensor,
    c: AdamWCoeffs,
    decay: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "AdamW::step";
    let (p, m, v, g) = (
        f32_operand(op, p)?,
        f32_operand(op, m)?,
        f32_operand(op, v)?,
        f32_operand(op, g)?,
    );
    let (po, mo, vo) = (
        alloc(p.device(), p.dims())?,
        alloc(p.device(), p.dims())?,
        alloc(p.device(), p.dims())?,
    );
    let n = p.numel();
    if n > 0 {
        // SAFETY: the seven buffers hold n contiguous floats each.
        unsafe {
            launch(
                p.device(),
                "training",
                "nvg_adamw_f32",
                LaunchConfig::for_elements(n),
                &[
                    Arg::Ptr(addr(&p)?),
                    Arg::Ptr(addr(&m)?),
                    Arg::Ptr(addr(&v)?),
                    Arg::Ptr(addr(&g)?),
                    Arg::Ptr(addr(&po)?),
                    Arg::Ptr(addr(&mo)?),
                    Arg::Ptr(addr(&vo)?),
                    Arg::I64(n as i64),
                    Arg::F32(if decay { c.decay } else { 1.0 }),
                    Arg::F32(c.w1),
                    Arg::F32(c.beta2),
                    Arg::F32(c.c2),
                    Arg::F32(c.neg_step_size),
                    Arg::F32(c.bc2_sqrt),
                    Arg::F32(c.eps),
                ],
            )?;
        }
    }
    Ok((po, mo, vo))
}

/// PyTorch's `lerp(start, end, weight)` element-wise (f32 device tensors of one shape), as a new tensor.
pub(crate) fn lerp(start: &Tensor, end: &Tensor, weight: f32) -> Result<Tensor> {
    elementwise("lerp", "nvg_lerp_f32", &[start, end], &[Arg::F32(weight)])
}
