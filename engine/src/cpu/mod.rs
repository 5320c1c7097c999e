//! The CPU backend: kernels on plain slices. Op front-ends in `crate::ops` validate shapes and dtypes,
//! bring inputs to packed f32 rows and call these. Everything here is also the reference that the
//! CUDA kernels are checked against, so clarity comes first and speed second (but it must be fast:
//! this backend runs NVG on every machine we have).

pub mod attention;
pub mod conv;
pub mod gemm;
pub mod simd;
pub mod uninit;
