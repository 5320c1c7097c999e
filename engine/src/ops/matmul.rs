//! Matrix products: batched `matmul` with broadcast batch dims, and `linear` (x·Wᵀ + b with PyTorch's
//! `[out, in]` weight layout). Strided operands (transposes, heads of a fused QKV tensor) are read in
//! place by the GEMM's packing; only the output is allocated.

use super::{same_device, want_float};
use crate::autograd::Op;
use crate::cpu::gemm::{self, Strided};
use crate::cpu::simd;
use crate::cpu::uninit::vec_written_by;
use crate::error::{Error, Result, fmt_shape};
use crate::layout::broadcast_shapes;
use crate::{DType, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// A 2-D strided view of the last two dims of `t` at storage offset `offset`.
fn mat_view<'a>(data: &'a [f32], t: &Tensor, offset: usize) -> Strided<'a> {
    let r = t.rank();
    let (rows, cols) = (t.dims()[r - 2], t.dims()[r - 1]);
    let s = t.layout().strides();
    Strided::new(data, offset, rows, cols, s[r - 2], s[r - 1])
}

/// The f32 storage of `t` if it is an f32 tensor (so strided views can be read in place); otherwise a
/// packed f32 copy and the tensor viewing it.
fn f32_operand(t: &Tensor) -> Result<Tensor> {
    if t.dtype() == DType::F32 {
        Ok(t.clone())
    } else {
        t.to_dtype(DType::F32)
    }
}

/// Storage offsets of the start of every matrix of a batched view broadcast to `batch` dims.
fn batch_offsets(t: &Tensor, batch: &[usize]) -> Result<Vec<usize>> {
    let r = t.rank();
    let own = &t.dims()[..r - 2];
    let l = crate::layout::Layout::new(
        own.to_vec(),
        t.layout().strides()[..r - 2].to_vec(),
        t.layout().offset(),
    );
    let b = l.broadcast_to("matmul", batch)?;
    if batch.is_empty() {
        return Ok(vec![t.layout().offset()]);
    }
    Ok(b.offsets())
}

/// If all but the last dim of `t` merge into one strided dimension, its stride (1 for a single row).
fn rows_stride(t: &Tensor) -> Option<usize> {
    let r = t.rank();
    let (dims, strides) = (&t.dims()[..r - 1], &t.layout().strides()[..r - 1]);
    let mut run: Option<(usize, usize)> = None; // (size, stride) of the merged leading dims
    for (&d, &s) in dims.iter().zip(strides) {
        if d == 1 {
            continue;
        }
        run = match run {
            None => Some((d, s)),
            Some((rd, rs)) if rs == s * d => Some((rd * d, s)),
            Some(_) => return None,
        };
    }
    Some(run.map_or(1, |(_, s)| s))
}

