//! CPU kernels that only backward passes need. Reductions over rows (parameter gradients of norms)
//! sum fixed-size blocks in parallel and then the blocks in order, so gradients do not depend on the
//! thread count.

use crate::cpu::conv::{ConvGeom, Im2col, col2im_add};
use crate::cpu::gemm::{self, Strided};
use crate::cpu::simd;
use crate::error::{Error, Result};
use crate::ops::conv::Padding;
use crate::ops::elementwise::Unary;
use crate::ops::split_at_dim;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Rows per block of the deterministic row reductions.
const ROW_BLOCK: usize = 64;
/// Elements above which element-wise backward loops run in parallel.
const PAR_ELEMS: usize = 1 << 15;

/// `out[i] = f(a[i], g[i])`, vectorised (`simd::zip`) and split across threads for large inputs.
fn zip_grad(a: &[f32], g: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send + Copy) -> Vec<f32> {
    let isa = simd::isa();
    let mut out = vec![0.0f32; a.len()];
    if a.len() >= PAR_ELEMS {
        out.par_chunks_mut(4096)
            .zip(a.par_chunks(4096).zip(g.par_chunks(4096)))
            .for_each(|(o, (a, g))| simd::zip(isa, a, g, o, f));
    } else {
        simd::zip(isa, a, g, &mut out, f);
    }
    out
}

/// `out[i] = loop(x, g)` for a vectorised gradient loop, split across threads for large inputs.
fn grad_loop(x: &[f32], g: &[f32], f: fn(simd::Isa, &[f32], &[f32], &mut [f32])) -> Vec<f32> {
    let isa = simd::isa();
    let mut out = vec![0.0f32; x.len()];
    if x.len() >= PAR_ELEMS {
        out.par_chunks_mut(4096)
            .zip(x.par_chunks(4096).zip(g.par_chunks(4096)))
            .for_each(|(o, (x, g))| f(isa, x, g, o));
    } else {
        f(isa, x, g, &mut out);
    }
    out
}

/// `g · f'(x)` for a unary op with input `x` and output `y`.
pub(super) fn unary_backward(op: Unary, x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return crate::cuda::training::unary_backward(op, x, y, g);
    }
    let name = op.name();
    let (xd, yd, gd) = (x.f32_data(name)?, y.f32_data(name)?, g.f32_data(name)?);
    let out = match op {
        Unary::Neg => zip_grad(&gd, &gd, |g, _| -g),
        Unary::Abs => zip_grad(&xd, &gd, |x, g| {
            if x > 0.0 {
                g
            } else if x < 0.0 {
                -g
            } else {
                0.0
            }
        }),
        Unary::Exp => zip_grad(&yd, &gd, |y, g| g * y),
        Unary::Log => zip_grad(&xd, &gd, |x, g| g / x),
        Unary::Sqrt => zip_grad(&yd, &gd, |y, g| g * 0.5 / y),
        Unary::Rsqrt => zip_grad(&yd, &gd, |y, g| g * -0.5 * y * y * y),
        Unary::Recip => zip_grad(&yd, &gd, |y, g| -g * y * y),
        Unary::Sqr => zip_grad(&xd, &gd, |x, g| g * 2.0 * x),
        Unary::Tanh => zip_grad(&yd, &gd, |y, g| g * (1.0 - y * y)),
        Unary::Sin => zip_grad(&xd, &gd, |x, g| g * x.cos()),
        Unary::Cos => zip_grad(&xd, &gd, |x, g| -g * x.sin()),
        Unary::Sigmoid => zip_grad(&yd, &gd, |y, g| g * y * (1.0 - y)),
        Unary::Silu => grad_loop(&xd, &gd, simd::silu_backward),
        Unary::GeluTanh => grad_loop(&xd, &gd, simd::gelu_tanh_backward),
        Unary::Relu => zip_grad(&xd, &gd, |x, g| if x > 0.0 { g } else { 0.0 }),
    };
    Tensor::from_vec(out, x.dims())
}

