//! Engine ops on device tensors: each validates like its CPU front-end did, makes its operands
//! contiguous f32, allocates the output and launches its kernel. Ops not listed here fail on a device
//! tensor with "no kernel for this op on the device yet".

use super::CudaStorage;
use super::launch::{Arg, BroadcastArg, LaunchConfig, launch};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::ops::attention::AttentionKernel;
use crate::ops::conv::{ConvKernel, Padding};
use crate::ops::elementwise::{Binary, Unary};
use crate::storage::Storage;
use crate::{DType, Device, Tensor};

/// Threads per block of the row kernels.
const ROW_THREADS: u32 = 256;
/// Largest im2col buffer (floats) `ConvKernel::Auto` allocates; larger convolutions run direct.
const IM2COL_MAX_ELEMS: usize = 1 << 28;
/// Queries per block of the tiled attention kernel (`ATT_TILE_Q` in attention.cu).
const TILE_Q: usize = 64;

/// The device address of a contiguous tensor's first element.
pub(super) fn addr(t: &Tensor) -> Result<u64> {
    match t.storage() {
        Storage::Cuda(c) => Ok(c.ptr() + (t.layout().offset() * c.dtype().size()) as u64),
        Storage::Cpu(_) => Err(Error::arg("cuda op", "a CPU tensor where a device tensor was expected")),
    }
}

/// `t` as a contiguous f32 device tensor (bf16 storage is widened on the device).
pub(super) fn f32_operand(op: &'static str, t: &Tensor) -> Result<Tensor> {
    match t.dtype() {
        DType::F32 => t.contiguous(),
        DType::BF16 => cast(&t.contiguous()?, DType::F32),
        other => Err(Error::Unsupported {
            op,
            device: t.device(),
            msg: format!("device kernels take f32 or bf16 tensors, got {other}"),
        }),
    }
}

/// An op's f32 result in the dtype of its input (bf16 in, bf16 out — as on the CPU).
pub(super) fn like(out: Tensor, dtype: DType) -> Result<Tensor> {
    if dtype == DType::BF16 {
        cast(&out, DType::BF16)
    } else {
        Ok(out)
    }
}

/// f32 ↔ bf16 conversion of a contiguous device tensor.
pub(crate) fn cast(t: &Tensor, dtype: DType) -> Result<Tensor> {
    let name = match (t.dtype(), dtype) {
        (a, b) if a == b => return Ok(t.clone()),
        (DType::BF16, DType::F32) => "nvg_bf16_to_f32",
        (DType::F32, DType::BF16) => "nvg_f32_to_bf16",
        // Other conversions go through the CPU.
        _ => return t.to_device(Device::Cpu)?.to_dtype(dtype)?.to_device(t.device()),
    };
    let t = t.contiguous()?;
    let n = t.numel();
    let out = Tensor::from_parts(
        Storage::Cuda(CudaStorage::alloc(t.device(), dtype, n)?),
        Layout::contiguous(t.dims()),
    );
    // SAFETY: t and out hold n contiguous elements of their dtypes.
    unsafe {
        launch(
            t.device(),
            "elementwise",
            name,
            LaunchConfig::for_elements(n),
            &[Arg::Ptr(addr(&t)?), Arg::Ptr(addr(&out)?), Arg::I64(n as i64)],
        )?;
    }
    Ok(out)
}

pub(super) fn alloc(device: Device, dims: &[usize]) -> Result<Tensor> {
    let n = dims.iter().product();
    Ok(Tensor::from_parts(
        Storage::Cuda(CudaStorage::alloc(device, DType::F32, n)?),
        Layout::contiguous(dims),
    ))
}

pub(super) fn same_device(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.device() != b.device() {
        return Err(Error::arg(op, format!("tensors on {} and {}", a.device(), b.device())));
    }
    Ok(())
}

