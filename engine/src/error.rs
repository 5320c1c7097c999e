//! Errors of the engine. Every error names the operation that failed and the shapes, dtypes or
//! indices involved, so a user can tell what went wrong and where without a backtrace.

use crate::{DType, Device};
use std::fmt;

/// Result type of the engine.
pub type Result<T> = std::result::Result<T, Error>;

/// An engine error. Ops never panic on bad input; they return one of these.
#[derive(Debug)]
pub enum Error {
    /// Shapes that do not fit together (e.g. a matmul with mismatched inner dimensions).
    Shape { op: &'static str, msg: String },
    /// A dtype the op does not accept (e.g. an integer tensor given to softmax).
    DType {
        op: &'static str,
        expected: String,
        got: DType,
    },
    /// An index outside its valid range (a gather index, a class id, a dimension).
    Index { op: &'static str, msg: String },
    /// Tensors on different devices, or a device that is not available.
    Device { op: &'static str, msg: String },
    /// A backend that this build or this machine does not provide.
    Unsupported {
        op: &'static str,
        device: Device,
        msg: String,
    },
    /// An argument outside its domain (a negative epsilon, zero groups, ...).
    Arg { op: &'static str, msg: String },
    /// File I/O, with the path it concerned.
    Io { path: String, source: std::io::Error },
    /// A malformed file (safetensors header, truncated data, ...), with the path and what was wrong.
    Format { path: String, msg: String },
}

impl Error {
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }
    pub fn index(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Index { op, msg: msg.into() }
    }
    pub fn arg(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Arg { op, msg: msg.into() }
    }
    pub fn dtype(op: &'static str, expected: impl Into<String>, got: DType) -> Self {
        Error::DType {
            op,
            expected: expected.into(),
            got,
        }
    }
    pub fn format(path: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape { op, msg } => write!(f, "{op}: shape error: {msg}"),
            Error::DType { op, expected, got } => {
                write!(f, "{op}: expected {expected}, got dtype {got}")
            }
            Error::Index { op, msg } => write!(f, "{op}: index out of range: {msg}"),
            Error::Device { op, msg } => write!(f, "{op}: device error: {msg}"),
            Error::Unsupported { op, device, msg } => write!(f, "{op} on {device}: {msg}"),
            Error::Arg { op, msg } => write!(f, "{op}: invalid argument: {msg}"),
            Error::Io { path, source } => write!(f, "{path}: {source}"),
            Error::Format { path, msg } => write!(f, "{path}: {msg}"),
        }
    }
}

// `source` stays `None` for `Io`: its Display already ends with the OS error, and anyhow's `{:#}`
// prints the whole chain, which would print the OS error twice ("x: No such device: No such device").
impl std::error::Error for Error {}

/// Formats a shape as `[2, 3, 4]` for error messages.
pub(crate) fn fmt_shape(dims: &[usize]) -> String {
    format!("{dims:?}")
}
