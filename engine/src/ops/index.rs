//! Indexing ops: embedding lookup, index_select, gather, scatter-add, and NVG's segment mean (the mean
//! of the rows that share a cluster label). Every index is bounds-checked and a bad one is reported
//! with its value, its position and the valid range.

use super::{same_device, split_at_dim, want_int};
use crate::autograd::Op;
use crate::error::{Error, Result, fmt_shape};
use crate::storage::{CpuStorage, Element};
use crate::{DType, Tensor};
use half::{bf16, f16};

/// Checks `idx < size` for every index, naming the op, the position and the range.
/// The values of an index tensor on the host: borrowed for CPU tensors, copied from a device (ids are
/// validated on the host before any kernel reads them).
fn host_ids<'a>(op: &'static str, ids: &'a Tensor) -> Result<std::borrow::Cow<'a, [i64]>> {
    if ids.device().is_cpu() {
        ids.i64_data(op)
    } else {
        Ok(std::borrow::Cow::Owned(ids.to_i64_vec()?))
    }
}

fn check_indices(op: &'static str, what: &str, ids: &[i64], size: usize) -> Result<()> {
    if let Some((pos, &bad)) = ids.iter().enumerate().find(|&(_, &i)| i < 0 || i as usize >= size) {
        return Err(Error::index(
            op,
            format!("{what} {bad} at position {pos} is outside 0..{size}"),
        ));
    }
    Ok(())
}

/// Rows `ids` of `x` viewed as `[outer, size, inner]` along the middle axis.
fn select_typed<T: Element>(x: &[T], outer: usize, size: usize, inner: usize, ids: &[i64]) -> Vec<T> {
    let mut out = Vec::with_capacity(outer * ids.len() * inner);
    for o in 0..outer {
        for &i in ids {
            let start = (o * size + i as usize) * inner;
            out.extend_from_slice(&x[start..start + inner]);
        }
    }
    out
}

impl Tensor {
    /// Selects entries `ids` (1-d integer tensor) along `dim`; any dtype.
    pub fn index_select(&self, dim: isize, ids: &Tensor) -> Result<Tensor> {
        let out = self.index_select_untracked(dim, ids)?;
        Ok({
            let d = self.layout().dim_index("index_select", dim)?;
            out.record(&[self], || Op::IndexSelect(self.clone(), d, ids.clone()))
        })
    }

    fn index_select_untracked(&self, dim: isize, ids: &Tensor) -> Result<Tensor> {
        let op = "index_select";
        same_device(op, self, ids)?;
        want_int(op, "ids", ids)?;
        if ids.rank() != 1 {
            return Err(Error::shape(
                op,
                format!("ids must be 1-d, got {}", fmt_shape(ids.dims())),
            ));
        }
        let d = self.layout().dim_index(op, dim)?;
        let (outer, size, inner) = split_at_dim(self.dims(), d);
        let idv = host_ids(op, ids)?;
        check_indices(
            op,
            &format!("index into dim {d} of {}", fmt_shape(self.dims())),
            &idv,
            size,
        )?;
        if !self.device().is_cpu() {
            return crate::cuda::ops::index_select(self, d, ids);
        }
        let mut dims = self.dims().to_vec();
        dims[d] = idv.len();
        let storage = match self.dtype() {
            DType::F32 => CpuStorage::F32(select_typed(&self.typed_data::<f32>(op)?, outer, size, inner, &idv)),
            DType::BF16 => CpuStorage::BF16(select_typed(&self.typed_data::<bf16>(op)?, outer, size, inner, &idv)),
            DType::F16 => CpuStorage::F16(select_typed(&self.typed_data::<f16>(op)?, outer, size, inner, &idv)),
            DType::I64 => CpuStorage::I64(select_typed(&self.typed_data::<i64>(op)?, outer, size, inner, &idv)),
            DType::U8 => CpuStorage::U8(select_typed(&self.typed_data::<u8>(op)?, outer, size, inner, &idv)),
        };
        Ok(Tensor::from_cpu(storage, &dims))
    }