/// Copies the f32 view `src` into `dst` (a packed device tensor) at element `dst_offset`, with `dst`'s
/// strides taken from `dst_dims` (row-major).
pub(super) fn copy_into(src: &Tensor, dst: &Tensor, dst_dims: &[usize], dst_offset: usize) -> Result<()> {
    let l = src.layout();
    if l.dims().len() > 8 {
        return Err(Error::shape("copy", "device tensors have at most 8 dimensions"));
    }
    let dst_strides = crate::layout::contiguous_strides(dst_dims);
    let mut bc = BroadcastArg {
        rank: l.dims().len() as i32,
        ..Default::default()
    };
    for (d, (&n, &s)) in l.dims().iter().zip(l.strides()).enumerate() {
        bc.dims[d] = n as i64;
        bc.sa[d] = s as i64;
        bc.sb[d] = dst_strides[d] as i64;
    }
    let base = match src.storage() {
        Storage::Cuda(c) => c.ptr(),
        Storage::Cpu(_) => return Err(Error::arg("copy", "a CPU tensor where a device tensor was expected")),
    };
    let n = src.numel();
    if n == 0 {
        return Ok(());
    }
    // SAFETY: src covers its view of its storage; dst holds dst_dims elements and the copied block fits
    // inside it at dst_offset (callers pass slices of dst_dims).
    unsafe {
        launch(
            src.device(),
            "elementwise",
            "nvg_strided_copy_f32",
            LaunchConfig::for_elements(n),
            &[
                Arg::Ptr(base),
                Arg::Ptr(addr(dst)?),
                Arg::I64(n as i64),
                Arg::I64(l.offset() as i64),
                Arg::I64(dst_offset as i64),
                Arg::Broadcast(bc),
            ],
        )
    }
}

/// Packs a strided f32 view.
pub(crate) fn contiguous(t: &Tensor) -> Result<Tensor> {
    if t.dtype() != DType::F32 {
        // Other dtypes take the CPU path (a copy there and back); only f32 has a kernel.
        return t.to_device(Device::Cpu)?.contiguous()?.to_device(t.device());
    }
    let out = alloc(t.device(), t.dims())?;
    copy_into(t, &out, t.dims(), 0)?;
    Ok(out)
}

/// Concatenation along `dim` of f32 device tensors (shapes checked by the caller).
pub(crate) fn cat(tensors: &[&Tensor], dim: usize, dims: &[usize]) -> Result<Tensor> {
    let (device, dtype) = (tensors[0].device(), tensors[0].dtype());
    if let Some(t) = tensors.iter().find(|t| t.device() != device) {
        return Err(Error::arg("cat", format!("tensors on {device} and {}", t.device())));
    }
    let out = alloc(device, dims)?;
    let inner: usize = dims[dim + 1..].iter().product();
    let mut at = 0;
    for t in tensors {
        let part = if t.dtype() == DType::F32 {
            (*t).clone()
        } else {
            f32_operand("cat", t)?
        };
        copy_into(&part, &out, dims, at * inner)?;
        at += t.dims()[dim];
    }
    like(out, dtype)
}

pub(crate) fn div_scalar(x: &Tensor, v: f32) -> Result<Tensor> {
    map_kernel("div_scalar", "nvg_div_scalar_f32", x, &[Arg::F32(v)])
}

/// An element-wise kernel `name(x, out, n, extra...)` over a contiguous f32 copy of `x`.
fn map_kernel(op: &'static str, name: &str, x: &Tensor, extra: &[Arg]) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = f32_operand(op, x)?;
    let out = alloc(x.device(), x.dims())?;
    let n = x.numel();
    let mut args = vec![Arg::Ptr(addr(&x)?), Arg::Ptr(addr(&out)?), Arg::I64(n as i64)];
    args.extend_from_slice(extra);
    // SAFETY: x and out hold n contiguous floats; `extra` are the kernel's scalar parameters.
    unsafe { launch(x.device(), "elementwise", name, LaunchConfig::for_elements(n), &args)? };
    like(out, dtype)
}

pub(crate) fn unary(x: &Tensor, op: Unary) -> Result<Tensor> {
    map_kernel(op.name(), "nvg_unary_f32", x, &[Arg::I32(op as i32)])
}

pub(crate) fn powf(x: &Tensor, e: f32) -> Result<Tensor> {
    map_kernel("powf", "nvg_powf_f32", x, &[Arg::F32(e)])
}

pub(crate) fn affine(x: &Tensor, mul: f32, add: f32) -> Result<Tensor> {
    map_kernel("affine", "nvg_affine_f32", x, &[Arg::F32(mul), Arg::F32(add)])
}