impl Tensor {
    /// `[..., m, k] · [..., k, n] → [..., m, n]`; batch dims broadcast (NumPy rules). Float inputs of
    /// the same dtype; the result has that dtype.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        let out = self.matmul_untracked(rhs, false)?;
        Ok(out.record(&[self, rhs], || Op::Matmul(self.clone(), rhs.clone())))
    }

    /// `self · rhs` with both operands rounded to bf16 and products accumulated in f32: the precision of
    /// the GPU's tensor-core path (`mma.sync` bf16), which device tensors use; on the CPU the operands
    /// are rounded and the f32 GEMM runs. No backward rule.
    pub fn matmul_bf16(&self, rhs: &Tensor) -> Result<Tensor> {
        let out = self.matmul_untracked(rhs, true)?;
        Ok(out.record_unsupported("matmul_bf16", &[self, rhs]))
    }

    fn matmul_untracked(&self, rhs: &Tensor, bf16_inputs: bool) -> Result<Tensor> {
        let op = "matmul";
        same_device(op, self, rhs)?;
        want_float(op, "lhs", self)?;
        want_float(op, "rhs", rhs)?;
        if self.dtype() != rhs.dtype() {
            return Err(Error::dtype(
                op,
                format!("rhs of dtype {} like lhs", self.dtype()),
                rhs.dtype(),
            ));
        }
        if self.rank() < 2 || rhs.rank() < 2 {
            return Err(Error::shape(
                op,
                format!(
                    "operands must be at least 2-d, got {} and {}",
                    fmt_shape(self.dims()),
                    fmt_shape(rhs.dims())
                ),
            ));
        }
        let (ra, rb) = (self.rank(), rhs.rank());
        let (m, k) = (self.dims()[ra - 2], self.dims()[ra - 1]);
        let (k2, n) = (rhs.dims()[rb - 2], rhs.dims()[rb - 1]);
        if k != k2 {
            return Err(Error::shape(
                op,
                format!(
                    "inner dimensions differ: {} · {}",
                    fmt_shape(self.dims()),
                    fmt_shape(rhs.dims())
                ),
            ));
        }
        let batch = broadcast_shapes(op, &self.dims()[..ra - 2], &rhs.dims()[..rb - 2]).map_err(|_| {
            Error::shape(
                op,
                format!(
                    "batch dims of {} and {} do not broadcast",
                    fmt_shape(self.dims()),
                    fmt_shape(rhs.dims())
                ),
            )
        })?;
        if !self.device().is_cpu() || !rhs.device().is_cpu() {
            return crate::cuda::ops::matmul(self, rhs, &batch, bf16_inputs);
        }
        if bf16_inputs {
            let round = |t: &Tensor| t.to_dtype(DType::BF16)?.to_dtype(DType::F32);
            return round(self)?.matmul_untracked(&round(rhs)?, false);
        }
        let a = f32_operand(self)?;
        let b = f32_operand(rhs)?;
        let (oa, ob) = (batch_offsets(&a, &batch)?, batch_offsets(&b, &batch)?);
        let ad = a.cpu_storage(op)?.as_slice::<f32>().unwrap();
        let bd = b.cpu_storage(op)?.as_slice::<f32>().unwrap();
        let nb = oa.len();
        let isa = simd::isa();
        let one = |(i, c): (usize, &mut [MaybeUninit<f32>])| {
            let (av, bv) = (mat_view(ad, &a, oa[i]), mat_view(bd, &b, ob[i]));
            gemm::gemm_uninit(isa, m, n, k, &av, &bv, c, n);
        };
        // SAFETY: each of the nb chunks of m·n elements is one product, which `gemm_uninit` writes in
        // full (row stride n: no gaps); with m·n == 0 there is nothing to write.
        let out = unsafe {
            vec_written_by(nb * m * n, |out| {
                if m * n == 0 {
                    return;
                }
                // Many small products: one per task. Few large ones: the GEMM parallelises inside.
                if nb > 1 && m * n * k < (1 << 22) {
                    out.par_chunks_mut(m * n).enumerate().for_each(one);
                } else {
                    out.chunks_mut(m * n).enumerate().for_each(one);
                }
            })
        };
        let mut dims = batch;
        dims.extend_from_slice(&[m, n]);
        Ok(Tensor::from_f32_as(out, &dims, self.dtype()))
    }

    /// `x · Wᵀ + b` over the last dim: x `[..., in]`, weight `[out, in]`, bias `[out]` → `[..., out]`.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let out = self.linear_untracked(weight, bias)?;
        Ok(match bias {
            Some(b) => out.record(&[self, weight, b], || {
                Op::Linear(self.clone(), weight.clone(), Some(b.clone()))
            }),
            None => out.record(&[self, weight], || Op::Linear(self.clone(), weight.clone(), None)),
        })
    }

    fn linear_untracked(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let op = "linear";
        same_device(op, self, weight)?;
        want_float(op, "input", self)?;
        want_float(op, "weight", weight)?;
        let [out_f, in_f] = weight.dims_n::<2>(op)?;
        let last = self.dims().last().copied().unwrap_or(0);
        if self.rank() == 0 || last != in_f {
            return Err(Error::shape(
                op,
                format!(
                    "input {} does not end in {in_f} features of weight {}",
                    fmt_shape(self.dims()),
                    fmt_shape(weight.dims())
                ),
            ));
        }
        if let Some(b) = bias {
            same_device(op, self, b)?;
            want_float(op, "bias", b)?;
            super::want_shape(op, "bias", b, &[out_f])?;
        }
        if !self.device().is_cpu() {
            // x · Wᵀ (+ b) from the device's GEMM and broadcast add; the Linear node is recorded by
            // the caller, so the pieces are computed untracked.
            let y = self.detach().matmul(&weight.detach().transpose(0, 1)?)?;
            return match bias {
                Some(b) => y.add(&b.detach()),
                None => Ok(y),
            };
        }
        let rows: usize = self.dims()[..self.rank() - 1].iter().product();
        // x as a [rows, in] matrix: read in place when its leading dims collapse into one stride.
        let x = f32_operand(self)?;
        let x = match rows_stride(&x) {
            Some(_) => x,
            None => x.contiguous()?,
        };
        let row_stride = rows_stride(&x).unwrap_or(in_f);
        let w = f32_operand(weight)?;
        let xd = x.cpu_storage(op)?.as_slice::<f32>().unwrap();
        let wd = w.cpu_storage(op)?.as_slice::<f32>().unwrap();
        let a = Strided::new(
            xd,
            x.layout().offset(),
            rows,
            in_f,
            row_stride,
            *x.layout().strides().last().unwrap(),
        );
        let bt = mat_view(wd, &w, w.layout().offset()).t();
        let isa = simd::isa();
        let out = match bias {
            Some(b) if out_f > 0 => {
                let bv = b.f32_data(op)?;
                // SAFETY: every row of `out_f` elements is a copy of the bias.
                let mut out = unsafe {
                    vec_written_by(rows * out_f, |out| {
                        for row in out.chunks_mut(out_f) {
                            row.write_copy_of_slice(&bv);
                        }
                    })
                };
                gemm::matmul(isa, a, bt, &mut out, out_f, true);
                out
            }
            // SAFETY: `gemm_uninit` writes the whole rows × out_f block (row stride out_f: no gaps).
            _ => unsafe {
                vec_written_by(rows * out_f, |out| {
                    gemm::gemm_uninit(isa, rows, out_f, in_f, &a, &bt, out, out_f);
                })
            },
        };
        let mut dims = self.dims().to_vec();
        *dims.last_mut().unwrap() = out_f;
        Ok(Tensor::from_f32_as(out, &dims, self.dtype()))
    }
}