    /// Embedding lookup: `self` is a `[rows, dim]` table, `ids` any-shaped integer tensor;
    /// returns `[ids.dims..., dim]`.
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        let op = "embedding";
        let [_, width] = self.dims_n::<2>(op)?;
        want_int(op, "ids", ids)?;
        let flat = ids.reshape(&[ids.numel()])?;
        let rows = self.index_select(0, &flat).map_err(|e| match e {
            Error::Index { msg, .. } => Error::index(op, msg.replace("index into dim 0 of", "row id for table")),
            e => e,
        })?;
        let mut dims = ids.dims().to_vec();
        dims.push(width);
        rows.reshape(&dims)
    }

    /// PyTorch `gather`: `out[.., j, ..] = self[.., index[.., j, ..], ..]` along `dim`; `index` has the
    /// rank of `self`, and outside `dim` its sizes must not exceed those of `self`. Float or i64.
    pub fn gather(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
        let out = self.gather_untracked(dim, index)?;
        Ok({
            let d = self.layout().dim_index("gather", dim)?;
            out.record(&[self], || Op::Gather(self.clone(), d, index.clone()))
        })
    }

    fn gather_untracked(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
        let op = "gather";
        same_device(op, self, index)?;
        want_int(op, "index", index)?;
        let d = check_gather(op, self, dim, index)?;
        if !self.device().is_cpu() {
            return crate::cuda::gather::gather(self, d, index);
        }
        let offsets = gather_plan(op, self, d, index)?;
        // A pure copy: every dtype keeps its exact values.
        fn pick<T: Element>(t: &Tensor, offsets: &[usize]) -> Result<Vec<T>> {
            let x = t.typed_data::<T>("gather")?;
            Ok(offsets.iter().map(|&o| x[o]).collect())
        }
        let storage = match self.dtype() {
            DType::F32 => CpuStorage::F32(pick(self, &offsets)?),
            DType::BF16 => CpuStorage::BF16(pick(self, &offsets)?),
            DType::F16 => CpuStorage::F16(pick(self, &offsets)?),
            DType::I64 => CpuStorage::I64(pick(self, &offsets)?),
            DType::U8 => CpuStorage::U8(pick(self, &offsets)?),
        };
        Ok(Tensor::from_cpu(storage, index.dims()))
    }

    /// PyTorch `scatter_add`: a copy of `self` with `src[.., j, ..]` added at
    /// `[.., index[.., j, ..], ..]` along `dim`. `index` and `src` have the same shape. Float or i64.
    pub fn scatter_add(&self, dim: isize, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        let out = self.scatter_add_untracked(dim, index, src)?;
        Ok(out.record_unsupported("scatter_add", &[self, src]))
    }

    fn scatter_add_untracked(&self, dim: isize, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        let op = "scatter_add";
        same_device(op, self, index)?;
        same_device(op, self, src)?;
        want_int(op, "index", index)?;
        if src.dtype() != self.dtype() {
            return Err(Error::dtype(
                op,
                format!("src of dtype {} like self", self.dtype()),
                src.dtype(),
            ));
        }
        if index.dims() != src.dims() {
            return Err(Error::shape(
                op,
                format!(
                    "index {} and src {} differ in shape",
                    fmt_shape(index.dims()),
                    fmt_shape(src.dims())
                ),
            ));
        }
        let d = check_gather(op, self, dim, index)?;
        if !self.device().is_cpu() {
            return crate::cuda::gather::scatter_add(self, d, index, src);
        }
        let offsets = gather_plan(op, self, d, index)?;
        if self.dtype() == DType::I64 {
            let mut out = self.i64_data(op)?.into_owned();
            let s = src.i64_data(op)?;
            for (&o, &v) in offsets.iter().zip(s.iter()) {
                out[o] += v;
            }
            return Tensor::from_vec(out, self.dims());
        }
        let mut out = self.f32_data(op)?.into_owned();
        let s = src.f32_data(op)?;
        for (&o, &v) in offsets.iter().zip(s.iter()) {
            out[o] += v;
        }
        Ok(Tensor::from_f32_as(out, self.dims(), self.dtype()))
    }

    /// Mean of the rows of `self` (`[..., N, C]`) grouped by `labels` (`[..., N]`, values in
    /// `0..num_segments`) → `[..., num_segments, C]`. A segment with no rows gives zeros. This is NVG's
    /// cluster mean: the per-token residuals of a stage averaged inside each structure cluster.
    pub fn segment_mean(&self, labels: &Tensor, num_segments: usize) -> Result<Tensor> {
        let out = self.segment_mean_untracked(labels, num_segments)?;
        Ok(out.record(&[self], || Op::SegmentMean(self.clone(), labels.clone(), num_segments)))
    }

    fn segment_mean_untracked(&self, labels: &Tensor, num_segments: usize) -> Result<Tensor> {
        let op = "segment_mean";
        same_device(op, self, labels)?;
        want_int(op, "labels", labels)?;
        let r = self.rank();
        if r < 2 || labels.dims() != &self.dims()[..r - 1] {
            return Err(Error::shape(
                op,
                format!(
                    "labels {} must match the leading dims of values {} ([..., N] vs [..., N, C])",
                    fmt_shape(labels.dims()),
                    fmt_shape(self.dims())
                ),
            ));
        }
        let lab = host_ids(op, labels)?;
        check_indices(op, "label", &lab, num_segments)?;
        if !self.device().is_cpu() {
            return crate::cuda::ops::segment_mean(self, labels, num_segments);
        }
        let (n, c) = (self.dims()[r - 2], self.dims()[r - 1]);
        let batch: usize = self.dims()[..r - 2].iter().product();
        let x = self.f32_data(op)?;
        let mut out = vec![0.0f32; batch * num_segments * c];
        let mut counts = vec![0usize; num_segments];
        for b in 0..batch {
            counts.fill(0);
            let ob = &mut out[b * num_segments * c..(b + 1) * num_segments * c];
            for t in 0..n {
                let s = lab[b * n + t] as usize;
                counts[s] += 1;
                let row = &x[(b * n + t) * c..(b * n + t + 1) * c];
                for (o, &v) in ob[s * c..(s + 1) * c].iter_mut().zip(row) {
                    *o += v;
                }
            }
            for (s, &cnt) in counts.iter().enumerate() {
                if cnt > 0 {
                    for o in &mut ob[s * c..(s + 1) * c] {
                        *o /= cnt as f32;
                    }
                }
            }
        }
        let mut dims = self.dims()[..r - 2].to_vec();
        dims.extend_from_slice(&[num_segments, c]);
        Ok(Tensor::from_f32_as(out, &dims, self.dtype()))
    }
}