pub(crate) fn clamp(x: &Tensor, min: f32, max: f32) -> Result<Tensor> {
    map_kernel("clamp", "nvg_clamp_f32", x, &[Arg::F32(min), Arg::F32(max)])
}

pub(crate) fn binary(a: &Tensor, b: &Tensor, op: Binary, dims: &[usize]) -> Result<Tensor> {
    let dtype = a.dtype();
    same_device(op.name(), a, b)?;
    let (a, b) = (f32_operand(op.name(), a)?, f32_operand(op.name(), b)?);
    let bc = broadcast_arg(op.name(), &a, &b, dims)?;
    let out = alloc(a.device(), dims)?;
    let n = out.numel();
    // SAFETY: every index the broadcast strides produce lies inside a and b (contiguous, broadcast
    // with stride 0); out holds n floats.
    unsafe {
        launch(
            a.device(),
            "elementwise",
            "nvg_binary_f32",
            LaunchConfig::for_elements(n),
            &[
                Arg::Ptr(addr(&a)?),
                Arg::Ptr(addr(&b)?),
                Arg::Ptr(addr(&out)?),
                Arg::I64(n as i64),
                Arg::I32(op as i32),
                Arg::Broadcast(bc),
            ],
        )?;
    }
    like(out, dtype)
}

/// The kernels' `Broadcast` of two packed operands to `dims` (stride 0 along broadcast dimensions).
pub(super) fn broadcast_arg(op: &'static str, a: &Tensor, b: &Tensor, dims: &[usize]) -> Result<BroadcastArg> {
    if dims.len() > 8 {
        return Err(Error::shape(op, "device tensors have at most 8 dimensions"));
    }
    let la = a.layout().broadcast_to(op, dims)?;
    let lb = b.layout().broadcast_to(op, dims)?;
    let mut bc = BroadcastArg {
        rank: dims.len() as i32,
        ..Default::default()
    };
    for (d, &n) in dims.iter().enumerate() {
        bc.dims[d] = n as i64;
        bc.sa[d] = la.strides()[d] as i64;
        bc.sb[d] = lb.strides()[d] as i64;
    }
    Ok(bc)
}

/// `[rows, cols]` view of a tensor over its last dimension.
pub(super) fn rows_cols(t: &Tensor) -> (usize, usize) {
    let cols = t.dims().last().copied().unwrap_or(1);
    (t.numel() / cols.max(1), cols)
}

/// Threads of a one-block-per-row reduction over rows of `cols`: one warp for short rows (the many
/// narrow sums of backward passes: bias and norm-weight gradients, broadcast sums), up to
/// `ROW_THREADS` for long ones.
fn short_row_threads(cols: usize) -> u32 {
    (cols.next_power_of_two() as u32).clamp(32, ROW_THREADS)
}

/// Sum over the last dimension.
pub(crate) fn sum_last(x: &Tensor, keepdim: bool) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = f32_operand("sum", x)?;
    let (rows, cols) = rows_cols(&x);
    let mut dims = x.dims().to_vec();
    if keepdim {
        *dims.last_mut().unwrap() = 1;
    } else {
        dims.pop();
    }
    let out = alloc(x.device(), &dims)?;
    // SAFETY: x holds rows·cols floats, out rows.
    unsafe {
        launch(
            x.device(),
            "rows",
            "nvg_sum_rows_f32",
            LaunchConfig::per_row(rows, short_row_threads(cols)),
            &[
                Arg::Ptr(addr(&x)?),
                Arg::Ptr(addr(&out)?),
                Arg::I32(rows as i32),
                Arg::I32(cols as i32),
            ],
        )?;
    }
    like(out, dtype)
}