/// Where the gradient of `maximum(a, b)` (or `minimum`) goes: weights for `a` and `b` on the
/// broadcast shape, 1/0 where one operand wins and ½/½ on ties (PyTorch's rule).
pub(super) fn extremum_weights(a: &Tensor, b: &Tensor, is_max: bool) -> Result<(Tensor, Tensor)> {
    let dims = crate::layout::broadcast_shapes("maximum", a.dims(), b.dims())?;
    if !a.device().is_cpu() {
        let wa = crate::cuda::training::extremum_weight(a, b, is_max, &dims)?;
        let wb = wa.affine(-1.0, 1.0)?;
        return Ok((wa, wb));
    }
    let ad = a.broadcast_as(&dims)?.f32_data("maximum")?.into_owned();
    let bd = b.broadcast_as(&dims)?.f32_data("maximum")?.into_owned();
    let wa: Vec<f32> = ad
        .iter()
        .zip(&bd)
        .map(|(&x, &y)| {
            if x == y {
                0.5
            } else if (x > y) == is_max {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let wb: Vec<f32> = wa.iter().map(|w| 1.0 - w).collect();
    Ok((Tensor::from_vec(wa, &dims)?, Tensor::from_vec(wb, &dims)?))
}

/// `g` where `lo ≤ x ≤ hi`, 0 elsewhere.
pub(super) fn clamp_backward(x: &Tensor, g: &Tensor, lo: f32, hi: f32) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return crate::cuda::training::clamp_backward(x, g, lo, hi);
    }
    let (xd, gd) = (x.f32_data("clamp")?, g.f32_data("clamp")?);
    let out = zip_grad(&xd, &gd, move |x, g| if x >= lo && x <= hi { g } else { 0.0 });
    Tensor::from_vec(out, x.dims())
}

/// Sums per-row contributions `f(row) -> [width]` over all rows, deterministically.
fn row_sum(rows: usize, width: usize, f: impl Fn(usize, &mut [f64]) + Sync) -> Vec<f32> {
    let blocks: Vec<Vec<f64>> = (0..rows.div_ceil(ROW_BLOCK))
        .into_par_iter()
        .map(|blk| {
            let mut acc = vec![0.0f64; width];
            for r in blk * ROW_BLOCK..((blk + 1) * ROW_BLOCK).min(rows) {
                f(r, &mut acc);
            }
            acc
        })
        .collect();
    let mut total = vec![0.0f64; width];
    for b in blocks {
        for (t, v) in total.iter_mut().zip(b) {
            *t += v;
        }
    }
    total.into_iter().map(|v| v as f32).collect()
}

/// Row statistics of a layer norm: mean and 1/sqrt(var + eps), in f64.
fn mean_rstd(row: &[f32], eps: f32) -> (f64, f64) {
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, 1.0 / (var + eps as f64).sqrt())
}

