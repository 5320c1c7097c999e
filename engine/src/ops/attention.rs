//! Scaled dot-product attention (fused, flash-style on the CPU; see `cpu::attention`).

use super::{same_device, want_float, want_int};
use crate::autograd::Op;
use crate::cpu::attention::{AttentionProblem, HeadView, attention};
use crate::cpu::simd;
use crate::error::{Error, Result, fmt_shape};
use crate::{DType, Tensor};

fn head_views(t: &Tensor) -> Vec<HeadView> {
    let [b, h, _, _] = <[usize; 4]>::try_from(t.dims()).unwrap();
    let s = t.layout().strides();
    let mut v = Vec::with_capacity(b * h);
    for bi in 0..b {
        for hi in 0..h {
            v.push(HeadView {
                offset: t.layout().offset() + bi * s[0] + hi * s[1],
                row_stride: s[2],
                col_stride: s[3],
            });
        }
    }
    v
}

/// Which kernel `sdpa` runs on a CUDA device (the CPU has one implementation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// The tiled kernel where it applies (equal q/k/v head dims of 16, 32 or 64), else the baseline.
    Auto,
    /// `nvg_attention_f32`: one thread per query, no shared memory; any head dims up to 128.
    Baseline,
    /// `nvg_attention_tiled_d{16,32,64}`: K/V tiles in shared memory; an error for other head dims.
    Tiled,
}

/// `softmax(q·kᵀ·scale)·v` per (batch, head): q `[B, H, Nq, D]`, k `[B, H, Nk, D]`, v `[B, H, Nk, Dv]`
/// → `[B, H, Nq, Dv]` (its storage is laid out `[B, Nq, H, Dv]`, so `.transpose(1, 2)` followed by a
/// reshape to `[B, Nq, H·Dv]` is free). `scale` defaults to 1/√D. Inputs may be strided views (e.g.
/// heads of a fused QKV projection).
///
/// `segments = Some((q_ids, k_ids))` (i64, `[B, Nq]` and `[B, Nk]`) lets a query attend only to keys
/// with the same id: independent sequences packed into one call. Every query must share its id with at
/// least one key (else its output is NaN, as a fully masked softmax is undefined).
pub fn sdpa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: Option<f32>,
    segments: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    sdpa_with_kernel(q, k, v, scale, segments, AttentionKernel::Auto)
}

/// [`sdpa`] with an explicit device kernel (benchmarks and conformance tests compare them).
pub fn sdpa_with_kernel(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: Option<f32>,
    segments: Option<(&Tensor, &Tensor)>,
    kernel: AttentionKernel,
) -> Result<Tensor> {
    let op = "sdpa";
    same_device(op, q, k)?;
    same_device(op, q, v)?;
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        want_float(op, name, t)?;
        if t.rank() != 4 {
            return Err(Error::shape(
                op,
                format!("{name} must be [B, H, N, D], got {}", fmt_shape(t.dims())),
            ));
        }
    }
    let [b, h, nq, d] = q.dims_n::<4>(op)?;
    let [bk, hk, nk, dk] = k.dims_n::<4>(op)?;
    let [bv, hv, nv, dv] = v.dims_n::<4>(op)?;
    if (bk, hk, dk) != (b, h, d) || (bv, hv, nv) != (b, h, nk) {
        return Err(Error::shape(
            op,
            format!(
                "q {}, k {}, v {} do not fit (want k [B, H, Nk, D], v [B, H, Nk, Dv])",
                fmt_shape(q.dims()),
                fmt_shape(k.dims()),
                fmt_shape(v.dims())
            ),
        ));
    }
    if let Some((qs, ks)) = segments {
        same_device(op, q, qs)?;
        same_device(op, q, ks)?;
        want_int(op, "query segment ids", qs)?;
        want_int(op, "key segment ids", ks)?;
        super::want_shape(op, "query segment ids", qs, &[b, nq])?;
        super::want_shape(op, "key segment ids", ks, &[b, nk])?;
    }
    let scale = scale.unwrap_or(1.0 / (d as f32).sqrt());
    if !q.device().is_cpu() {
        let out = crate::cuda::ops::sdpa(q, k, v, scale, segments, kernel)?;
        return Ok(match segments {
            None => out.record(&[q, k, v], || Op::Sdpa(q.clone(), k.clone(), v.clone(), scale)),
            Some(_) => out.record_unsupported("sdpa with segment ids", &[q, k, v]),
        });
    }
    let seg = match segments {
        None => None,
        Some((qs, ks)) => Some((qs.i64_data(op)?, ks.i64_data(op)?)),
    };
    let (qf, kf, vf) = (
        q.to_dtype(DType::F32)?,
        k.to_dtype(DType::F32)?,
        v.to_dtype(DType::F32)?,
    );
    let problem = AttentionProblem {
        batch: b,
        heads: h,
        nq,
        nk,
        d,
        dv,
        scale,
        q: qf.cpu_storage(op)?.as_slice::<f32>().unwrap(),
        k: kf.cpu_storage(op)?.as_slice::<f32>().unwrap(),
        v: vf.cpu_storage(op)?.as_slice::<f32>().unwrap(),
        q_heads: head_views(&qf),
        k_heads: head_views(&kf),
        v_heads: head_views(&vf),
        q_segments: seg.as_ref().map(|(qs, _)| &qs[..]),
        k_segments: seg.as_ref().map(|(_, ks)| &ks[..]),
    };
    let mut out = vec![0.0f32; b * nq * h * dv];
    if nk == 0 && nq > 0 {
        return Err(Error::shape(op, "attention over zero keys is undefined"));
    }
    attention(simd::isa(), &problem, &mut out);
    let out = Tensor::from_f32_as(out, &[b, nq, h, dv], q.dtype()).permute(&[0, 2, 1, 3])?;
    Ok(match segments {
        None => out.record(&[q, k, v], || Op::Sdpa(q.clone(), k.clone(), v.clone(), scale)),
        Some(_) => out.record_unsupported("sdpa with segment ids", &[q, k, v]),
    })
}