/// A one-block-per-row kernel `name(x, params..., out, rows, cols, extra...)` over the last dimension
/// of a contiguous f32 copy of `x`; `params` are per-column vectors (or null pointers).
fn row_kernel(op: &'static str, name: &str, x: &Tensor, params: &[Option<&Tensor>], extra: &[Arg]) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = f32_operand(op, x)?;
    let (rows, cols) = rows_cols(&x);
    let params: Vec<Option<Tensor>> = params
        .iter()
        .map(|p| p.map(|t| f32_operand(op, t)).transpose())
        .collect::<Result<_>>()?;
    let out = alloc(x.device(), x.dims())?;
    let mut args = vec![Arg::Ptr(addr(&x)?)];
    for p in &params {
        args.push(Arg::Ptr(match p {
            Some(t) => addr(t)?,
            None => 0,
        }));
    }
    args.extend([Arg::Ptr(addr(&out)?), Arg::I32(rows as i32), Arg::I32(cols as i32)]);
    args.extend_from_slice(extra);
    // SAFETY: x and out hold rows·cols floats; each parameter vector cols (checked by the caller).
    unsafe {
        launch(
            x.device(),
            "rows",
            name,
            LaunchConfig::per_row(rows, ROW_THREADS),
            &args,
        )?
    };
    like(out, dtype)
}

/// Softmax (or log-softmax) over the last dimension.
pub(crate) fn softmax_last(x: &Tensor, log: bool) -> Result<Tensor> {
    row_kernel("softmax", "nvg_softmax_rows_f32", x, &[], &[Arg::I32(log as i32)])
}

pub(crate) fn layer_norm(x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    row_kernel("layer_norm", "nvg_layer_norm_f32", x, &[w, b], &[Arg::F32(eps)])
}

pub(crate) fn rms_norm(x: &Tensor, scale: &Tensor, eps: f32) -> Result<Tensor> {
    row_kernel("rms_norm", "nvg_rms_norm_f32", x, &[Some(scale)], &[Arg::F32(eps)])
}

/// RoPE of x `[B, H, N, D]` with tables `[B, N, D/2]` or `[N, D/2]` (shapes checked by the caller).
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = f32_operand("rope", x)?;
    let (c, s) = (f32_operand("rope", cos)?, f32_operand("rope", sin)?);
    let [b, h, n, d] = [x.dims()[0], x.dims()[1], x.dims()[2], x.dims()[3]];
    let out = alloc(x.device(), x.dims())?;
    let pairs = b * h * n * d / 2;
    // SAFETY: x/out hold b·h·n·d floats; the tables (b or 1)·n·d/2.
    unsafe {
        launch(
            x.device(),
            "rope",
            "nvg_rope_f32",
            LaunchConfig::for_elements(pairs),
            &[
                Arg::Ptr(addr(&x)?),
                Arg::Ptr(addr(&c)?),
                Arg::Ptr(addr(&s)?),
                Arg::Ptr(addr(&out)?),
                Arg::I32(b as i32),
                Arg::I32(h as i32),
                Arg::I32(n as i32),
                Arg::I32(d as i32),
                Arg::I32((c.rank() == 3) as i32),
            ],
        )?;
    }
    like(out, dtype)
}

/// `[..., m, k] · [..., k, n]` with broadcast batch dims `batch` (shapes checked by the caller): the
/// SIMT kernel in f32, or with `tensor_cores` the mma.sync kernel on bf16-rounded operands.
pub(crate) fn matmul(a: &Tensor, b: &Tensor, batch: &[usize], tensor_cores: bool) -> Result<Tensor> {
    let dtype = a.dtype();
    same_device("matmul", a, b)?;
    let (ra, rb) = (a.rank(), b.rank());
    let (m, k, n) = (a.dims()[ra - 2], a.dims()[ra - 1], b.dims()[rb - 1]);
    let nb: usize = batch.iter().product();
    // Materialise the broadcast batch so each operand is [nb, rows, cols] with a fixed stride (0 when
    // an operand has no batch dims at all).
    let expand = |t: &Tensor, rows: usize, cols: usize| -> Result<(Tensor, i64)> {
        let r = t.rank();
        if t.dims()[..r - 2].iter().product::<usize>() == 1 {
            return Ok((f32_operand("matmul", t)?, 0));
        }
        let mut dims = batch.to_vec();
        dims.extend_from_slice(&[rows, cols]);
        Ok((f32_operand("matmul", &t.broadcast_as(&dims)?)?, (rows * cols) as i64))
    };
    let (a, sa) = expand(a, m, k)?;
    let (b, sb) = expand(b, k, n)?;
    let mut dims = batch.to_vec();
    dims.extend_from_slice(&[m, n]);
    let out = alloc(a.device(), &dims)?;
    if m * n == 0 {
        return Ok(out);
    }
    let tensor_cores = tensor_cores || super::matmul_precision() == super::MatmulPrecision::Bf16;
    let (kernel, threads) = if tensor_cores {
        ("nvg_gemm_bf16tc_f32", 128)
    } else {
        ("nvg_gemm_f32", 256)
    };
    let cfg = LaunchConfig {
        grid: [n.div_ceil(64) as u32, m.div_ceil(64) as u32, nb.max(1) as u32],
        block: [threads, 1, 1],
        shared_bytes: 0,
    };
    // SAFETY: a holds nb (or 1) m×k matrices at stride sa, b k×n at sb, out nb m×n.
    unsafe {
        launch(
            a.device(),
            "gemm",
            kernel,
            cfg,
            &[
                Arg::Ptr(addr(&a)?),
                Arg::Ptr(addr(&b)?),
                Arg::Ptr(addr(&out)?),
                Arg::I32(m as i32),
                Arg::I32(n as i32),
                Arg::I32(k as i32),
                Arg::I64(sa),
                Arg::I64(sb),
                Arg::I64((m * n) as i64),
            ],
        )?;
    }
    like(out, dtype)
}

