//! Where a tensor lives.

use std::fmt;

/// A compute device. `Cpu` is always available and is the reference every other backend is checked
/// against. `CudaEmu` runs the CUDA kernels' host build (one fiber per CUDA thread) through the CUDA
/// backend's launch path — the device CI tests the kernels on. `Cuda(ordinal)` is a real GPU; this build
/// has no driver backend yet, and using it is an error that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    CudaEmu,
    Cuda(usize),
}

impl Device {
    pub fn is_cpu(self) -> bool {
        matches!(self, Device::Cpu)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::CudaEmu => f.write_str("cuda-emu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}
