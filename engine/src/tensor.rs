//! The `Tensor` type: shared storage plus a strided view of it. Cloning a tensor is cheap (the storage
//! is reference counted); views share storage; ops return new tensors and never mutate their inputs.

use crate::autograd::{Node, Op};
use crate::cpu::uninit::vec_written_by;
use crate::cuda;
use crate::error::{Error, Result, fmt_shape};
use crate::layout::Layout;
use crate::storage::{CpuStorage, Element, Storage};
use crate::{DType, Device};
use half::{bf16, f16};
use rayon::prelude::*;
use std::borrow::Cow;
use std::fmt;
use std::mem::MaybeUninit;
use std::sync::Arc;

/// An n-dimensional array on a device.
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    layout: Layout,
    /// How the tensor was computed, when it is part of an autograd graph (see `autograd`).
    pub(crate) node: Option<Arc<Node>>,
}

/// Copies the elements of a strided view into a packed row-major vector.
pub(crate) fn gather_strided<T: Copy + Default + Send + Sync>(src: &[T], layout: &Layout) -> Vec<T> {
    let n = layout.numel();
    let copy_row = |dst: &mut [MaybeUninit<T>], start: usize, stride: usize| {
        if stride == 1 {
            dst.write_copy_of_slice(&src[start..start + dst.len()]);
        } else {
            for (i, d) in dst.iter_mut().enumerate() {
                d.write(src[start + i * stride]);
            }
        }
    };
    if n < PAR_COPY_ELEMS {
        let mut out = Vec::with_capacity(n);
        layout.for_each_row(|start, len, stride| {
            if stride == 1 {
                out.extend_from_slice(&src[start..start + len]);
            } else {
                out.extend((0..len).map(|i| src[start + i * stride]));
            }
        });
        return out;
    }
    // Large copies run in parallel, row by row (rows all have the same length and stride).
    let (mut starts, mut row_len, mut row_stride) = (Vec::new(), 0, 0);
    layout.for_each_row(|start, len, stride| {
        starts.push(start);
        (row_len, row_stride) = (len, stride);
    });
    assert_eq!(
        starts.len() * row_len,
        n,
        "gather_strided: the rows do not cover the tensor"
    );
    let min_rows = (4096 / row_len.max(1)).max(1);
    // SAFETY: the rows cover all n elements (asserted above) and each chunk of `row_len` is one row,
    // copied in full by `copy_row`.
    unsafe {
        vec_written_by(n, |out| {
            out.par_chunks_mut(row_len)
                .zip(starts.par_iter())
                .with_min_len(min_rows)
                .for_each(|(dst, &start)| copy_row(dst, start, row_stride));
        })
    }
}

/// Element count above which copies are split across threads.
const PAR_COPY_ELEMS: usize = 1 << 16;

fn convert_slice<S: Element, D: Element>(src: &[S]) -> Vec<D> {
    src.iter().map(|&x| D::from_f32(x.to_f32())).collect()
}

impl Tensor {
    // ----------------------------------------------------------------------------------------------
    // Construction
    // ----------------------------------------------------------------------------------------------

    /// The storage (for device backends).
    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    pub(crate) fn from_parts(storage: Storage, layout: Layout) -> Tensor {
        Tensor {
            storage: Arc::new(storage),
            layout,
            node: None,
        }
    }

    pub(crate) fn from_cpu(data: CpuStorage, dims: &[usize]) -> Tensor {
        Tensor::from_parts(Storage::Cpu(data), Layout::contiguous(dims))
    }

    /// A CPU tensor owning `data`, laid out row-major with shape `dims`.
    pub fn from_vec<T: Element>(data: Vec<T>, dims: &[usize]) -> Result<Tensor> {
        let n: usize = dims.iter().product();
        if data.len() != n {
            return Err(Error::shape(
                "from_vec",
                format!(
                    "{} elements do not fill shape {} ({n} elements)",
                    data.len(),
                    fmt_shape(dims)
                ),
            ));
        }
        Ok(Tensor::from_cpu(T::into_storage(data), dims))
    }