/// A contiguous i64 device operand (ids, labels, segment ids).
pub(super) fn i64_operand(op: &'static str, t: &Tensor) -> Result<Tensor> {
    if t.dtype() != DType::I64 {
        return Err(Error::dtype(op, "an i64 tensor", t.dtype()));
    }
    t.contiguous()
}

/// Head dims with a tiled kernel instantiation (`ATTENTION_TILED` in attention.cu).
const TILED_HEAD_DIMS: [usize; 3] = [16, 32, 64];

/// Attention of q `[B, H, Nq, D]`, k `[B, H, Nk, D]`, v `[B, H, Nk, Dv]` (shapes checked by the
/// caller) with the chosen kernel; optional segment ids `[B, Nq]`, `[B, Nk]`. Returns `[B, H, Nq, Dv]`
/// as a view of `[B, Nq, H, Dv]` storage, like the CPU backend.
pub(crate) fn sdpa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    segments: Option<(&Tensor, &Tensor)>,
    kernel: AttentionKernel,
) -> Result<Tensor> {
    let dtype = q.dtype();
    let (q, k, v) = (
        f32_operand("sdpa", q)?,
        f32_operand("sdpa", k)?,
        f32_operand("sdpa", v)?,
    );
    let [b, h, nq, d] = [q.dims()[0], q.dims()[1], q.dims()[2], q.dims()[3]];
    let (nk, dv) = (k.dims()[2], v.dims()[3]);
    if d > 128 || dv > 128 {
        return Err(Error::Unsupported {
            op: "sdpa",
            device: q.device(),
            msg: format!("the device kernel takes head dims up to 128, got {d} / {dv}"),
        });
    }
    let segs = match segments {
        Some((qs, ks)) => Some((i64_operand("sdpa", qs)?, i64_operand("sdpa", ks)?)),
        None => None,
    };
    let (qs, ks) = match &segs {
        Some((qs, ks)) => (addr(qs)?, addr(ks)?),
        None => (0, 0),
    };
    let out = alloc(q.device(), &[b, nq, h, dv])?;
    let tiled_fits = d == dv && TILED_HEAD_DIMS.contains(&d);
    let tiled = match kernel {
        AttentionKernel::Auto => tiled_fits,
        AttentionKernel::Baseline => false,
        AttentionKernel::Tiled if tiled_fits => true,
        AttentionKernel::Tiled => {
            return Err(Error::Unsupported {
                op: "sdpa",
                device: q.device(),
                msg: format!("the tiled attention kernel takes equal head dims in {TILED_HEAD_DIMS:?}, got {d} / {dv}"),
            });
        }
    };
    if tiled {
        let cfg = LaunchConfig {
            grid: [nq.div_ceil(TILE_Q) as u32, (b * h) as u32, 1],
            block: [TILE_Q as u32, 1, 1],
            shared_bytes: 0,
        };
        // SAFETY: as below; the kernel's head dim is d = dv.
        unsafe {
            launch(
                q.device(),
                "attention",
                &format!("nvg_attention_tiled_d{d}"),
                cfg,
                &[
                    Arg::Ptr(addr(&q)?),
                    Arg::Ptr(addr(&k)?),
                    Arg::Ptr(addr(&v)?),
                    Arg::Ptr(qs),
                    Arg::Ptr(ks),
                    Arg::Ptr(addr(&out)?),
                    Arg::I32(h as i32),
                    Arg::I32(nq as i32),
                    Arg::I32(nk as i32),
                    Arg::F32(scale),
                ],
            )?;
        }
        return like(out, dtype)?.permute(&[0, 2, 1, 3]);
    }
    // SAFETY: q, k, v, out hold the documented shapes contiguously; the segment ids [B, Nq] / [B, Nk].
    unsafe {
        launch(
            q.device(),
            "attention",
            "nvg_attention_f32",
            LaunchConfig::for_elements(b * h * nq),
            &[
                Arg::Ptr(addr(&q)?),
                Arg::Ptr(addr(&k)?),
                Arg::Ptr(addr(&v)?),
                Arg::Ptr(qs),
                Arg::Ptr(ks),
                Arg::Ptr(addr(&out)?),
                Arg::I32(b as i32),
                Arg::I32(h as i32),
                Arg::I32(nq as i32),
                Arg::I32(nk as i32),
                Arg::I32(d as i32),
                Arg::I32(dv as i32),
                Arg::F32(scale),
            ],
        )?;
    }
    like(out, dtype)?.permute(&[0, 2, 1, 3])
}