/// Gradients of `layer_norm(x, w, b)` over the last dim: (dx, dw, db).
pub(super) fn layer_norm_backward(
    x: &Tensor,
    w: Option<&Tensor>,
    g: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    if !x.device().is_cpu() {
        return super::device::layer_norm_backward(x, w, g, eps);
    }
    let width = *x.dims().last().unwrap_or(&1);
    let rows = x.numel() / width.max(1);
    let (xd, gd) = (x.f32_data("layer_norm")?, g.f32_data("layer_norm")?);
    let wv = match w {
        Some(w) => w.f32_data("layer_norm")?.into_owned(),
        None => vec![1.0; width],
    };
    let mut dx = vec![0.0f32; xd.len()];
    let row_grad = |(r, out): (usize, &mut [f32])| {
        let xr = &xd[r * width..(r + 1) * width];
        let gr = &gd[r * width..(r + 1) * width];
        let (mean, rstd) = mean_rstd(xr, eps);
        let (mut m1, mut m2) = (0.0f64, 0.0f64);
        for j in 0..width {
            let dxhat = gr[j] as f64 * wv[j] as f64;
            let xhat = (xr[j] as f64 - mean) * rstd;
            m1 += dxhat;
            m2 += dxhat * xhat;
        }
        let (m1, m2) = (m1 / width as f64, m2 / width as f64);
        for j in 0..width {
            let dxhat = gr[j] as f64 * wv[j] as f64;
            let xhat = (xr[j] as f64 - mean) * rstd;
            out[j] = (rstd * (dxhat - m1 - xhat * m2)) as f32;
        }
    };
    if width > 0 {
        dx.par_chunks_mut(width).enumerate().for_each(row_grad);
    }
    let dw = row_sum(rows, width, |r, acc| {
        let xr = &xd[r * width..(r + 1) * width];
        let (mean, rstd) = mean_rstd(xr, eps);
        for j in 0..width {
            acc[j] += gd[r * width + j] as f64 * (xr[j] as f64 - mean) * rstd;
        }
    });
    let db = row_sum(rows, width, |r, acc| {
        for j in 0..width {
            acc[j] += gd[r * width + j] as f64;
        }
    });
    Ok((
        Tensor::from_vec(dx, x.dims())?,
        Tensor::from_vec(dw, &[width])?,
        Tensor::from_vec(db, &[width])?,
    ))
}

/// Gradients of `rms_norm(x, scale)` over the last dim: (dx, dscale).
pub(super) fn rms_norm_backward(x: &Tensor, scale: &Tensor, g: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    if !x.device().is_cpu() {
        return super::device::rms_norm_backward(x, scale, g, eps);
    }
    let width = *x.dims().last().unwrap_or(&1);
    let rows = x.numel() / width.max(1);
    let (xd, gd, sd) = (
        x.f32_data("rms_norm")?,
        g.f32_data("rms_norm")?,
        scale.f32_data("rms_norm")?,
    );
    let inv_rms = |xr: &[f32]| {
        let ms = xr.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / width as f64;
        1.0 / (ms + eps as f64).sqrt()
    };
    let mut dx = vec![0.0f32; xd.len()];
    if width > 0 {
        dx.par_chunks_mut(width).enumerate().for_each(|(r, out)| {
            let xr = &xd[r * width..(r + 1) * width];
            let gr = &gd[r * width..(r + 1) * width];
            let rr = inv_rms(xr);
            let m = (0..width)
                .map(|j| gr[j] as f64 * sd[j] as f64 * xr[j] as f64 * rr)
                .sum::<f64>()
                / width as f64;
            for j in 0..width {
                let xhat = xr[j] as f64 * rr;
                out[j] = (rr * (gr[j] as f64 * sd[j] as f64 - xhat * m)) as f32;
            }
        });
    }
    let ds = row_sum(rows, width, |r, acc| {
        let xr = &xd[r * width..(r + 1) * width];
        let rr = inv_rms(xr);
        for j in 0..width {
            acc[j] += gd[r * width + j] as f64 * xr[j] as f64 * rr;
        }
    });
    Ok((Tensor::from_vec(dx, x.dims())?, Tensor::from_vec(ds, scale.dims())?))
}

/// Most score elements (batch·heads·Nq·Nk) materialised at once by the attention backward.
const SDPA_BACKWARD_SCORES: usize = 1 << 25;

