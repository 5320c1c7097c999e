//! Where a tensor lives.

use std::fmt;

/// A compute device. `Cpu` is always available and is the reference every other backend is checked
/// against. `Cuda(ordinal)` needs the `cuda` feature (issue 7); without it, using it is an error that says
/// "built without CUDA support".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
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
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}