/// `index_select` along `dim` with validated ids.
pub(crate) fn index_select(x: &Tensor, dim: usize, ids: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = f32_operand("index_select", x)?;
    let ids = i64_operand("index_select", ids)?.to_device(x.device())?;
    let (outer, size, inner) = crate::ops::split_at_dim(x.dims(), dim);
    let mut dims = x.dims().to_vec();
    dims[dim] = ids.numel();
    let out = alloc(x.device(), &dims)?;
    // SAFETY: every id is in 0..size (checked by the caller); shapes as documented in the kernel.
    unsafe {
        launch(
            x.device(),
            "index",
            "nvg_index_select_f32",
            LaunchConfig::for_elements(out.numel()),
            &[
                Arg::Ptr(addr(&x)?),
                Arg::Ptr(addr(&ids)?),
                Arg::Ptr(addr(&out)?),
                Arg::I64(outer as i64),
                Arg::I64(size as i64),
                Arg::I64(inner as i64),
                Arg::I64(ids.numel() as i64),
            ],
        )?;
    }
    like(out, dtype)
}

/// Segment mean of x `[..., N, C]` by labels `[..., N]` (validated by the caller) into `[..., S, C]`.
pub(crate) fn segment_mean(x: &Tensor, labels: &Tensor, segments: usize) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = f32_operand("segment_mean", x)?;
    let labels = i64_operand("segment_mean", labels)?.to_device(x.device())?;
    let r = x.rank();
    let (n, c) = (x.dims()[r - 2], x.dims()[r - 1]);
    let batch: usize = x.dims()[..r - 2].iter().product();
    let mut dims = x.dims()[..r - 2].to_vec();
    dims.extend_from_slice(&[segments, c]);
    let out = alloc(x.device(), &dims)?;
    // SAFETY: labels are in 0..segments (checked by the caller); shapes as documented in the kernel.
    unsafe {
        launch(
            x.device(),
            "index",
            "nvg_segment_mean_f32",
            LaunchConfig::for_elements(out.numel()),
            &[
                Arg::Ptr(addr(&x)?),
                Arg::Ptr(addr(&labels)?),
                Arg::Ptr(addr(&out)?),
                Arg::I32(batch as i32),
                Arg::I32(n as i32),
                Arg::I32(c as i32),
                Arg::I32(segments as i32),
            ],
        )?;
    }
    like(out, dtype)
}

