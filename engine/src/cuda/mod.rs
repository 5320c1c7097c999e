//! The CUDA backend: device memory, kernel launches and the op implementations that run the
//! `nvg-kernels` kernels.
//!
//! Two devices go through this module. `Device::CudaEmu` runs the kernels' host build (one fiber per
//! CUDA thread, see `kernels/emu/cuda_emu.h`) on "device memory" that is host memory, through the same
//! launch path as a GPU: argument marshalling, grid and block sizes, shared memory. CI exercises every
//! kernel that way. `Device::Cuda(i)` is the real GPU through the driver API (`driver.rs`, feature
//! `cuda`); without the feature, or without a driver, a device or built kernels, using it is an error
//! that says which (docs/cuda.md).

#[cfg(feature = "cuda")]
pub(crate) mod driver;
pub(crate) mod gather;
mod launch;
pub(crate) mod ops;
pub(crate) mod sample;
pub(crate) mod training;

pub use launch::{Arg, LaunchConfig, launch};

use crate::error::{Error, Result};
use crate::{DType, Device};

/// How device matmuls (and so device linears, forward and backward) multiply: in f32 on the SIMT GEMM,
/// or with bf16 operands and f32 accumulation on the tensor cores (`nvg_gemm_bf16tc_f32`, the precision
/// of [`crate::Tensor::matmul_bf16`]), like PyTorch's `set_float32_matmul_precision`. CPU matmuls
/// always compute in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulPrecision {
    #[default]
    F32,
    Bf16,
}

thread_local! {
    static MATMUL_PRECISION: std::cell::Cell<MatmulPrecision> = const { std::cell::Cell::new(MatmulPrecision::F32) };
}

/// Sets the device matmul precision of the calling thread (the thread that runs the model; device ops
/// launch from the thread that calls them) and returns the previous one.
pub fn set_matmul_precision(p: MatmulPrecision) -> MatmulPrecision {
    MATMUL_PRECISION.with(|c| c.replace(p))
}

/// Sets the calling thread's device matmul precision until the returned guard is dropped (the previous
/// precision comes back however the scope ends).
#[must_use = "the precision reverts when the guard is dropped"]
pub fn scoped_matmul_precision(p: MatmulPrecision) -> MatmulPrecisionScope {
    MatmulPrecisionScope(set_matmul_precision(p))
}

/// Restores a thread's previous device matmul precision on drop ([`scoped_matmul_precision`]).
pub struct MatmulPrecisionScope(MatmulPrecision);

impl Drop for MatmulPrecisionScope {
    fn drop(&mut self) {
        set_matmul_precision(self.0);
    }
}

/// The calling thread's device matmul precision.
pub fn matmul_precision() -> MatmulPrecision {
    MATMUL_PRECISION.with(|c| c.get())
}

/// Where a device buffer lives.
enum Memory {
    /// Emulated device memory (8-byte aligned, so any element type can be read from it in place).
    Host(Vec<u64>),
    /// GPU memory, returned to the driver's cache on drop.
    #[cfg(feature = "cuda")]
    Gpu {
        ptr: u64,
        bytes: usize,
        driver: std::sync::Arc<driver::Driver>,
    },
}

/// Device memory of one tensor: a buffer of `len` elements of `dtype`.
pub struct CudaStorage {
    device: Device,
    dtype: DType,
    len: usize,
    memory: Memory,
}

impl Drop for CudaStorage {
    fn drop(&mut self) {
        #[cfg(feature = "cuda")]
        if let Memory::Gpu { ptr, bytes, driver } = &self.memory {
            driver.free(*ptr, *bytes);
        }
    }
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

    /// Device memory for `len` elements of `dtype` (zeroed when emulated; uninitialised on a GPU —
    /// every kernel writes its whole output).
    pub(crate) fn alloc(device: Device, dtype: DType, len: usize) -> Result<CudaStorage> {
        check_device("alloc", device)?;
        let bytes = len * dtype.size();
        let memory = match device {
            #[cfg(feature = "cuda")]
            Device::Cuda(i) => {
                let driver = driver::driver(i)?;
                Memory::Gpu {
                    ptr: driver.alloc(bytes)?,
                    bytes,
                    driver,
                }
            }
            _ => Memory::Host(vec![0u64; bytes.div_ceil(8)]),
        };
        Ok(CudaStorage {
            device,
            dtype,
            len,
            memory,
        })
    }

    /// A copy of `bytes` (host → device).
    pub(crate) fn from_bytes(device: Device, dtype: DType, len: usize, bytes: &[u8]) -> Result<CudaStorage> {
        let mut s = CudaStorage::alloc(device, dtype, len)?;
        match &mut s.memory {
            Memory::Host(h) => bytemuck::cast_slice_mut::<u64, u8>(h)[..bytes.len()].copy_from_slice(bytes),
            #[cfg(feature = "cuda")]
            Memory::Gpu { ptr, driver, .. } => driver.htod(*ptr, bytes)?,
        }
        Ok(s)
    }

    /// The bytes of the buffer (device → host copy).
    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>> {
        let n = self.len * self.dtype.size();
        match &self.memory {
            Memory::Host(h) => Ok(bytemuck::cast_slice::<u64, u8>(h)[..n].to_vec()),
            #[cfg(feature = "cuda")]
            Memory::Gpu { ptr, driver, .. } => {
                let mut out = vec![0u8; n];
                driver.dtoh(&mut out, *ptr)?;
                Ok(out)
            }
        }
    }

    /// The device address of the buffer, as a kernel argument.
    pub(crate) fn ptr(&self) -> u64 {
        match &self.memory {
            Memory::Host(h) => h.as_ptr() as u64,
            #[cfg(feature = "cuda")]
            Memory::Gpu { ptr, .. } => *ptr,
        }
    }
}

/// Whether `device` can hold tensors in this build.
pub fn is_available(device: Device) -> bool {
    check_device("is_available", device).is_ok()
}

/// The error for the real GPU in a build without the `cuda` feature.
pub fn unavailable(op: &'static str, device: Device) -> Error {
    Error::Unsupported {
        op,
        device,
        msg: "built without CUDA support (build with `--features cuda`; Device::CudaEmu runs the kernels on the CPU)"
            .to_string(),
    }
}

/// Checks that `device` can hold tensors: always for the CPU and CudaEmu; for a GPU, that this build
/// has the driver backend and the driver, the device and the kernels are there.
pub fn check_device(op: &'static str, device: Device) -> Result<()> {
    match device {
        Device::Cpu | Device::CudaEmu => Ok(()),
        #[cfg(feature = "cuda")]
        Device::Cuda(i) => driver::driver(i).map(|_| ()),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(unavailable(op, device)),
    }
    .map_err(|e| match e {
        Error::Unsupported { device, msg, .. } => Error::Unsupported { op, device, msg },
        e => e,
    })
}
