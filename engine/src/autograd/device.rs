//! The backward rules whose CPU versions (`kernels.rs`) are loops over host memory, for tensors on a
//! device: element-wise gradients and `index_select`'s through the kernels of `kernels/cuda/training.cu`,
//! the norms, segment means and convolution gradients as compositions of engine ops that have device
//! kernels (plus col2im). The CPU rules keep row statistics in f64; these compute in f32, so the two
//! agree to f32 rounding (`engine/tests/autograd_device.rs` compares them on `CudaEmu`).

use crate::DType;
use crate::error::Result;
use crate::ops::conv::Padding;
use crate::tensor::Tensor;

/// Per row of `x` `[rows, n]`: the normalised values `x̂ = (x − mean)·rstd` and `rstd`.
fn normalise_rows(x: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let xc = x.sub(&x.mean(-1, true)?)?;
    let rstd = xc.sqr()?.mean(-1, true)?.add_scalar(eps)?.rsqrt()?;
    Ok((xc.mul(&rstd)?, rstd))
}

/// `rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ·x̂))` per row: the input gradient of a normalisation whose
/// normalised values `x̂` received the gradient `ĝ` (all `[rows, n]`, `rstd` `[rows, 1]`).
fn normalisation_input_grad(gxhat: &Tensor, xhat: &Tensor, rstd: &Tensor) -> Result<Tensor> {
    let m1 = gxhat.mean(-1, true)?;
    let m2 = gxhat.mul(xhat)?.mean(-1, true)?;
    gxhat.sub(&m1)?.sub(&xhat.mul(&m2)?)?.mul(rstd)
}

/// Gradients of `layer_norm(x, w, b)` over the last dim: (dx, dw, db).
pub(super) fn layer_norm_backward(
    x: &Tensor,
    w: Option<&Tensor>,
    g: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let width = *x.dims().last().unwrap_or(&1);
    let rows = x.numel() / width.max(1);
    let (x2, g2) = (x.reshape(&[rows, width])?, g.reshape(&[rows, width])?);
    let (xhat, rstd) = normalise_rows(&x2, eps)?;
    let gxhat = match w {
        Some(w) => g2.mul(&w.to_dtype(DType::F32)?.reshape(&[1, width])?)?,
        None => g2.clone(),
    };
    let dx = normalisation_input_grad(&gxhat, &xhat, &rstd)?.reshape(x.dims())?;
    Ok((dx, g2.mul(&xhat)?.sum(0, false)?, g2.sum(0, false)?))
}

/// Gradients of `rms_norm(x, scale)` over the last dim: (dx, dscale).
pub(super) fn rms_norm_backward(x: &Tensor, scale: &Tensor, g: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let width = *x.dims().last().unwrap_or(&1);
    let rows = x.numel() / width.max(1);
    let (x2, g2) = (x.reshape(&[rows, width])?, g.reshape(&[rows, width])?);
    let r = x2.sqr()?.mean(-1, true)?.add_scalar(eps)?.rsqrt()?;
    let xhat = x2.mul(&r)?;
    let gs = g2.mul(&scale.reshape(&[1, width])?)?;
    let m = gs.mul(&xhat)?.mean(-1, true)?;
    let dx = gs.sub(&xhat.mul(&m)?)?.mul(&r)?.reshape(x.dims())?;
    Ok((dx, g2.mul(&xhat)?.sum(0, false)?.reshape(scale.dims())?))
}

