//! The backward rule of every differentiable op, in one place. Each rule maps the gradient of an op's
//! output to the gradients of its inputs (in `Op::inputs` order; `None` for an input that takes no
//! gradient). Rules compute on detached tensors, so backward passes record nothing.

use super::kernels;
use super::{Node, Op};
use crate::DType;
use crate::error::{Error, Result};
use crate::ops::conv::Padding;
use crate::ops::elementwise::Binary;
use crate::tensor::Tensor;

pub(super) fn name(op: &Op) -> &'static str {
    match op {
        Op::Leaf => "leaf",
        Op::Reshape(..) => "reshape",
        Op::Permute(..) => "permute",
        Op::Narrow(..) => "narrow",
        Op::Broadcast(..) => "broadcast_as",
        Op::Copy(..) => "copy",
        Op::Cat(..) => "cat",
        Op::Unary(_, _, u) => u.name(),
        Op::Binary(_, _, b) => b.name(),
        Op::Affine(..) => "affine",
        Op::DivScalar(..) => "div_scalar",
        Op::Powf(..) => "powf",
        Op::Clamp(..) => "clamp",
        Op::Matmul(..) => "matmul",
        Op::Linear(..) => "linear",
        Op::LayerNorm(..) => "layer_norm",
        Op::RmsNorm(..) => "rms_norm",
        Op::GroupNorm(..) => "group_norm",
        Op::Conv2d(..) => "conv2d",
        Op::Upsample2x(..) => "upsample_nearest2x",
        Op::Rope(..) => "rope",
        Op::Sdpa(..) => "sdpa",
        Op::SegmentMean(..) => "segment_mean",
        Op::IndexSelect(..) => "index_select",
        Op::Gather(..) => "gather",
        Op::Sum(..) => "sum",
        Op::Softmax(..) => "softmax",
        Op::LogSoftmax(..) => "log_softmax",
        Op::Unsupported(n, _) => n,
    }
}

/// Sums `g` over the dimensions along which a tensor of shape `dims` was broadcast to `g`'s shape.
pub(crate) fn sum_to(g: &Tensor, dims: &[usize]) -> Result<Tensor> {
    if g.dims() == dims {
        return Ok(g.clone());
    }
    let lead = g.rank() - dims.len();
    let mut t = g.clone();
    for _ in 0..lead {
        t = t.sum(0, false)?;
    }
    for (d, &n) in dims.iter().enumerate() {
        if n == 1 && t.dims()[d] != 1 {
            t = t.sum(d as isize, true)?;
        }
    }
    t.reshape(dims)
}

fn zeros_like(x: &Tensor) -> Result<Tensor> {
    Tensor::zeros(x.dims(), DType::F32, x.device())
}

/// A saved input as an untracked f32 tensor: gradients are always f32, whatever the inputs' dtypes.
fn f32(x: &Tensor) -> Result<Tensor> {
    x.detach().to_dtype(DType::F32)
}

/// The padding of the convolution that is the adjoint of a stride-1 `conv2d` with weight `w` and
/// padding `pad`: `kernel − 1 − pad` on each side, when no side is padded by the kernel size or more.
fn conv_transpose_padding(w: &Tensor, pad: Padding) -> Option<Padding> {
    let (kh, kw) = (w.dims()[2], w.dims()[3]);
    Some(Padding {
        top: (kh - 1).checked_sub(pad.top)?,
        bottom: (kh - 1).checked_sub(pad.bottom)?,
        left: (kw - 1).checked_sub(pad.left)?,
        right: (kw - 1).checked_sub(pad.right)?,
    })
}

/// The input gradient of a stride-1 `conv2d` as a forward convolution (on any device): `g` convolved
/// with the weight transposed to `[C, O, kh, kw]` and flipped in both spatial dims, with the adjoint
/// padding. It runs the forward's implicit GEMM, with no column buffer and no col2im.
fn conv2d_stride1_input_grad(w: &Tensor, g: &Tensor, pad: Padding) -> Result<Tensor> {
    let tpad = conv_transpose_padding(w, pad).expect("checked by the caller");
    let reversed = |n: usize| Tensor::from_vec((0..n as i64).rev().collect::<Vec<_>>(), &[n]);
    let (kh, kw) = (w.dims()[2], w.dims()[3]);
    let wt = w
        .permute(&[1, 0, 2, 3])?
        .index_select(2, &reversed(kh)?.to_device(w.device())?)?
        .index_select(3, &reversed(kw)?.to_device(w.device())?)?
        .contiguous()?;
    g.conv2d(&wt, None, 1, tpad)
}

