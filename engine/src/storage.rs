//! Tensor storage: owned typed vectors or zero-copy windows into a memory-mapped file, on the CPU;
//! device buffers on CUDA (a stub until the CUDA backend lands).

use crate::cuda::CudaStorage;
use crate::{DType, Device};
use half::{bf16, f16};
use memmap2::Mmap;
use std::sync::Arc;

/// An element type the CPU backend stores natively.
pub trait Element: bytemuck::Pod + Default + Send + Sync + 'static {
    const DTYPE: DType;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
    /// Borrow the owned vector of this type, if `data` holds one.
    fn owned(data: &CpuStorage) -> Option<&[Self]>;
    fn into_storage(v: Vec<Self>) -> CpuStorage;
}

macro_rules! element {
    ($t:ty, $dt:ident, $from:expr, $to:expr) => {
        impl Element for $t {
            const DTYPE: DType = DType::$dt;
            #[inline(always)]
            fn from_f32(v: f32) -> Self {
                $from(v)
            }
            #[inline(always)]
            fn to_f32(self) -> f32 {
                $to(self)
            }
            fn owned(data: &CpuStorage) -> Option<&[Self]> {
                match data {
                    CpuStorage::$dt(v) => Some(v),
                    _ => None,
                }
            }
            fn into_storage(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$dt(v)
            }
        }
    };
}
element!(f32, F32, |v| v, |x| x);
element!(bf16, BF16, bf16::from_f32, bf16::to_f32);
element!(f16, F16, f16::from_f32, f16::to_f32);
element!(i64, I64, |v: f32| v as i64, |x| x as f32);
element!(u8, U8, |v: f32| v.clamp(0.0, 255.0) as u8, |x| x as f32);

/// A byte window of a memory-mapped file holding one tensor's data (validated for size and
/// alignment when it was created).
#[derive(Clone)]
pub struct MappedBytes {
    map: Arc<Mmap>,
    start: usize,
    len: usize,
    dtype: DType,
}

impl MappedBytes {
    /// `None` when the window is out of bounds or not aligned for `dtype` (the caller then copies).
    pub fn new(map: Arc<Mmap>, start: usize, len: usize, dtype: DType) -> Option<Self> {
        let end = start.checked_add(len)?;
        if end > map.len() || !len.is_multiple_of(dtype.size()) {
            return None;
        }
        let addr = map.as_ptr() as usize + start;
        if !addr.is_multiple_of(dtype.size()) {
            return None;
        }
        Some(MappedBytes { map, start, len, dtype })
    }
    pub fn bytes(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

/// CPU-resident data.
#[derive(Clone)]
pub enum CpuStorage {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    I64(Vec<i64>),
    U8(Vec<u8>),
    Mapped(MappedBytes),
}

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::I64(_) => DType::I64,
            CpuStorage::U8(_) => DType::U8,
            CpuStorage::Mapped(m) => m.dtype,
        }
    }

    /// The elements as a typed slice, or `None` if the storage holds another type.
    pub fn as_slice<T: Element>(&self) -> Option<&[T]> {
        match self {
            CpuStorage::Mapped(m) if m.dtype == T::DTYPE => Some(bytemuck::cast_slice(m.bytes())),
            other => T::owned(other),
        }
    }

    /// Number of elements stored.
    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
            CpuStorage::F16(v) => v.len(),
            CpuStorage::I64(v) => v.len(),
            CpuStorage::U8(v) => v.len(),
            CpuStorage::Mapped(m) => m.len / m.dtype.size(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw bytes (little-endian, as safetensors stores them).
    pub fn bytes(&self) -> &[u8] {
        match self {
            CpuStorage::F32(v) => bytemuck::cast_slice(v),
            CpuStorage::BF16(v) => bytemuck::cast_slice(v),
            CpuStorage::F16(v) => bytemuck::cast_slice(v),
            CpuStorage::I64(v) => bytemuck::cast_slice(v),
            CpuStorage::U8(v) => v,
            CpuStorage::Mapped(m) => m.bytes(),
        }
    }

    /// Owned storage of `dtype` holding a copy of little-endian `bytes`.
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> CpuStorage {
        fn typed<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
            bytes
                .chunks_exact(std::mem::size_of::<T>())
                .map(bytemuck::pod_read_unaligned)
                .collect()
        }
        match dtype {
            DType::F32 => CpuStorage::F32(typed(bytes)),
            DType::BF16 => CpuStorage::BF16(typed(bytes)),
            DType::F16 => CpuStorage::F16(typed(bytes)),
            DType::I64 => CpuStorage::I64(typed(bytes)),
            DType::U8 => CpuStorage::U8(bytes.to_vec()),
        }
    }

    /// Whether the data lives in a memory-mapped file (zero-copy load).
    pub fn is_mapped(&self) -> bool {
        matches!(self, CpuStorage::Mapped(_))
    }
}

/// Storage on some device.
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(c) => c.device(),
        }
    }
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(c) => c.dtype(),
            Storage::Cuda(c) => c.dtype(),
        }
    }
}