/// Gradients of `group_norm(x, groups, w, b)` (x `[B, C, *spatial]`): (dx, dw, db).
pub(super) fn group_norm_backward(
    x: &Tensor,
    groups: usize,
    w: Option<&Tensor>,
    g: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, c) = (x.dims()[0], x.dims()[1]);
    let spatial: usize = x.dims()[2..].iter().product();
    let len = c / groups * spatial;
    let (xhat, rstd) = normalise_rows(&x.reshape(&[b * groups, len])?, eps)?;
    let g3 = g.reshape(&[b, c, spatial])?;
    let gxhat = match w {
        Some(w) => g3.mul(&w.reshape(&[1, c, 1])?)?,
        None => g3.clone(),
    };
    let dx = normalisation_input_grad(&gxhat.reshape(&[b * groups, len])?, &xhat, &rstd)?.reshape(x.dims())?;
    // Per (batch, channel) sums over the positions, then over the batch.
    let per_channel = |t: &Tensor| -> Result<Tensor> { t.reshape(&[b, c, spatial])?.sum(-1, false)?.sum(0, false) };
    let dw = per_channel(&g3.mul(&xhat.reshape(&[b, c, spatial])?)?)?;
    Ok((dx, dw, per_channel(&g3)?))
}

/// Gradient of `segment_mean`: each token receives its segment's gradient divided by the segment size.
/// The labels are read on the host (a few ids per token) to build the row of every token's segment
/// and its size.
pub(super) fn segment_mean_backward(x_dims: &[usize], labels: &Tensor, n_seg: usize, g: &Tensor) -> Result<Tensor> {
    let r = x_dims.len();
    let (n, c) = (x_dims[r - 2], x_dims[r - 1]);
    let batch: usize = x_dims[..r - 2].iter().product();
    let lab = labels.to_i64_vec()?;
    let mut rows = Vec::with_capacity(batch * n);
    let mut sizes = Vec::with_capacity(batch * n);
    for bi in 0..batch {
        let mut counts = vec![0usize; n_seg];
        let lb = &lab[bi * n..(bi + 1) * n];
        for &l in lb {
            counts[l as usize] += 1;
        }
        for &l in lb {
            rows.push((bi * n_seg) as i64 + l);
            sizes.push(counts[l as usize] as f32);
        }
    }
    let dev = g.device();
    let rows = Tensor::from_vec(rows, &[batch * n])?.to_device(dev)?;
    let sizes = Tensor::from_vec(sizes, &[batch * n, 1])?.to_device(dev)?;
    g.reshape(&[batch * n_seg, c])?
        .index_select(0, &rows)?
        .div(&sizes)?
        .reshape(x_dims)
}

/// The weight gradient of `conv2d(x, w, _, stride, pad)` (x `[B, C, H, W]`, w `[O, C, kh, kw]`, g
/// `[B, O, OH, OW]`): `Σ_b g_b · im2col(x_b)ᵀ`, the columns from the device im2col.
pub(super) fn conv2d_weight_grad(x: &Tensor, w: &Tensor, g: &Tensor, stride: usize, pad: Padding) -> Result<Tensor> {
    let [b, _, _, _] = x.dims_n::<4>("conv2d backward")?;
    let [o, c, kh, kw] = w.dims_n::<4>("conv2d backward")?;
    let [_, _, oh, ow] = g.dims_n::<4>("conv2d backward")?;
    let cols = crate::cuda::ops::im2col(x, kh, kw, stride, pad, oh, ow)?; // [B, C·kh·kw, OH·OW]
    let per_image = g.reshape(&[b, o, oh * ow])?.matmul(&cols.transpose(-1, -2)?)?; // [B, O, C·kh·kw]
    per_image.sum(0, false)?.reshape(&[o, c, kh, kw])
}

/// The input gradient of `conv2d(x, w, _, stride, pad)` for any stride and padding: `col2im(Wᵀ · g_b)`
/// per image (the weight broadcast over the batch), on the device.
pub(super) fn conv2d_input_grad(x: &Tensor, w: &Tensor, g: &Tensor, stride: usize, pad: Padding) -> Result<Tensor> {
    let x_dims = x.dims_n::<4>("conv2d backward")?;
    let [o, c, kh, kw] = w.dims_n::<4>("conv2d backward")?;
    let [b, _, oh, ow] = g.dims_n::<4>("conv2d backward")?;
    let cols = w
        .reshape(&[o, c * kh * kw])?
        .transpose(0, 1)?
        .matmul(&g.reshape(&[b, o, oh * ow])?)?;
    crate::cuda::ops::col2im(&cols, x_dims, kh, kw, stride, pad, oh, ow)
}