pub(super) fn backward(node: &Node, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
    let g = &f32(g)?;
    let one = |t: Tensor| Ok(vec![Some(t)]);
    match &node.op {
        Op::Leaf => Ok(vec![]),
        Op::Reshape(x) => one(g.reshape(x.dims())?),
        Op::Permute(_, perm) => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            one(g.permute(&inv)?)
        }
        // Accumulated in place by the tape (`Pending::add_slice`), never padded here.
        Op::Narrow(..) => Err(Error::arg("backward", "internal: narrow is accumulated by the tape")),
        Op::Broadcast(x) => one(sum_to(g, x.dims())?),
        Op::Copy(_) => one(g.clone()),
        Op::Cat(xs, dim) => {
            let mut at = 0;
            let mut out = Vec::with_capacity(xs.len());
            for x in xs {
                let n = x.dims()[*dim];
                out.push(Some(g.narrow(*dim as isize, at, n)?.contiguous()?));
                at += n;
            }
            Ok(out)
        }
        Op::Unary(x, y, u) => one(kernels::unary_backward(*u, &f32(x)?, &f32(y)?, g)?),
        Op::Binary(a, b, op) => {
            let (a, b) = (f32(a)?, f32(b)?);
            let (ga, gb) = match op {
                Binary::Add => (g.clone(), g.clone()),
                Binary::Sub => (g.clone(), g.neg()?),
                Binary::Mul => (g.mul(&b)?, g.mul(&a)?),
                Binary::Div => (g.div(&b)?, g.mul(&a)?.div(&b.sqr()?)?.neg()?),
                Binary::Maximum | Binary::Minimum => {
                    let (wa, wb) = kernels::extremum_weights(&a, &b, *op == Binary::Maximum)?;
                    (g.mul(&wa)?, g.mul(&wb)?)
                }
            };
            Ok(vec![Some(sum_to(&ga, a.dims())?), Some(sum_to(&gb, b.dims())?)])
        }
        Op::Affine(_, mul) => one(g.mul_scalar(*mul)?),
        Op::DivScalar(_, v) => one(g.div_scalar(*v)?),
        Op::Powf(x, e) => one(g.mul(&f32(x)?.powf(e - 1.0)?.mul_scalar(*e)?)?),
        Op::Clamp(x, lo, hi) => one(kernels::clamp_backward(&f32(x)?, g, *lo, *hi)?),
        Op::Matmul(a, b) => {
            let (a, b) = (f32(a)?, f32(b)?);
            let ga = g.matmul(&b.transpose(-1, -2)?)?;
            let gb = a.transpose(-1, -2)?.matmul(g)?;
            Ok(vec![Some(sum_to(&ga, a.dims())?), Some(sum_to(&gb, b.dims())?)])
        }
        Op::Linear(x, w, b) => {
            let (x, w) = (f32(x)?, f32(w)?);
            let (out_f, in_f) = (w.dims()[0], w.dims()[1]);
            let rows = x.numel() / in_f.max(1);
            let g2 = g.reshape(&[rows, out_f])?;
            let gx = g2.matmul(&w)?.reshape(x.dims())?;
            let gw = g2.transpose(0, 1)?.matmul(&x.reshape(&[rows, in_f])?)?;
            let mut out = vec![Some(gx), Some(gw)];
            if b.is_some() {
                out.push(Some(g2.sum(0, false)?));
            }
            Ok(out)
        }
        Op::LayerNorm(x, w, b, eps) => {
            let (gx, gw, gb) = kernels::layer_norm_backward(&f32(x)?, w.as_ref(), g, *eps)?;
            let mut out = vec![Some(gx)];
            if w.is_some() {
                out.push(Some(gw));
            }
            if b.is_some() {
                out.push(Some(gb));
            }
            Ok(out)
        }
        Op::RmsNorm(x, s, eps) => {
            let (gx, gs) = kernels::rms_norm_backward(&f32(x)?, &f32(s)?, g, *eps)?;
            Ok(vec![Some(gx), Some(gs)])
        }
        Op::GroupNorm(x, w, b, groups, eps) => {
            let w32 = w.as_ref().map(f32).transpose()?;
            let (gx, gw, gb) = kernels::group_norm_backward(&f32(x)?, *groups, w32.as_ref(), g, *eps)?;
            let mut out = vec![Some(gx)];
            if w.is_some() {
                out.push(Some(gw));
            }
            if b.is_some() {
                out.push(Some(gb));
            }
            Ok(out)
        }
        Op::Conv2d(x, w, b, stride, pad) => {
            // Only the gradients some leaf needs: the input image of a first layer is not tracked.
            let want = [
                x.is_tracked(),
                w.is_tracked(),
                b.as_ref().is_some_and(Tensor::is_tracked),
            ];
            let w = f32(w)?;
            let transposed = want[0] && *stride == 1 && conv_transpose_padding(&w, *pad).is_some();
            let [gx, gw] = kernels::conv2d_backward(&f32(x)?, &w, g, *stride, *pad, [want[0] && !transposed, want[1]])?;
            let gx = if transposed {
                Some(conv2d_stride1_input_grad(&w, g, *pad)?)
            } else {
                gx
            };
            // db = Σ over the batch and the pixels, as last-dim sums (they run on any device).
            let gb = if want[2] {
                let [b, o, oh, ow] = g.dims_n::<4>("conv2d backward")?;
                let per_image = g.reshape(&[b, o, oh * ow])?.sum(-1, false)?;
                Some(per_image.transpose(0, 1)?.sum(-1, false)?)
            } else {
                None
            };
            let mut out = vec![gx, gw];
            if b.is_some() {
                out.push(gb);
            }
            Ok(out)
        }
        Op::Upsample2x(_) => {
            if g.device().is_cpu() {
                one(kernels::upsample2x_backward(g)?)
            } else {
                // The sum of each 2×2 block with engine ops (last-dim sums run on the device).
                let [b, c, h2, w2] = g.dims_n::<4>("upsample_nearest2x backward")?;
                let rows = g.reshape(&[b, c, h2 / 2, 2, w2 / 2, 2])?.sum(-1, false)?;
                one(rows.transpose(3, 4)?.sum(-1, false)?)
            }
        }
        Op::Rope(_, cos, sin) => {
            if cos.is_tracked() || sin.is_tracked() {
                return Err(Error::arg(
                    "backward",
                    "rope: gradients for the cos/sin tables are not supported (they are constants)",
                ));
            }
            // A rotation's adjoint is the rotation by the opposite angle.
            let gx = g.rope(&f32(cos)?, &f32(sin)?.neg()?)?;
            Ok(vec![Some(gx), None, None])
        }
        Op::Sdpa(q, k, v, scale) => {
            let (gq, gk, gv) = kernels::sdpa_backward(&f32(q)?, &f32(k)?, &f32(v)?, g, *scale)?;
            Ok(vec![Some(gq), Some(gk), Some(gv)])
        }
        Op::SegmentMean(x, labels, n) => one(kernels::segment_mean_backward(x.dims(), labels, *n, g)?),
        Op::IndexSelect(x, dim, ids) => one(kernels::index_add(x.dims(), *dim, ids, g)?),
        Op::Gather(x, dim, index) => one(zeros_like(x)?.scatter_add(*dim as isize, index, g)?),
        Op::Sum(x, dim, keepdim) => {
            let g = if *keepdim { g.clone() } else { g.unsqueeze(*dim)? };
            one(g.broadcast_as(x.dims())?.contiguous()?)
        }
        Op::Softmax(_, y, dim) => {
            // dx = y · (g − Σ g·y)
            let gy = g.mul(y)?;
            one(gy.sub(&y.mul(&gy.sum(*dim as isize, true)?)?)?)
        }
        Op::LogSoftmax(_, y, dim) => {
            // dx = g − softmax · Σ g
            one(g.sub(&y.exp()?.mul(&g.sum(*dim as isize, true)?)?)?)
        }
        Op::Unsupported(name, _) => Err(Error::arg(
            "backward",
            format!("the op `{name}` has no backward rule; detach its inputs or add a rule in autograd/rules.rs"),
        )),
    }
}