    /// A CPU tensor holding a copy of `data`.
    pub fn from_slice<T: Element>(data: &[T], dims: &[usize]) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), dims)
    }

    /// A tensor whose every element is `value` (converted to `dtype`).
    pub fn full(value: f32, dims: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        cuda::check_device("full", device)?;
        if !device.is_cpu() {
            return Tensor::full(value, dims, dtype, Device::Cpu)?.to_device(device);
        }
        let n: usize = dims.iter().product();
        let data = match dtype {
            DType::F32 => CpuStorage::F32(vec![value; n]),
            DType::BF16 => CpuStorage::BF16(vec![bf16::from_f32(value); n]),
            DType::F16 => CpuStorage::F16(vec![f16::from_f32(value); n]),
            DType::I64 => CpuStorage::I64(vec![value as i64; n]),
            DType::U8 => CpuStorage::U8(vec![u8::from_f32(value); n]),
        };
        Ok(Tensor::from_cpu(data, dims))
    }

    pub fn zeros(dims: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        cuda::check_device("zeros", device)?;
        Tensor::full(0.0, dims, dtype, device)
    }

    pub fn ones(dims: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        cuda::check_device("ones", device)?;
        Tensor::full(1.0, dims, dtype, device)
    }

    /// A 0-dimensional f32 tensor.
    pub fn scalar(value: f32) -> Tensor {
        Tensor::from_cpu(CpuStorage::F32(vec![value]), &[])
    }

    /// `[start, start+1, ..., end-1]` as i64.
    pub fn arange(start: i64, end: i64) -> Tensor {
        let v: Vec<i64> = (start..end.max(start)).collect();
        let n = v.len();
        Tensor::from_cpu(CpuStorage::I64(v), &[n])
    }

    /// A tensor backed by `storage` (used by the safetensors loader for zero-copy views).
    pub(crate) fn from_storage(storage: CpuStorage, dims: &[usize]) -> Tensor {
        Tensor::from_cpu(storage, dims)
    }

    // ----------------------------------------------------------------------------------------------
    // Inspection
    // ----------------------------------------------------------------------------------------------

    pub fn dims(&self) -> &[usize] {
        self.layout.dims()
    }
    pub fn rank(&self) -> usize {
        self.layout.rank()
    }
    pub fn numel(&self) -> usize {
        self.layout.numel()
    }
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }
    pub fn device(&self) -> Device {
        self.storage.device()
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }

    /// Size of dimension `dim` (negative counts from the end).
    pub fn dim(&self, dim: isize) -> Result<usize> {
        Ok(self.dims()[self.layout.dim_index("dim", dim)?])
    }

    /// The dims as a fixed-size array, or an error naming `op` if the rank differs.
    pub fn dims_n<const N: usize>(&self, op: &'static str) -> Result<[usize; N]> {
        self.dims().try_into().map_err(|_| {
            Error::shape(
                op,
                format!("expected a {N}-d tensor, got shape {}", fmt_shape(self.dims())),
            )
        })
    }

    /// Whether the data lives in a memory-mapped file (zero-copy load).
    pub fn is_mapped(&self) -> bool {
        matches!(&*self.storage, Storage::Cpu(c) if c.is_mapped())
    }

    /// Whether two tensors share storage (views of one another).
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// The CPU storage, or the error of `op` on this tensor's device.
    pub(crate) fn cpu_storage(&self, op: &'static str) -> Result<&CpuStorage> {
        match &*self.storage {
            Storage::Cpu(c) => Ok(c),
            Storage::Cuda(c) => Err(Error::Unsupported {
                op,
                device: c.device(),
                msg: "no kernel for this op on the device yet; copy the tensor with to_device(Device::Cpu)".to_string(),
            }),
        }
    }

    // ----------------------------------------------------------------------------------------------
    // Data access
    // ----------------------------------------------------------------------------------------------

    /// The elements of this view, row-major, in the tensor's own type `T` (an error if the dtype differs).
    /// Device tensors are copied to the CPU first.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if !self.device().is_cpu() {
            return self.to_device(Device::Cpu)?.to_vec();
        }
        Ok(self.typed_data::<T>("to_vec")?.into_owned())
    }

    /// The elements converted to f32 (any dtype; integers above 2^24 round).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        if !self.device().is_cpu() {
            return self.to_device(Device::Cpu)?.to_f32_vec();
        }
        if self.dtype().is_int() {
            return Ok(self.i64_data("to_f32_vec")?.iter().map(|&x| x as f32).collect());
        }
        Ok(self.f32_data("to_f32_vec")?.into_owned())
    }

    /// The elements converted to i64 (integer dtypes only; floats are refused to avoid silent truncation).
    pub fn to_i64_vec(&self) -> Result<Vec<i64>> {
        if !self.device().is_cpu() {
            return self.to_device(Device::Cpu)?.to_i64_vec();
        }
        Ok(self.i64_data("to_i64_vec")?.into_owned())
    }

    /// The single value of a one-element tensor, as f32.
    pub fn to_scalar(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "to_scalar",
                format!("expected one element, got shape {}", fmt_shape(self.dims())),
            ));
        }
        Ok(self.to_f32_vec()?[0])
    }

    /// Row-major elements of type `T`, borrowed when the view is already packed.
    pub(crate) fn typed_data<T: Element>(&self, op: &'static str) -> Result<Cow<'_, [T]>> {
        let st = self.cpu_storage(op)?;
        let src = st
            .as_slice::<T>()
            .ok_or_else(|| Error::dtype(op, format!("dtype {}", T::DTYPE), st.dtype()))?;
        Ok(if self.layout.is_contiguous() {
            let off = self.layout.offset();
            Cow::Borrowed(&src[off..off + self.numel()])
        } else {
            Cow::Owned(gather_strided(src, &self.layout))
        })
    }

    /// Row-major values converted to f32 (borrowed for packed f32 views). Integer tensors are refused:
    /// float ops must not silently accept ids.
    pub(crate) fn f32_data(&self, op: &'static str) -> Result<Cow<'_, [f32]>> {
        match self.dtype() {
            DType::F32 => self.typed_data::<f32>(op),
            DType::BF16 => Ok(Cow::Owned(convert_slice(&self.typed_data::<bf16>(op)?))),
            DType::F16 => Ok(Cow::Owned(convert_slice(&self.typed_data::<f16>(op)?))),
            dt => Err(Error::dtype(op, "a float tensor (f32, bf16, f16)", dt)),
        }
    }

    /// Row-major values of an integer tensor as i64.
    pub(crate) fn i64_data(&self, op: &'static str) -> Result<Cow<'_, [i64]>> {
        match self.dtype() {
            DType::I64 => self.typed_data::<i64>(op),
            DType::U8 => Ok(Cow::Owned(
                self.typed_data::<u8>(op)?.iter().map(|&x| x as i64).collect(),
            )),
            dt => Err(Error::dtype(op, "an integer tensor (i64, u8)", dt)),
        }
    }

    /// Builds an output tensor from f32 values, stored as `dtype` (a float dtype).
    pub(crate) fn from_f32_as(data: Vec<f32>, dims: &[usize], dtype: DType) -> Tensor {
        let storage = match dtype {
            DType::BF16 => CpuStorage::BF16(convert_slice(&data)),
            DType::F16 => CpuStorage::F16(convert_slice(&data)),
            _ => CpuStorage::F32(data),
        };
        Tensor::from_cpu(storage, dims)
    }

    // ----------------------------------------------------------------------------------------------
    // Conversion and copies
    // ----------------------------------------------------------------------------------------------

    /// Converts to another dtype (float ↔ float rounds to nearest; float → int truncates toward zero;
    /// → u8 also clamps to 0..=255).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        if !self.device().is_cpu() {
            let out = cuda::ops::cast(self, dtype)?;
            return Ok(if self.dtype().is_float() && dtype.is_float() {
                out.record(&[self], || Op::Copy(self.clone()))
            } else {
                out
            });
        }
        let dims = self.dims().to_vec();
        let st = self.cpu_storage("to_dtype")?;
        let storage = match (st.dtype(), dtype) {
            (s, d) if s.is_float() && d.is_float() => {
                let out = Tensor::from_f32_as(self.f32_data("to_dtype")?.into_owned(), &dims, d);
                return Ok(out.record(&[self], || Op::Copy(self.clone())));
            }
            (s, DType::I64) if s.is_float() => {
                CpuStorage::I64(self.f32_data("to_dtype")?.iter().map(|&x| x as i64).collect())
            }
            (s, DType::U8) if s.is_float() => {
                CpuStorage::U8(self.f32_data("to_dtype")?.iter().map(|&x| u8::from_f32(x)).collect())
            }
            (DType::U8, DType::I64) => CpuStorage::I64(self.i64_data("to_dtype")?.into_owned()),
            (DType::I64, DType::U8) => CpuStorage::U8(
                self.i64_data("to_dtype")?
                    .iter()
                    .map(|&x| x.clamp(0, 255) as u8)
                    .collect(),
            ),
            (_, d) => {
                // Integer → float.
                let v: Vec<f32> = self.i64_data("to_dtype")?.iter().map(|&x| x as f32).collect();
                return Ok(Tensor::from_f32_as(v, &dims, d));
            }
        };
        Ok(Tensor::from_cpu(storage, &dims))
    }

    /// Moves the tensor to `device` (a no-op when it is already there).
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        cuda::check_device("to_device", device)?;
        let packed = self.contiguous()?;
        let dims = self.dims().to_vec();
        let out = match (&*packed.storage, device) {
            (Storage::Cpu(c), _) => {
                let bytes = c.bytes();
                let start = packed.layout.offset() * c.dtype().size();
                let len = packed.numel() * c.dtype().size();
                let st = cuda::CudaStorage::from_bytes(device, c.dtype(), packed.numel(), &bytes[start..start + len])?;
                Tensor::from_parts(Storage::Cuda(st), Layout::contiguous(&dims))
            }
            (Storage::Cuda(g), Device::Cpu) => {
                let bytes = g.to_bytes()?;
                let start = packed.layout.offset() * g.dtype().size();
                let data = CpuStorage::from_bytes(g.dtype(), &bytes[start..start + packed.numel() * g.dtype().size()]);
                Tensor::from_cpu(data, &dims)
            }
            (Storage::Cuda(_), _) => return self.to_device(Device::Cpu)?.to_device(device),
        };
        Ok(out.record(&[self], || Op::Copy(self.clone())))
    }

    /// A packed row-major copy, or `self` if the view is already packed.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        if !self.device().is_cpu() {
            let out = cuda::ops::contiguous(self)?;
            return Ok(out.record(&[self], || Op::Copy(self.clone())));
        }
        let st = self.cpu_storage("contiguous")?;
        let l = &self.layout;
        let data = match st {
            CpuStorage::Mapped(_) => match st.dtype() {
                DType::F32 => CpuStorage::F32(gather_strided(st.as_slice::<f32>().unwrap(), l)),
                DType::BF16 => CpuStorage::BF16(gather_strided(st.as_slice::<bf16>().unwrap(), l)),
                DType::F16 => CpuStorage::F16(gather_strided(st.as_slice::<f16>().unwrap(), l)),
                DType::I64 => CpuStorage::I64(gather_strided(st.as_slice::<i64>().unwrap(), l)),
                DType::U8 => CpuStorage::U8(gather_strided(st.as_slice::<u8>().unwrap(), l)),
            },
            CpuStorage::F32(v) => CpuStorage::F32(gather_strided(v, l)),
            CpuStorage::BF16(v) => CpuStorage::BF16(gather_strided(v, l)),
            CpuStorage::F16(v) => CpuStorage::F16(gather_strided(v, l)),
            CpuStorage::I64(v) => CpuStorage::I64(gather_strided(v, l)),
            CpuStorage::U8(v) => CpuStorage::U8(gather_strided(v, l)),
        };
        Ok(Tensor::from_cpu(data, self.dims()).record(&[self], || Op::Copy(self.clone())))
    }

    // ----------------------------------------------------------------------------------------------
    // Views
    // ----------------------------------------------------------------------------------------------

    fn with_layout(&self, layout: Layout) -> Tensor {
        Tensor {
            storage: self.storage.clone(),
            layout,
            node: None,
        }
    }

    /// Same elements, new shape. A view when the data is packed, a copy otherwise.
    pub fn reshape(&self, dims: &[usize]) -> Result<Tensor> {
        let n: usize = dims.iter().product();
        if n != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "cannot reshape {} ({} elements) to {}",
                    fmt_shape(self.dims()),
                    self.numel(),
                    fmt_shape(dims)
                ),
            ));
        }
        match self.layout.reshaped(dims) {
            Some(l) => Ok(self.with_layout(l).record(&[self], || Op::Reshape(self.clone()))),
            None => self.contiguous()?.reshape(dims),
        }
    }

    /// Reorders dimensions: output dim `i` is input dim `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let out = self.with_layout(self.layout.permuted("permute", perm)?);
        Ok(out.record(&[self], || Op::Permute(self.clone(), perm.to_vec())))
    }

    /// Swaps two dimensions (negative indices count from the end).
    pub fn transpose(&self, d0: isize, d1: isize) -> Result<Tensor> {
        let a = self.layout.dim_index("transpose", d0)?;
        let b = self.layout.dim_index("transpose", d1)?;
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Elements `start..start+len` of dimension `dim`.
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Tensor> {
        let d = self.layout.dim_index("narrow", dim)?;
        let out = self.with_layout(self.layout.narrowed("narrow", d, start, len)?);
        Ok(out.record(&[self], || Op::Narrow(self.clone(), d, start)))
    }

    /// Splits dimension `dim` into pieces of the given sizes (views).
    pub fn split(&self, dim: isize, sizes: &[usize]) -> Result<Vec<Tensor>> {
        let d = self.layout.dim_index("split", dim)?;
        let total: usize = sizes.iter().sum();
        if total != self.dims()[d] {
            return Err(Error::shape(
                "split",
                format!(
                    "sizes {sizes:?} do not add up to dim {d} of shape {}",
                    fmt_shape(self.dims())
                ),
            ));
        }
        let mut start = 0;
        let mut out = Vec::with_capacity(sizes.len());
        for &s in sizes {
            out.push(self.narrow(d as isize, start, s)?);
            start += s;
        }
        Ok(out)
    }

    /// Splits dimension `dim` into `n` equal views.
    pub fn chunk(&self, n: usize, dim: isize) -> Result<Vec<Tensor>> {
        let d = self.layout.dim_index("chunk", dim)?;
        let size = self.dims()[d];
        if n == 0 || !size.is_multiple_of(n) {
            return Err(Error::shape(
                "chunk",
                format!(
                    "dim {d} of shape {} does not split into {n} equal chunks",
                    fmt_shape(self.dims())
                ),
            ));
        }
        self.split(dim, &vec![size / n; n])
    }

    /// Broadcasts to `dims` (NumPy rules) as a stride-0 view.
    pub fn broadcast_as(&self, dims: &[usize]) -> Result<Tensor> {
        let out = self.with_layout(self.layout.broadcast_to("broadcast_as", dims)?);
        Ok(out.record(&[self], || Op::Broadcast(self.clone())))
    }

    /// Inserts a size-1 dimension at `dim` (0..=rank).
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        if dim > self.rank() {
            return Err(Error::index(
                "unsqueeze",
                format!("dimension {dim} for a tensor of shape {}", fmt_shape(self.dims())),
            ));
        }
        let mut dims = self.dims().to_vec();
        let mut strides = self.layout.strides().to_vec();
        let s = if dim < self.rank() { strides[dim] * dims[dim] } else { 1 };
        dims.insert(dim, 1);
        strides.insert(dim, s);
        let out = self.with_layout(Layout::new(dims, strides, self.layout.offset()));
        Ok(out.record(&[self], || Op::Reshape(self.clone())))
    }

    /// Removes dimension `dim`, which must have size 1.
    pub fn squeeze(&self, dim: isize) -> Result<Tensor> {
        let d = self.layout.dim_index("squeeze", dim)?;
        if self.dims()[d] != 1 {
            return Err(Error::shape(
                "squeeze",
                format!("dim {d} of shape {} is not 1", fmt_shape(self.dims())),
            ));
        }
        let mut dims = self.dims().to_vec();
        let mut strides = self.layout.strides().to_vec();
        dims.remove(d);
        strides.remove(d);
        let out = self.with_layout(Layout::new(dims, strides, self.layout.offset()));
        Ok(out.record(&[self], || Op::Reshape(self.clone())))
    }

    /// Splits dimension `dim` into `sizes` (whose product is its size) as a view — always possible
    /// without a copy, whatever the strides (e.g. `[B, N, H·D]` → `[B, N, H, D]` on a narrowed tensor).
    pub fn unflatten(&self, dim: isize, sizes: &[usize]) -> Result<Tensor> {
        let d = self.layout.dim_index("unflatten", dim)?;
        if sizes.iter().product::<usize>() != self.dims()[d] {
            return Err(Error::shape(
                "unflatten",
                format!(
                    "sizes {sizes:?} do not multiply to dim {d} of shape {}",
                    fmt_shape(self.dims())
                ),
            ));
        }
        let stride = self.layout.strides()[d];
        let inner = crate::layout::contiguous_strides(sizes);
        let mut dims = self.dims()[..d].to_vec();
        let mut strides = self.layout.strides()[..d].to_vec();
        dims.extend_from_slice(sizes);
        strides.extend(inner.iter().map(|s| s * stride));
        dims.extend_from_slice(&self.dims()[d + 1..]);
        strides.extend_from_slice(&self.layout.strides()[d + 1..]);
        let out = self.with_layout(Layout::new(dims, strides, self.layout.offset()));
        Ok(out.record(&[self], || Op::Reshape(self.clone())))
    }

    /// Flattens dims `start..=end` into one.
    pub fn flatten(&self, start: usize, end: usize) -> Result<Tensor> {
        if start > end || end >= self.rank() {
            return Err(Error::index(
                "flatten",
                format!("dims {start}..={end} of shape {}", fmt_shape(self.dims())),
            ));
        }
        let d = self.dims();
        let mut dims: Vec<usize> = d[..start].to_vec();
        dims.push(d[start..=end].iter().product());
        dims.extend_from_slice(&d[end + 1..]);
        self.reshape(&dims)
    }

    /// Concatenates tensors of equal dtype and equal shape except along `dim`.
    pub fn cat(tensors: &[&Tensor], dim: isize) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| Error::arg("cat", "no tensors given"))?;
        let d = first.layout.dim_index("cat", dim)?;
        let dtype = first.dtype();
        let mut dims = first.dims().to_vec();
        dims[d] = 0;
        for t in tensors {
            let ok = t.rank() == first.rank()
                && t.dims()
                    .iter()
                    .enumerate()
                    .all(|(i, &s)| i == d || s == first.dims()[i]);
            if !ok {
                return Err(Error::shape(
                    "cat",
                    format!(
                        "shape {} does not match {} outside dim {d}",
                        fmt_shape(t.dims()),
                        fmt_shape(first.dims())
                    ),
                ));
            }
            if t.dtype() != dtype {
                return Err(Error::dtype(
                    "cat",
                    format!("dtype {dtype} like the first tensor"),
                    t.dtype(),
                ));
            }
            cuda::check_device("cat", t.device())?;
            dims[d] += t.dims()[d];
        }
        if !first.device().is_cpu() {
            let out = cuda::ops::cat(tensors, d, &dims)?;
            return Ok(out.record(tensors, || Op::Cat(tensors.iter().map(|t| (*t).clone()).collect(), d)));
        }
        let outer: usize = dims[..d].iter().product();
        fn cat_typed<T: Element>(ts: &[&Tensor], d: usize, outer: usize) -> Result<Vec<T>> {
            let parts: Vec<Cow<[T]>> = ts.iter().map(|t| t.typed_data::<T>("cat")).collect::<Result<_>>()?;
            let rows: Vec<usize> = ts.iter().map(|t| t.dims()[d..].iter().product()).collect();
            let total: usize = rows.iter().sum();
            let fill = |(o, dst): (usize, &mut [MaybeUninit<T>])| {
                let mut at = 0;
                for (p, &r) in parts.iter().zip(&rows) {
                    dst[at..at + r].write_copy_of_slice(&p[o * r..(o + 1) * r]);
                    at += r;
                }
            };
            // SAFETY: each of the `outer` chunks of `total` elements is written in full by `fill` (the
            // parts' row lengths sum to `total`); with `total == 0` there is nothing to write.
            let out = unsafe {
                vec_written_by(total * outer, |out| {
                    if total > 0 && total * outer >= PAR_COPY_ELEMS {
                        out.par_chunks_mut(total).enumerate().for_each(fill);
                    } else if total > 0 {
                        out.chunks_mut(total).enumerate().for_each(fill);
                    }
                })
            };
            Ok(out)
        }
        let storage = match dtype {
            DType::F32 => CpuStorage::F32(cat_typed(tensors, d, outer)?),
            DType::BF16 => CpuStorage::BF16(cat_typed(tensors, d, outer)?),
            DType::F16 => CpuStorage::F16(cat_typed(tensors, d, outer)?),
            DType::I64 => CpuStorage::I64(cat_typed(tensors, d, outer)?),
            DType::U8 => CpuStorage::U8(cat_typed(tensors, d, outer)?),
        };
        let out = Tensor::from_cpu(storage, &dims);
        Ok(out.record(tensors, || Op::Cat(tensors.iter().map(|t| (*t).clone()).collect(), d)))
    }

    /// Stacks tensors of equal shape along a new dimension `dim`.
    pub fn stack(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| Error::arg("stack", "no tensors given"))?;
        if dim > first.rank() {
            return Err(Error::index(
                "stack",
                format!("new dimension {dim} for tensors of shape {}", fmt_shape(first.dims())),
            ));
        }
        for t in tensors {
            if t.dims() != first.dims() {
                return Err(Error::shape(
                    "stack",
                    format!("shape {} differs from {}", fmt_shape(t.dims()), fmt_shape(first.dims())),
                ));
            }
            if t.dtype() != first.dtype() {
                return Err(Error::dtype(
                    "stack",
                    format!("dtype {} like the first tensor", first.dtype()),
                    t.dtype(),
                ));
            }
        }
        let us: Vec<Tensor> = tensors.iter().map(|t| t.unsqueeze(dim)).collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = us.iter().collect();
        Tensor::cat(&refs, dim as isize)
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor[{}, {}, {}",
            fmt_shape(self.dims()),
            self.dtype(),
            self.device()
        )?;
        if self.numel() <= 16 {
            if let Ok(v) = self.to_f32_vec() {
                write!(f, ", {v:?}")?;
            } else if let Ok(v) = self.to_i64_vec() {
                write!(f, ", {v:?}")?;
            }
        }
        write!(f, "]")
    }
}