/// Gradients of `softmax(q·kᵀ·scale)·v` (q, k, v `[B, H, N, D]`): the scores are recomputed, in slices
/// of the batch that bound the memory of the materialised score matrices.
pub(super) fn sdpa_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    g: &Tensor,
    scale: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let [b, h, nq, _] = q.dims_n::<4>("sdpa backward")?;
    let nk = k.dims()[2];
    let per_row = (h * nq * nk).max(1);
    let step = (SDPA_BACKWARD_SCORES / per_row).clamp(1, b.max(1));
    let (mut gqs, mut gks, mut gvs) = (Vec::new(), Vec::new(), Vec::new());
    let mut at = 0;
    while at < b {
        let n = step.min(b - at);
        let (q, k, v, g) = (
            q.narrow(0, at, n)?,
            k.narrow(0, at, n)?,
            v.narrow(0, at, n)?,
            g.narrow(0, at, n)?,
        );
        let p = q.matmul(&k.transpose(-1, -2)?)?.mul_scalar(scale)?.softmax(-1)?;
        let gv = p.transpose(-1, -2)?.matmul(&g)?;
        let gp = g.matmul(&v.transpose(-1, -2)?)?;
        let gs = p.mul(&gp.sub(&gp.mul(&p)?.sum(-1, true)?)?)?;
        gqs.push(gs.matmul(&k)?.mul_scalar(scale)?);
        gks.push(gs.transpose(-1, -2)?.matmul(&q)?.mul_scalar(scale)?);
        gvs.push(gv);
        at += n;
    }
    let cat = |ts: &[Tensor]| -> Result<Tensor> {
        if ts.len() == 1 {
            return Ok(ts[0].clone());
        }
        Tensor::cat(&ts.iter().collect::<Vec<_>>(), 0)
    };
    Ok((cat(&gqs)?, cat(&gks)?, cat(&gvs)?))
}

/// Gradient of `segment_mean`: each token receives its segment's gradient divided by the segment size.
pub(super) fn segment_mean_backward(x_dims: &[usize], labels: &Tensor, n_seg: usize, g: &Tensor) -> Result<Tensor> {
    if !g.device().is_cpu() {
        return super::device::segment_mean_backward(x_dims, labels, n_seg, g);
    }
    let r = x_dims.len();
    let (n, c) = (x_dims[r - 2], x_dims[r - 1]);
    let batch: usize = x_dims[..r - 2].iter().product();
    let lab = labels.i64_data("segment_mean")?;
    let gd = g.f32_data("segment_mean")?;
    let mut out = vec![0.0f32; batch * n * c];
    out.par_chunks_mut((n * c).max(1)).enumerate().for_each(|(bi, ob)| {
        let mut counts = vec![0usize; n_seg];
        for t in 0..n {
            counts[lab[bi * n + t] as usize] += 1;
        }
        for t in 0..n {
            let s = lab[bi * n + t] as usize;
            let src = &gd[(bi * n_seg + s) * c..(bi * n_seg + s + 1) * c];
            for (o, &v) in ob[t * c..(t + 1) * c].iter_mut().zip(src) {
                *o = v / counts[s] as f32;
            }
        }
    });
    Tensor::from_vec(out, x_dims)
}

/// Gradient of `index_select(dim, ids)`: `g`'s slices added into zeros of shape `x_dims` at `ids`.
pub(super) fn index_add(x_dims: &[usize], dim: usize, ids: &Tensor, g: &Tensor) -> Result<Tensor> {
    if !g.device().is_cpu() {
        return crate::cuda::training::index_add(x_dims, dim, ids, g);
    }
    let (outer, size, inner) = split_at_dim(x_dims, dim);
    let idv = ids.i64_data("index_select")?;
    let gd = g.f32_data("index_select")?;
    let mut out = vec![0.0f32; outer * size * inner];
    for o in 0..outer {
        for (j, &id) in idv.iter().enumerate() {
            let id = usize::try_from(id).map_err(|_| Error::index("index_select backward", "negative id"))?;
            let src = &gd[(o * idv.len() + j) * inner..(o * idv.len() + j + 1) * inner];
            let dst = &mut out[(o * size + id) * inner..(o * size + id + 1) * inner];
            for (d, &v) in dst.iter_mut().zip(src) {
                *d += v;
            }
        }
    }
    Tensor::from_vec(out, x_dims)
}