/// Argmax over the last dimension (non-empty), as i64 `[..]` (or `[.., 1]` with `keepdim`).
pub(crate) fn argmax_last(x: &Tensor, keepdim: bool) -> Result<Tensor> {
    let x = f32_operand("argmax", x)?;
    let (rows, cols) = rows_cols(&x);
    let mut dims = x.dims().to_vec();
    if keepdim {
        *dims.last_mut().unwrap() = 1;
    } else {
        dims.pop();
    }
    let out = Tensor::from_parts(
        Storage::Cuda(CudaStorage::alloc(x.device(), DType::I64, rows)?),
        Layout::contiguous(&dims),
    );
    // SAFETY: x holds rows·cols floats, out rows i64.
    unsafe {
        launch(
            x.device(),
            "index",
            "nvg_argmax_rows_f32",
            LaunchConfig::for_elements(rows),
            &[
                Arg::Ptr(addr(&x)?),
                Arg::Ptr(addr(&out)?),
                Arg::I64(rows as i64),
                Arg::I32(cols as i32),
            ],
        )?;
    }
    Ok(out)
}

/// The im2col columns `[B, C·kh·kw, OH·OW]` of x `[B, C, H, W]` (shapes validated by the caller; only
/// the top and left padding matter: the output size says where the window stops).
pub(crate) fn im2col(
    x: &Tensor,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: Padding,
    oh: usize,
    ow: usize,
) -> Result<Tensor> {
    let x = f32_operand("conv2d", x)?;
    let [b, c, h, wd] = [x.dims()[0], x.dims()[1], x.dims()[2], x.dims()[3]];
    let cols = alloc(x.device(), &[b, c * kh * kw, oh * ow])?;
    let n = cols.numel();
    if n == 0 {
        return Ok(cols);
    }
    let mut args = vec![Arg::Ptr(addr(&x)?), Arg::Ptr(addr(&cols)?)];
    args.extend(window_args([b, c, h, wd], kh, kw, stride, pad, oh, ow));
    // SAFETY: shapes as documented in the kernel; cols holds B·C·kh·kw·OH·OW floats.
    unsafe {
        launch(
            x.device(),
            "image",
            "nvg_im2col_f32",
            LaunchConfig::for_elements(n),
            &args,
        )?
    };
    Ok(cols)
}

/// The window geometry arguments of the im2col / col2im kernels: b, c, h, w, kh, kw, stride, pad_top,
/// pad_left, oh, ow.
#[allow(clippy::too_many_arguments)]
fn window_args(
    [b, c, h, wd]: [usize; 4],
    kh: usize,
    kw: usize,
    stride: usize,
    pad: Padding,
    oh: usize,
    ow: usize,
) -> [Arg; 11] {
    [b, c, h, wd, kh, kw, stride, pad.top, pad.left, oh, ow].map(|v| Arg::I32(v as i32))
}

/// The adjoint of [`im2col`]: `[B, C, H, W]` from columns `[B, C·kh·kw, OH·OW]` (each input pixel the sum
/// of the column entries that read it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn col2im(
    cols: &Tensor,
    [b, c, h, wd]: [usize; 4],
    kh: usize,
    kw: usize,
    stride: usize,
    pad: Padding,
    oh: usize,
    ow: usize,
) -> Result<Tensor> {
    let cols = f32_operand("conv2d backward", cols)?;
    let out = alloc(cols.device(), &[b, c, h, wd])?;
    let n = out.numel();
    if n == 0 {
        return Ok(out);
    }
    let mut args = vec![Arg::Ptr(addr(&cols)?), Arg::Ptr(addr(&out)?)];
    args.extend(window_args([b, c, h, wd], kh, kw, stride, pad, oh, ow));
    // SAFETY: shapes as documented in the kernel; cols holds B·C·kh·kw·OH·OW floats, out B·C·H·W.
    unsafe {
        launch(
            cols.device(),
            "image",
            "nvg_col2im_f32",
            LaunchConfig::for_elements(n),
            &args,
        )?
    };
    Ok(out)
}

