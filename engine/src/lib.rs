//! # nvg-engine
//!
//! The tensor engine of nvg-rs: `Tensor` (strided views over shared storage), dtypes (f32 math over
//! f32/bf16/f16 storage, i64 ids), devices (the CPU reference backend; CUDA arrives in issue 7), the ops
//! NVG needs, a counter-based RNG and zero-copy safetensors I/O.
//!
//! Layout: `tensor`/`layout`/`storage` define the data model, `ops` the op front-ends (validation and
//! dispatch, grouped by family), `cpu` the CPU kernels, `rng` the Philox generator, `io` the file
//! formats. See docs/architecture.md.

pub mod autograd;
pub mod cpu;
pub mod cuda;
mod device;
mod dtype;
mod error;
pub mod io;
pub mod layout;
pub mod nvtx;
pub mod ops;
pub mod optim;
pub mod rng;
mod storage;
mod tensor;

pub use autograd::Gradients;
pub use device::Device;
pub use dtype::DType;
pub use error::{Error, Result};
pub use ops::attention::{AttentionKernel, sdpa, sdpa_with_kernel};
pub use ops::conv::{ConvKernel, Padding};
pub use ops::elementwise::{Binary, Unary};
pub use ops::rope::rope_tables;
pub use ops::sample::CategoricalSampling;
pub use storage::{CpuStorage, Element};
pub use tensor::Tensor;

/// The bytes of a slice of plain values (little-endian on the platforms we support).
pub fn bytemuck_cast<T: bytemuck::Pod>(v: &[T]) -> &[u8] {
    bytemuck::cast_slice(v)
}