/// Gradients (dx, dW) of `conv2d(x, w, _, stride, pad)` (x `[B, C, H, W]`, w `[O, C, kh, kw]`, g
/// `[B, O, OH, OW]`), each computed only when asked for: per image, with the blocked GEMM,
/// `dW += g_b · im2col(x_b)ᵀ` and `dx_b = col2im(Wᵀ · g_b)`. The GEMMs split their work across
/// threads; images run in order, so every sum has a fixed order.
pub(super) fn conv2d_backward(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    stride: usize,
    pad: Padding,
    want: [bool; 2],
) -> Result<[Option<Tensor>; 2]> {
    let op = "conv2d backward";
    let [want_x, want_w] = want;
    if !want_x && !want_w {
        return Ok([None, None]);
    }
    if !g.device().is_cpu() {
        let gx = want_x
            .then(|| super::device::conv2d_input_grad(x, w, g, stride, pad))
            .transpose()?;
        let gw = want_w
            .then(|| super::device::conv2d_weight_grad(x, w, g, stride, pad))
            .transpose()?;
        return Ok([gx, gw]);
    }
    let [b, c, h, wd] = x.dims_n::<4>(op)?;
    let [o, _, kh, kw] = w.dims_n::<4>(op)?;
    let [_, _, oh, ow] = g.dims_n::<4>(op)?;
    let (k, npix, plane) = (c * kh * kw, oh * ow, c * h * wd);
    let gd = g.f32_data(op)?;
    let g_img = |bi: usize| &gd[bi * o * npix..(bi + 1) * o * npix];
    let isa = simd::isa();
    let geom = ConvGeom {
        c,
        h,
        w: wd,
        kh,
        kw,
        stride,
        pad_top: pad.top,
        pad_left: pad.left,
        oh,
        ow,
    };

    let gx = if want_x {
        let wv = w.f32_data(op)?;
        let mut dx = vec![0.0f32; b * plane];
        let mut cols = vec![0.0f32; k * npix];
        if npix > 0 {
            let wt = Strided::row_major(&wv, o, k).t();
            for bi in 0..b {
                let gb = Strided::row_major(g_img(bi), o, npix);
                gemm::gemm(isa, k, npix, o, &wt, &gb, &mut cols, npix, false);
                col2im_add(&geom, &cols, &mut dx[bi * plane..(bi + 1) * plane]);
            }
        }
        Some(Tensor::from_vec(dx, x.dims())?)
    } else {
        None
    };

    let gw = if want_w {
        let xv = x.f32_data(op)?;
        let mut dw = vec![0.0f32; o * k];
        let mut cols = vec![0.0f32; k * npix];
        for bi in 0..b {
            let im = Im2col {
                x: &xv[bi * plane..(bi + 1) * plane],
                h,
                w: wd,
                kh,
                kw,
                stride,
                pad_top: pad.top,
                pad_left: pad.left,
                ow,
            };
            im.materialise(k, npix, &mut cols);
            let gb = Strided::row_major(g_img(bi), o, npix);
            let colst = Strided::row_major(&cols, k, npix).t();
            gemm::gemm(isa, o, k, npix, &gb, &colst, &mut dw, k, bi > 0);
        }
        Some(Tensor::from_vec(dw, w.dims())?)
    } else {
        None
    };

    Ok([gx, gw])
}