/// Direct 2-D convolution of x `[B, C, H, W]` with weight `[O, C, kh, kw]` (validated by the caller)
/// into `[B, O, oh, ow]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pad_top: usize,
    pad_left: usize,
    oh: usize,
    ow: usize,
    kernel: ConvKernel,
) -> Result<Tensor> {
    let dtype = x.dtype();
    let (x, w) = (f32_operand("conv2d", x)?, f32_operand("conv2d", weight)?);
    let bias = bias.map(|t| f32_operand("conv2d", t)).transpose()?;
    let [b, c, h, wd] = [x.dims()[0], x.dims()[1], x.dims()[2], x.dims()[3]];
    let [o, _, kh, kw] = [w.dims()[0], w.dims()[1], w.dims()[2], w.dims()[3]];
    let i = |v: usize| Arg::I32(v as i32);
    let cols_len = b * c * kh * kw * oh * ow;
    let use_im2col = match kernel {
        ConvKernel::Auto => cols_len <= IM2COL_MAX_ELEMS,
        ConvKernel::Direct => false,
        ConvKernel::Im2colGemm => true,
    };
    if use_im2col {
        let cols = im2col(
            &x,
            kh,
            kw,
            stride,
            Padding {
                top: pad_top,
                left: pad_left,
                bottom: 0,
                right: 0,
            },
            oh,
            ow,
        )?;
        // [O, C·kh·kw] · [B, C·kh·kw, OH·OW] → [B, O, OH·OW] (the weight broadcast over the batch).
        let mut out = w.reshape(&[o, c * kh * kw])?.matmul(&cols)?;
        if let Some(bias) = &bias {
            out = out.add(&bias.reshape(&[1, o, 1])?)?;
        }
        return like(out.reshape(&[b, o, oh, ow])?, dtype);
    }
    let out = alloc(x.device(), &[b, o, oh, ow])?;
    // SAFETY: shapes as documented in the kernel; bias holds O floats when present.
    unsafe {
        launch(
            x.device(),
            "image",
            "nvg_conv2d_f32",
            LaunchConfig::for_elements(out.numel()),
            &[
                Arg::Ptr(addr(&x)?),
                Arg::Ptr(addr(&w)?),
                Arg::Ptr(match &bias {
                    Some(t) => addr(t)?,
                    None => 0,
                }),
                Arg::Ptr(addr(&out)?),
                i(b),
                i(c),
                i(h),
                i(wd),
                i(o),
                i(kh),
                i(kw),
                i(stride),
                i(pad_top),
                i(pad_left),
                i(oh),
                i(ow),
            ],
        )?;
    }
    like(out, dtype)
}

/// Nearest-neighbour ×2 upsampling of `[B, C, H, W]`.
pub(crate) fn upsample2x(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = f32_operand("upsample_nearest2x", x)?;
    let [b, c, h, w] = [x.dims()[0], x.dims()[1], x.dims()[2], x.dims()[3]];
    let out = alloc(x.device(), &[b, c, 2 * h, 2 * w])?;
    // SAFETY: x holds b·c·h·w floats, out four times as many.
    unsafe {
        launch(
            x.device(),
            "image",
            "nvg_upsample2x_f32",
            LaunchConfig::for_elements(out.numel()),
            &[
                Arg::Ptr(addr(&x)?),
                Arg::Ptr(addr(&out)?),
                Arg::I64((b * c) as i64),
                Arg::I32(h as i32),
                Arg::I32(w as i32),
            ],
        )?;
    }
    like(out, dtype)
}

/// Group norm of `[B, C, ...]` (validated by the caller).
pub(crate) fn group_norm(
    x: &Tensor,
    groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = f32_operand("group_norm", x)?;
    let w = weight.map(|t| f32_operand("group_norm", t)).transpose()?;
    let bb = bias.map(|t| f32_operand("group_norm", t)).transpose()?;
    let (b, c) = (x.dims()[0], x.dims()[1]);
    let spatial: usize = x.dims()[2..].iter().product();
    let out = alloc(x.device(), x.dims())?;
    let ptr = |t: &Option<Tensor>| -> Result<u64> {
        match t {
            Some(t) => addr(t),
            None => Ok(0),
        }
    };
    // SAFETY: x/out hold b·c·spatial floats, weight and bias c when present.
    unsafe {
        launch(
            x.device(),
            "image",
            "nvg_group_norm_f32",
            LaunchConfig::per_row(b * groups, ROW_THREADS),
            &[
                Arg::Ptr(addr(&x)?),
                Arg::Ptr(ptr(&w)?),
                Arg::Ptr(ptr(&bb)?),
                Arg::Ptr(addr(&out)?),
                Arg::I32(b as i32),
                Arg::I32(c as i32),
                Arg::I64(spatial as i64),
                Arg::I32(groups as i32),
                Arg::F32(eps),
            ],
        )?;
    }
    like(out, dtype)
}
