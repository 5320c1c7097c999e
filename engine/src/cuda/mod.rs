//! The CUDA backend. This build has none: `Device::Cuda` exists so that code and error messages are
//! already shaped for it, but every attempt to place data on it fails with "built without CUDA
//! support". The real backend (cudarc + PTX from `nvg-kernels`) replaces this module in issue 7.

use crate::error::{Error, Result};
use crate::{DType, Device};

/// Device memory. Uninhabited in this build: no value of it can exist.
pub enum CudaStorage {}

impl CudaStorage {
    pub fn device(&self) -> Device {
        match *self {}
    }
    pub fn dtype(&self) -> DType {
        match *self {}
    }
}

/// Whether this build can use CUDA devices.
pub fn is_available() -> bool {
    false
}

/// The error every CUDA request returns in this build.
pub fn unavailable(op: &'static str, device: Device) -> Error {
    Error::Unsupported {
        op,
        device,
        msg: "built without CUDA support".to_string(),
    }
}

/// Checks that `device` can hold tensors in this build.
pub fn check_device(op: &'static str, device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda(_) => Err(unavailable(op, device)),
    }
}