/// Gradients of `group_norm(x, groups, w, b)` (x `[B, C, *spatial]`): (dx, dw, db). Per (batch, group)
/// row of `C/groups · spatial` values, with the statistics in f64 as for `layer_norm_backward`:
/// `dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ·x̂))` with `ĝ = g · w[channel]`; `dw[c] = Σ g·x̂` and
/// `db[c] = Σ g` over the batch and the positions, summed per (batch, channel) in parallel and then
/// over the batch in order.
pub(super) fn group_norm_backward(
    x: &Tensor,
    groups: usize,
    w: Option<&Tensor>,
    g: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    if !x.device().is_cpu() {
        return super::device::group_norm_backward(x, groups, w, g, eps);
    }
    let op = "group_norm backward";
    let (b, c) = (x.dims()[0], x.dims()[1]);
    let spatial: usize = x.dims()[2..].iter().product();
    let cg = c / groups;
    let len = cg * spatial;
    let (xd, gd) = (x.f32_data(op)?, g.f32_data(op)?);
    let wv = match w {
        Some(w) => w.f32_data(op)?.into_owned(),
        None => vec![1.0; c],
    };
    let mut dx = vec![0.0f32; xd.len()];
    // Per (batch, group) row: the sums of g·x̂ over each of its channels, then those of g.
    let mut sums = vec![0.0f64; 2 * b * c];
    if len > 0 {
        let row = |(r, (out, sums)): (usize, (&mut [f32], &mut [f64]))| {
            let xr = &xd[r * len..(r + 1) * len];
            let gr = &gd[r * len..(r + 1) * len];
            let c0 = (r % groups) * cg;
            let (mean, rstd) = mean_rstd(xr, eps);
            let (mut m1, mut m2) = (0.0f64, 0.0f64);
            for ci in 0..cg {
                let wc = wv[c0 + ci] as f64;
                let (mut sgx, mut sg) = (0.0f64, 0.0f64);
                for j in ci * spatial..(ci + 1) * spatial {
                    let (gj, xhat) = (gr[j] as f64, (xr[j] as f64 - mean) * rstd);
                    sgx += gj * xhat;
                    sg += gj;
                }
                sums[ci] = sgx;
                sums[cg + ci] = sg;
                m1 += wc * sg;
                m2 += wc * sgx;
            }
            let (m1, m2) = (m1 / len as f64, m2 / len as f64);
            for ci in 0..cg {
                let wc = wv[c0 + ci] as f64;
                for j in ci * spatial..(ci + 1) * spatial {
                    let xhat = (xr[j] as f64 - mean) * rstd;
                    out[j] = (rstd * (gr[j] as f64 * wc - m1 - xhat * m2)) as f32;
                }
            }
        };
        dx.par_chunks_mut(len)
            .zip(sums.par_chunks_mut(2 * cg))
            .enumerate()
            .for_each(row);
    }
    // Channel ch of batch bi is channel ch % cg of row bi·groups + ch / cg; `at` 0 for g·x̂, cg for g.
    let over_batch = |at: usize| -> Vec<f32> {
        (0..c)
            .map(|ch| {
                (0..b)
                    .map(|bi| sums[(bi * groups + ch / cg) * 2 * cg + at + ch % cg])
                    .sum::<f64>() as f32
            })
            .collect()
    };
    Ok((
        Tensor::from_vec(dx, x.dims())?,
        Tensor::from_vec(over_batch(0), &[c])?,
        Tensor::from_vec(over_batch(cg), &[c])?,
    ))
}

/// Gradient of `upsample_nearest2x` (`g` `[B, C, 2H, 2W]`): the sum of each 2×2 block.
pub(super) fn upsample2x_backward(g: &Tensor) -> Result<Tensor> {
    let [b, c, h2, w2] = g.dims_n::<4>("upsample_nearest2x backward")?;
    let (h, w) = (h2 / 2, w2 / 2);
    let gd = g.f32_data("upsample_nearest2x backward")?;
    let mut out = vec![0.0f32; b * c * h * w];
    if h * w > 0 {
        let plane = |(o, src): (&mut [f32], &[f32])| {
            for y in 0..h {
                let (r0, r1) = (&src[2 * y * w2..][..w2], &src[(2 * y + 1) * w2..][..w2]);
                for (xo, v) in o[y * w..(y + 1) * w].iter_mut().enumerate() {
                    *v = (r0[2 * xo] + r0[2 * xo + 1]) + (r1[2 * xo] + r1[2 * xo + 1]);
                }
            }
        };
        if out.len() >= PAR_ELEMS {
            out.par_chunks_mut(h * w).zip(gd.par_chunks(4 * h * w)).for_each(plane);
        } else {
            out.chunks_mut(h * w).zip(gd.chunks(4 * h * w)).for_each(plane);
        }
    }
    Tensor::from_vec(out, &[b, c, h, w])
}
