//! The CUDA backend: device memory, kernel launches and the op implementations that run the
//! `nvg-kernels` kernels.
//!
//! Two devices go through this module. `Device::CudaEmu` runs the kernels' host build (one fiber per
//! CUDA thread, see `kernels/emu/cuda_emu.h`) on "device memory" that is host memory, through the same
//! launch path as a GPU: argument marshalling, grid and block sizes, shared memory. CI exercises every
//! kernel that way. `Device::Cuda(i)`, the real GPU through the driver API, is not in this build yet:
//! using it is an error that says so (docs/cuda.md).

mod launch;
pub(crate) mod ops;

pub use launch::{Arg, LaunchConfig, launch};

use crate::error::{Error, Result};
use crate::{DType, Device};

/// Device memory of one tensor: a buffer of `len` elements of `dtype`.
pub struct CudaStorage {
    device: Device,
    dtype: DType,
    len: usize,
    /// Emulated device memory (8-byte aligned, so any element type can be read from it in place).
    host: Vec<u64>,
}

impl CudaStorage {
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Uninitialised-to-zero device memory for `len` elements of `dtype`.
    pub(crate) fn alloc(device: Device, dtype: DType, len: usize) -> Result<CudaStorage> {
        check_device("alloc", device)?;
        let bytes = len * dtype.size();
        Ok(CudaStorage {
            device,
            dtype,
            len,
            host: vec![0u64; bytes.div_ceil(8)],
        })
    }

    /// A copy of `bytes` (host → device).
    pub(crate) fn from_bytes(device: Device, dtype: DType, len: usize, bytes: &[u8]) -> Result<CudaStorage> {
        let mut s = CudaStorage::alloc(device, dtype, len)?;
        bytemuck::cast_slice_mut::<u64, u8>(&mut s.host)[..bytes.len()].copy_from_slice(bytes);
        Ok(s)
    }

    /// The bytes of the buffer (device → host copy).
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        bytemuck::cast_slice::<u64, u8>(&self.host)[..self.len * self.dtype.size()].to_vec()
    }

    /// The device address of the buffer, as a kernel argument.
    pub(crate) fn ptr(&self) -> u64 {
        self.host.as_ptr() as u64
    }
}

/// Whether `device` can hold tensors in this build.
pub fn is_available(device: Device) -> bool {
    check_device("is_available", device).is_ok()
}

/// The error for the real-GPU device, which this build does not drive yet.
pub fn unavailable(op: &'static str, device: Device) -> Error {
    Error::Unsupported {
        op,
        device,
        msg: "this build has no CUDA driver backend yet (use Device::CudaEmu to run the kernels on the CPU)"
            .to_string(),
    }
}

/// Checks that `device` can hold tensors in this build.
pub fn check_device(op: &'static str, device: Device) -> Result<()> {
    match device {
        Device::Cpu | Device::CudaEmu => Ok(()),
        Device::Cuda(_) => Err(unavailable(op, device)),
    }
}