/// Validates a gather/scatter along `dim` and returns, for every position of `index`, the offset of the
/// element of (packed) `src` it addresses.
/// Validates a gather / scatter (shapes and every index value; device indices are read back) and
/// returns the resolved dim.
fn check_gather(op: &'static str, src: &Tensor, dim: isize, index: &Tensor) -> Result<usize> {
    let d = src.layout().dim_index(op, dim)?;
    check_gather_shapes(op, src.dims(), index.dims(), d)?;
    check_indices(
        op,
        &format!("index into dim {d} of {}", fmt_shape(src.dims())),
        &host_ids(op, index)?,
        src.dims()[d],
    )?;
    Ok(d)
}

/// The packed-source offset of every index position (CPU path; `check_gather` first).
fn gather_plan(op: &'static str, src: &Tensor, d: usize, index: &Tensor) -> Result<Vec<usize>> {
    Ok(gather_offsets(src.dims(), index.dims(), &index.i64_data(op)?, d))
}

/// For every position of `index` (row-major), the offset in a packed tensor of shape `src` of the
/// element it addresses: its own coordinates, with coordinate `dim` replaced by the index value.
fn gather_offsets(src: &[usize], index: &[usize], idx: &[i64], dim: usize) -> Vec<usize> {
    let strides = crate::layout::contiguous_strides(src);
    let mut pos = vec![0usize; index.len()];
    let mut out = Vec::with_capacity(idx.len());
    for &i in idx {
        let off: usize = pos
            .iter()
            .enumerate()
            .map(|(a, &p)| if a == dim { i as usize } else { p } * strides[a])
            .sum();
        out.push(off);
        for a in (0..pos.len()).rev() {
            pos[a] += 1;
            if pos[a] < index[a] {
                break;
            }
            pos[a] = 0;
        }
    }
    out
}

fn check_gather_shapes(op: &'static str, src: &[usize], index: &[usize], dim: usize) -> Result<()> {
    let ok = src.len() == index.len()
        && src
            .iter()
            .zip(index)
            .enumerate()
            .all(|(a, (&s, &i))| a == dim || i <= s);
    if !ok {
        return Err(Error::shape(
            op,
            format!(
                "index shape {} does not fit tensor shape {} outside dim {dim}",
                fmt_shape(index),
                fmt_shape(src)
            ),
        ));
    }
    Ok(())
}
