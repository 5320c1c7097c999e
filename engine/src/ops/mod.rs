//! Op front-ends, one module per family. Each op validates its inputs (returning errors that name the
//! op and the shapes), brings them to packed f32 (or i64) rows and runs the CPU kernel. Ops are methods
//! on `Tensor` where they read naturally (`x.softmax(-1)`), free functions where they take several
//! peers (`sdpa(q, k, v, ..)`).

pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod index;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod rope;
pub mod sample;
pub mod softmax;
pub mod sort;

use crate::Tensor;
use crate::error::{Error, Result, fmt_shape};

/// Element count above which element-wise work is split across threads.
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 16;

/// Both tensors must be on the same device.
pub(crate) fn same_device(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.device() != b.device() {
        return Err(Error::Device {
            op,
            msg: format!("operands on {} and {}", a.device(), b.device()),
        });
    }
    Ok(())
}

/// A float tensor is required.
pub(crate) fn want_float(op: &'static str, what: &str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_float() {
        return Err(Error::dtype(op, format!("{what} to be a float tensor"), t.dtype()));
    }
    Ok(())
}

/// An integer (i64 or u8) tensor is required.
pub(crate) fn want_int(op: &'static str, what: &str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_int() {
        return Err(Error::dtype(
            op,
            format!("{what} to be an integer tensor (i64)"),
            t.dtype(),
        ));
    }
    Ok(())
}

/// `t` must have exactly `dims`.
pub(crate) fn want_shape(op: &'static str, what: &str, t: &Tensor, dims: &[usize]) -> Result<()> {
    if t.dims() != dims {
        return Err(Error::shape(
            op,
            format!(
                "{what} must have shape {}, got {}",
                fmt_shape(dims),
                fmt_shape(t.dims())
            ),
        ));
    }
    Ok(())
}

/// Splits `dims` around `dim` into (outer, size, inner) element counts.
pub(crate) fn split_at_dim(dims: &[usize], dim: usize) -> (usize, usize, usize) {
    let outer = dims[..dim].iter().product();
    let inner = dims[dim + 1..].iter().product();
    (outer, dims[dim], inner)
}
